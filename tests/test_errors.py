"""tiniest's warnings: each a :class:`TiniestWarning`, each attributed to the caller's line however deep it arises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import tiniest
from tiniest import Tiniest
from tiniest.errors import CacheWarning, UnverifiedWeightsWarning
from tiniest.storage import writer_lock
from tiniest.weights.sources import load_weights

ROOT = Path(__file__).resolve().parent.parent


def test_unverified_weights_are_reported_at_the_callers_line_from_every_depth(tmp_path: Path) -> None:
    """A fixed ``stacklevel`` was right from one depth only: from ``load_weights`` it named pytest's code."""
    mine = tmp_path / "mine.pt"
    torch.save(Tiniest().state_dict(), mine)
    with pytest.warns(UnverifiedWeightsWarning) as direct:
        load_weights(mine)
    with pytest.warns(UnverifiedWeightsWarning) as hub_function:
        tiniest.tiniest(weights=mine)
    with pytest.warns(UnverifiedWeightsWarning) as through_torch_hub:
        torch.hub.load(str(ROOT), "tiniest", source="local", weights=str(mine))
    for caught in (direct, hub_function, through_torch_hub):
        (unverified,) = [w for w in caught if issubclass(w.category, UnverifiedWeightsWarning)]
        assert unverified.filename == __file__, f"the warning names {unverified.filename}:{unverified.lineno}"


def test_a_warning_on_entering_a_with_names_the_with(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    lock_file = not_a_folder / ".locks" / "a.lock"
    with pytest.warns(CacheWarning, match="cannot write to the cache") as caught, writer_lock(lock_file, 1) as access:
        assert access == "unusable"
    assert caught[0].filename == __file__, "not contextlib's line"
    assert issubclass(CacheWarning, RuntimeWarning), "code that caught the RuntimeWarning still does"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad\nsecond line"), "ValueError: bad"),
        (RuntimeError("  \n  "), "RuntimeError"),
        (KeyError(), "KeyError"),
        (OSError("x" * 400), "OSError: " + "x" * 300),
    ],
)
def test_an_exception_is_told_in_one_bounded_line(error: BaseException, expected: str) -> None:
    from tiniest.errors import first_line

    assert first_line(error) == expected


def _advised_cache_paths() -> list[Path]:
    """The files the weights-not-found error asks the user to place, read from the error itself."""
    from tiniest.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError) as missing:
        load_weights(progress=False)
    advice = re.search(r"copy it to (\S+) \(the original: (\S+)\)", " ".join(str(missing.value).split()))
    assert advice is not None, str(missing.value)
    return [Path(advice.group(1)), Path(advice.group(2))]


@pytest.mark.parametrize("placed", ["release", "original", "foreign"])
def test_following_the_advice_never_destroys_the_placed_file(
    placed: str, shared_checkpoint: Path, release_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29: the original checkpoint copied where the error said, under the release's name, was loaded offline
    as "corrupt" and removed. Either pinned file at either advised name loads; any other file there is reported by
    the error, and every file is left as the user placed it."""
    monkeypatch.setenv("TINIEST_OFFLINE", "1")
    content = {
        "release": release_bytes,
        "original": shared_checkpoint.read_bytes(),
        "foreign": b"my own notes, not weights",
    }[placed]
    for path in _advised_cache_paths():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if placed == "foreign":
            from tiniest.errors import WeightsNotFoundError

            with pytest.raises(WeightsNotFoundError) as reported:
                load_weights(progress=False)
            assert str(path) in str(reported.value)
        else:
            loaded = load_weights(progress=False)
            assert (loaded.source, loaded.location) == ("cache", str(path)), path
        assert path.read_bytes() == content, f"{path} changed or removed"
        path.unlink()
