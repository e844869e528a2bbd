"""Where the weights come from: the caller's file, or each source in turn until one yields the pinned bytes.

A file or URL the caller names (or ``TINIEST_WEIGHTS`` names) is read alone
(``tiniest.weights.named``). Otherwise the pinned release is
sought in ``SOURCES`` order, each candidate checked against the sha256 pinned in
``release.json``: the release's safetensors file, or the publisher's original ``.pt`` (pinned by its
own sha256 and loaded as it is, ``weights_only=True``).

The network sources (``tiniest.weights.downloads``, over ``tiniest.weights.fetch`` and
``tiniest.weights.huggingface``) are imported when a download is needed: a load from a folder or
a cache runs none of it. Downloads go to ``$TORCH_HOME/hub/checkpoints`` once verified, through a
temporary file and ``os.replace``: processes loading at once each download and each replace the file whole, so no
reader ever sees a partial or unverified file. A file of the caches that fails the hash is
reported, never deleted (it may be a user's own, or lie outside the cache behind a link).
A source that fails says why in the final error, which lists every source tried and how to
supply the file by hand.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from tiniest.env import env_flag, env_path, env_text, env_yes
from tiniest.errors import (
    ArtifactError,
    TiniestError,
    TiniestWarning,
    UsageError,
    WeightsNotFoundError,
    warn,
)
from tiniest.files import read_regular
from tiniest.weights.loading import LoadedWeights, decode_weights
from tiniest.weights.releases import NOT_GIVEN, NotGiven, Release, TiniestWeights, describe_mismatch

__all__ = ["SOURCES", "checkout_weights_dir", "is_offline", "load_weights", "original_cache_path", "torch_cache_path"]

logger = logging.getLogger(__name__)

_WEIGHTS_NAME = re.compile(r"(?:TiniestWeights\.)?[A-Za-z_]\w*")  # "DEFAULT", "TiniestWeights.CIFAR10_V1"
_CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"  # absent from a wheel


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else ``TINIEST_OFFLINE`` or ``HF_HUB_OFFLINE`` from the environment."""
    if offline is not None:
        return offline
    return env_flag("TINIEST_OFFLINE") or env_yes("HF_HUB_OFFLINE")


def checkout_weights_dir() -> Path:
    """``TINIEST_WEIGHTS_DIR``, else the ``weights/`` folder of the checkout (absent from a wheel)."""
    return env_path("TINIEST_WEIGHTS_DIR") or _CHECKOUT_WEIGHTS


def torch_cache_path(release: Release) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<filename>``: where torch.hub users expect weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / release.filename


def original_cache_path(release: Release) -> Path:
    """Where the publisher's ``.pt`` is kept: named with its sha256's first 8 digits, as torchvision names files."""
    stem = Path(release.source_path).stem
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{stem}-{release.source_sha256[:8]}.pt"


def _read_pinned(path: Path, release: Release) -> bytes:
    """The bytes of the regular file ``path`` if they are pinned; a LookupError saying what it holds otherwise."""
    try:
        data = read_regular(path, max(release.size, release.source_size))
    except FileNotFoundError:
        raise LookupError(f"{path} absent") from None
    except OSError as error:  # larger than either pinned file, a FIFO, a folder, unreadable
        raise LookupError(f"{path}: {error}") from None
    if not release.pins(data):
        raise LookupError(f"{path} is not the pinned file ({describe_mismatch(data, release)}); left as it is")
    return data


def _from_local(release: Release) -> tuple[bytes, str]:
    folder = checkout_weights_dir()
    if not folder.is_dir():
        raise LookupError(f"no folder {folder} (a pip install has none: TINIEST_WEIGHTS_DIR names one)")
    named = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".pt", ".pth"})
    regular = [path for path in named if _is_regular(path)]
    if len(regular) < len(named):
        odd = ", ".join(path.name for path in named if path not in regular)
        warn(f"skipped {odd} in {folder}: not regular files", TiniestWarning)
    for path in regular:
        try:
            if path.stat().st_size in (release.size, release.source_size):
                return _read_pinned(path, release), str(path)
        except (OSError, LookupError):  # replaced meanwhile, or other bytes of the same size
            continue
    names = ", ".join(p.name for p in regular) or "no .safetensors or .pt file"
    raise LookupError(f"{folder} holds {names}; none matches the pinned sha256")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a dangling link, a file gone meanwhile
        return False


def _from_cache(release: Release) -> tuple[bytes, str]:
    reasons = []
    for path in (torch_cache_path(release), original_cache_path(release)):
        try:
            return _read_pinned(path, release), str(path)
        except LookupError as error:
            reasons.append(str(error))
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        raise LookupError("; ".join(reasons)) from None
    hub = release.where["huggingface"]
    found = try_to_load_from_cache(hub["repo_id"], hub["filename"], revision=hub["revision"])
    if not isinstance(found, str):
        raise LookupError("; ".join([*reasons, "not in the Hugging Face cache"]))
    try:
        return _read_pinned(Path(found), release), found
    except LookupError as error:
        raise LookupError("; ".join([*reasons, f"Hugging Face cache: {error}"])) from None


_LOCAL: dict[str, Callable[[Release], tuple[bytes, str]]] = {"local": _from_local, "cache": _from_cache}
# in the order they are tried: the disk, then the network sources the pinned record names, then the original
SOURCES: tuple[str, ...] = ("local", "cache", *TiniestWeights.DEFAULT.release.where, "original")


