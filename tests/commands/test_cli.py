"""The command line's error policy: one line for tiniest's own errors and for files, a traceback for bugs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tiniest.commands import main


def test_a_tiniest_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "cat.png", "--top-k", "0"]) == 1  # refused before any image is read
    err = capsys.readouterr().err
    assert err.splitlines() == ["tiniest predict: error: expected top_k between 1 and 10, got 0"]


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pt"
    assert main(["export", str(missing), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("tiniest export: error: ") and str(missing) in err


def test_bad_metrics_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{accuracy: 0.9", encoding="utf-8")
    assert main(["export", str(tmp_path / "any.pt"), "-o", str(tmp_path), "--metrics", str(metrics)]) == 1
    assert f"tiniest export: error: --metrics {metrics}: expected a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, KeyError])
def test_a_bug_keeps_its_traceback(bug: type[Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a TiniestError or an OSError is a bug: it propagates, not a one-line message."""

    def broken(*args: object, **kwargs: object) -> Path:
        raise bug("a bug inside the export")

    monkeypatch.setattr("tiniest.commands.export.export", broken)
    with pytest.raises(bug, match="a bug inside the export"):
        main(["export", str(tmp_path / "any.pt"), "--output", str(tmp_path / "out")])


def test_tiniest_warnings_are_one_line(tmp_path: Path) -> None:
    """An unverified weights file warns in one line, named after the command, without Python's source line."""
    from safetensors.torch import save_file

    import tiniest

    weights = tmp_path / "mine.safetensors"
    save_file(tiniest.Tiniest().state_dict(), str(weights))
    picture = tmp_path / "gray.png"
    picture.write_bytes(_gray_png())
    run = subprocess.run(
        [sys.executable, "-m", "tiniest", "predict", "--weights", str(weights), str(picture)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tiniest predict: warning: {weights} is not the pinned release")


def _gray_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("command", ["predict", "evaluate", "train"])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: ``train --device cuda`` on a CPU build printed torch's AttributeError as a traceback."""
    import torch

    from tiniest.devices import resolve_device
    from tiniest.errors import UsageError

    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(UsageError) as expected:
        resolve_device(missing)
    argv = {
        "predict": ["predict", str(tmp_path / "x.png")],
        "evaluate": ["evaluate", "--data", str(tmp_path / "data")],
        "train": ["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run")],
    }[command]
    assert main([*argv, "--device", missing]) == 1
    assert capsys.readouterr().err.splitlines() == [f"tiniest {command}: error: {expected.value}"]
    assert not (tmp_path / "run").exists(), "no empty run folder"