def _download(name: str, release: Release, progress: bool) -> tuple[bytes, str]:
    """The network source ``name``'s verified bytes, kept in torch.hub's cache (the ``.pt`` under its own name)."""
    from tiniest.weights.downloads import download, keep

    data, location, cache = download(name, release, progress)
    if cache:  # verified by the finder already: the "original" source's file is the publisher's .pt
        keep(original_cache_path(release) if name == "original" else torch_cache_path(release), data)
    return data, location


def _parse_sources(sources: str | Iterable[str] | None) -> Sequence[str]:
    if sources is None:
        return SOURCES
    names = [s.strip() for s in sources.split(",")] if isinstance(sources, str) else list(sources)
    unknown = [name for name in names if name not in SOURCES]
    if unknown or not names:
        raise UsageError(f"unknown weights source(s) {unknown or names}; expected some of {', '.join(SOURCES)}")
    return names


def _how_to_supply(release: Release) -> str:
    folder = checkout_weights_dir()
    put = f"put it in {folder}" if folder.is_dir() else "put it in a folder named by TINIEST_WEIGHTS_DIR"
    return (
        f"To supply the weights by hand, download {release.url} (sha256 {release.sha256}) or the original "
        f"checkpoint {release.source_url} (sha256 {release.source_sha256}), then {put}, or copy it to "
        f"{torch_cache_path(release)} (the original: {original_cache_path(release)}), or name its path: "
        "weights=PATH in Python, --weights PATH on the command line, or TINIEST_WEIGHTS=PATH."
    )


def _choose(weights: str | os.PathLike[str] | TiniestWeights | NotGiven) -> TiniestWeights | str:
    """The release named by ``weights`` (left out: by ``TINIEST_WEIGHTS``, else the default), else the path or URL.

    Like torchvision, a string may name a member (``"DEFAULT"``, ``"CIFAR10_V1"``,
    ``"TiniestWeights.CIFAR10_V1"``); an unknown name that is not an existing file is a UsageError.
    """
    if isinstance(weights, TiniestWeights):
        return weights
    if weights is None:
        raise UsageError(
            "load_weights(None): expected weights to load (a TiniestWeights member, its name, a path or an "
            "http(s) URL), got None; leave weights out for the default release"
        )
    spec = env_text("TINIEST_WEIGHTS") if weights is NOT_GIVEN else os.fspath(weights)
    if spec is None:
        return TiniestWeights.DEFAULT
    if not isinstance(weights, (str, NotGiven)) or not _WEIGHTS_NAME.fullmatch(spec):
        return spec
    if spec.removeprefix(f"{TiniestWeights.__name__}.") not in TiniestWeights.__members__ and Path(spec).is_file():
        return spec
    return TiniestWeights.from_name(spec)


def load_weights(
    weights: str | os.PathLike[str] | TiniestWeights | NotGiven = NOT_GIVEN,
    *,
    sources: str | Iterable[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> LoadedWeights:
    """Find, verify and decode the weights; see the module docstring for the order.

    ``weights``: a ``TiniestWeights``, its name as a string (``"DEFAULT"``), a path or an
    http(s) URL; left out, what ``TINIEST_WEIGHTS`` names where it is set, else ``TiniestWeights.DEFAULT``
    (weights passed, even ``TiniestWeights.DEFAULT``, always win). ``None`` is refused: there is nothing to load.
    A failure inside one source (a network error, a missing optional module, unreadable bytes)
    never stops the chain: it is reported and the next source is tried. A bad environment
    variable is one ``UsageError`` naming it.
    """
    offline = is_offline(offline)
    from_env = weights is NOT_GIVEN and env_text("TINIEST_WEIGHTS") is not None
    try:
        choice = _choose(weights)
        release = choice.release if isinstance(choice, TiniestWeights) else TiniestWeights.DEFAULT.release
        if isinstance(choice, str):
            from tiniest.weights.named import load_named  # read alone: no source chain

            return load_named(choice, release, progress=progress, offline=offline)
    except (UsageError, ArtifactError, WeightsNotFoundError) as error:
        if from_env:  # say where the bad name or file came from
            raise type(error)(f"TINIEST_WEIGHTS: {error}") from None
        raise

    failures: list[str] = []
    for name in _parse_sources(sources):
        if offline and name not in _LOCAL:
            failures.append(f"{name}: skipped, offline mode (TINIEST_OFFLINE / HF_HUB_OFFLINE)")
            continue
        try:
            data, location = _LOCAL[name](release) if name in _LOCAL else _download(name, release, progress)
            return decode_weights(data, source=name, location=location, verified=True)
        except UsageError:  # a bad setting (TINIEST_TIMEOUT=inf...) is the caller's to fix: said once
            raise
        except (LookupError, OSError, ValueError, RuntimeError, ImportError) as error:  # not programming errors
            ours = type(error) is LookupError or isinstance(error, TiniestError)
            reason = str(error) if ours else f"{type(error).__name__}: {error}"
            failures.append(f"{name}: {reason}")
            if name not in _LOCAL:  # say why a download was given up, even if a later source succeeds
                logger.warning("weights source %s failed: %s", name, reason)
    tried = "\n".join(f"  - {line}" for line in failures)
    raise WeightsNotFoundError(
        f"could not find the weights {release.filename} (sha256 {release.sha256}).\n"
        f"Sources tried:\n{tried}\n{_how_to_supply(release)}"
    )
