"""Where the weights come from: the caller's file, or each source in turn until one yields the pinned bytes.

A file or URL the caller names (or ``TINIEST_WEIGHTS`` names) is read alone: it loads or fails,
never falling through to another source. If it differs from the pinned release it still loads,
with a warning, because the caller chose it. Otherwise the pinned release is sought in order: the
checkout's ``weights/`` folder, the local caches, the GitHub release, the Hugging Face Hub, and
finally the original torch checkpoint converted in memory, each candidate checked against the
sha256 pinned in ``release.json``.

Network sources run under the cache's writer lock (:mod:`tiniest.storage`): a process that waited
for a peer finds the file cached and downloads nothing. Bytes that fail the hash are never
kept; a cache folder that cannot be written costs a warning, never a load. Only regular files
are read (a FIFO or folder named like a weights file is skipped, with a warning), and no more
bytes than the pinned sizes.

``TINIEST_GITHUB_TOKEN`` goes with the GitHub downloads only when their URL is https (never over
plain http, e.g. to a mirror named by ``TINIEST_GITHUB_URL``), and never to the hosts they redirect to.
Weights are refused unless every tensor the model holds as floating point is floating point and
finite: ``load_state_dict`` would cast integers silently and NaN would spread through every answer.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tiniest.env import env_flag, env_path, env_text, env_yes
from tiniest.errors import (
    ArtifactError,
    CacheWarning,
    IncompatibleWeightsError,
    RateLimitError,
    TiniestError,
    TiniestWarning,
    UnverifiedWeightsWarning,
    UsageError,
    WeightsNotFoundError,
    warn,
)
from tiniest.files import read_regular
from tiniest.storage import save_atomically, writer_lock
from tiniest.weights._record import Release, TiniestWeights, describe_mismatch
from tiniest.weights.artifact import (
    artifact_metadata,
    is_safetensors,
    read_metadata,
    read_state_dict,
    sha256_hex,
    to_safetensors,
)
from tiniest.weights.download import DEADLINE_FACTOR, default_timeout, fetch, max_download_bytes

__all__ = [
    "SOURCES",
    "LoadedWeights",
    "build_artifact",
    "checkout_weights_dir",
    "is_offline",
    "load_strictly",
    "load_weights",
    "torch_cache_path",
]

logger = logging.getLogger(__name__)

_WEIGHTS_NAME = re.compile(r"(?:TiniestWeights\.)?[A-Za-z_]\w*")  # "DEFAULT", "TiniestWeights.CIFAR10_V1"
_CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"  # absent from a wheel


@dataclass(frozen=True)
class LoadedWeights:
    """A verified (or caller-chosen) state_dict and where it came from."""

    state_dict: dict[str, torch.Tensor]
    source: str
    location: str
    sha256: str
    verified: bool
    metadata: dict[str, str] = field(default_factory=dict)  # the file's safetensors metadata, as stored


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


def build_artifact(checkpoint: bytes, meta: dict[str, object], *, origin: str = "checkpoint") -> bytes:
    """Turn a state_dict checkpoint (.pt or .safetensors bytes) into release bytes.

    Only bytes and keys are read here: the caller checks that the tensors fit the architecture
    (:func:`tiniest.hub.check_architecture`), or compares the result with a pinned hash.
    """
    state_dict = read_state_dict(checkpoint, origin=origin)
    return to_safetensors(state_dict, artifact_metadata(meta, source_sha256=sha256_hex(checkpoint)))


def load_strictly(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], origin: str = "weights") -> None:
    """``model.load_state_dict(state_dict, strict=True)``, refusing a mismatch in a few lines.

    torch lists every missing or unexpected name (all 88 for a foreign file); this says how many,
    with a few examples, and which shapes differ.
    """
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    reshaped = [
        f"{name} {tuple(state_dict[name].shape)} instead of {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    problems = [
        f"{len(found)} {kind} ({_examples(found)})"
        for kind, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if found
    ]
    if problems:
        raise IncompatibleWeightsError(
            f"{origin} does not fit {type(model).__name__}: expected its {len(expected)} tensors, got "
            f"{len(state_dict)}; {', '.join(problems)}"
        )
    _check_values(expected, state_dict, origin)
    model.load_state_dict(state_dict, strict=True)


def _check_values(expected: dict[str, torch.Tensor], state_dict: dict[str, torch.Tensor], origin: str) -> None:
    """Refuse, naming the tensor, integers where the model holds floats, and NaN or infinite values."""
    for name, tensor in expected.items():
        given = state_dict[name]
        if not tensor.is_floating_point():
            continue
        if not given.is_floating_point():
            raise IncompatibleWeightsError(
                f"{origin}: tensor {name} is {str(given.dtype).removeprefix('torch.')}; expected floating point weights"
            )
        bad = int((~torch.isfinite(given)).sum())
        if bad:
            raise IncompatibleWeightsError(
                f"{origin}: tensor {name} holds {bad} NaN or infinite value(s) out of {given.numel()}; "
                "expected finite weights"
            )


def _examples(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def read_verified(path: Path, release: Release) -> bytes | None:
    """The bytes of ``path`` if it is a regular file holding the release, else None."""
    try:
        data = read_regular(path, release.size)
    except OSError:
        return None
    return data if sha256_hex(data) == release.sha256 else None


def _pinned_bytes(data: bytes, release: Release) -> bytes | None:
    """The release bytes if ``data`` is the release or its original checkpoint, else None."""
    digest = sha256_hex(data)
    if digest == release.sha256:
        return data
    if digest == release.source_sha256:
        converted = build_artifact(data, release.meta, origin=release.source_url)
        if sha256_hex(converted) == release.sha256:
            return converted
    return None


def _lock_file(release: Release) -> Path:
    """``$TORCH_HOME/hub/.locks/<filename>.lock``: outside ``checkpoints/``, which holds weights only."""
    return Path(torch.hub.get_dir()) / ".locks" / f"{release.filename}.lock"


def _lock_timeout() -> float:
    """How long to wait for a peer process downloading the same file (ten times ``TINIEST_TIMEOUT``).

    That is as long as one download attempt may last (:mod:`tiniest.weights.download`'s deadline).
    """
    return default_timeout() * DEADLINE_FACTOR


def _remember(data: bytes, release: Release) -> None:
    """Keep verified bytes in the torch.hub cache so the next load is a local read; call under the lock."""
    target = torch_cache_path(release)
    try:
        save_atomically(target, data)
    except OSError as error:
        warn(f"could not cache the weights at {target} ({error}); they are loaded from memory this time", CacheWarning)


def _read_user_weights(spec: str, *, progress: bool, offline: bool) -> tuple[bytes, str]:
    if "://" in spec:
        if _url_scheme(spec) not in ("http", "https"):  # urllib would open file: (a FIFO, forever) and ftp:
            raise UsageError(f"expected an http(s) URL for the weights, got {spec!r}")
        if offline:
            raise WeightsNotFoundError(f"weights URL {spec} given, but offline mode forbids downloads")
        return fetch(spec, progress=progress, max_bytes=max_download_bytes()), spec
    path = Path(spec).expanduser()
    if path.is_dir():
        inside = [path / name for name in ("model.safetensors", "model.pt") if (path / name).is_file()]
        hint = f"; pass {inside[0]}" if inside else ""
        raise WeightsNotFoundError(
            f"weights {path} is a folder; expected a .safetensors or .pt file{hint} "
            "(a Hugging Face model folder also loads with Tiniest.from_pretrained)"
        )
    if not path.exists():
        raise WeightsNotFoundError(f"weights file {path} does not exist (expected a .safetensors or .pt file)")
    return read_regular(path, max_download_bytes()), str(path)


def _url_scheme(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).scheme
    except ValueError:  # "http://[::1": not a URL at all
        return ""


def _load_user_weights(spec: str, release: Release, *, progress: bool, offline: bool) -> LoadedWeights:
    try:
        data, location = _read_user_weights(spec, progress=progress, offline=offline)
    except OSError as error:  # a failed download (DownloadError), or a file that cannot be read
        raise WeightsNotFoundError(f"could not read the weights you named: {error}") from None
    pinned = _pinned_bytes(data, release)
    if pinned is not None:
        return LoadedWeights(read_state_dict(pinned), "file", location, release.sha256, True, read_metadata(pinned))
    warn(
        f"{location} is not the pinned release {release.filename} ({describe_mismatch(data, release)}); "
        "loading it unverified because you asked for it",
        UnverifiedWeightsWarning,
    )
    metadata = read_metadata(data, origin=location) if is_safetensors(data) else {}
    return LoadedWeights(read_state_dict(data, origin=location), "file", location, sha256_hex(data), False, metadata)


def _from_local(release: Release, progress: bool) -> tuple[bytes, str]:
    folder = checkout_weights_dir()
    if not folder.is_dir():
        raise LookupError(f"no folder {folder} (a pip install has none: TINIEST_WEIGHTS_DIR names one)")
    named = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".pt", ".pth"})
    candidates = [path for path in named if _is_regular(path)]
    if len(candidates) < len(named):
        odd = ", ".join(path.name for path in named if path not in candidates)
        warn(f"skipped {odd} in {folder}: not regular files", TiniestWarning)
    sizes = {release.size, release.source_size}  # a file of another size cannot be either: it is not read
    for path in candidates:
        try:
            data = read_regular(path, max(sizes)) if path.stat().st_size in sizes else None
        except OSError:  # replaced or removed meanwhile
            data = None
        pinned = _pinned_bytes(data, release) if data is not None else None
        if pinned is not None:
            return pinned, str(path)
    names = ", ".join(p.name for p in candidates) or "no .safetensors or .pt file"
    raise LookupError(f"{folder} holds {names}; none matches the pinned sha256")


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a dangling link, a file gone meanwhile
        return False


def _from_cache(release: Release, progress: bool) -> tuple[bytes, str]:
    path = torch_cache_path(release)
    reasons = []
    if path.is_file():
        data = read_verified(path, release)  # no lock: files are only ever replaced whole
        if data is not None:
            return data, str(path)
        reasons.append(_remove_corrupt(path, release))
    else:
        reasons.append(f"{path} absent")
    hf_path = _hf_cached_file(release)
    if hf_path is not None:
        from tiniest.weights.huggingface import check_cache_entry

        data, problem = check_cache_entry(Path(hf_path), release)
        if data is not None:
            with writer_lock(_lock_file(release), _lock_timeout()) as access:  # copy it where torch.hub looks
                if access != "unusable":
                    _remember(data, release)
            return data, hf_path
        reasons.append(problem)
    else:
        reasons.append("not in the Hugging Face cache")
    raise LookupError("; ".join(reasons))


def _hf_cached_file(release: Release) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(release.hf_repo_id, release.hf_filename, revision=release.hf_revision)
    return found if isinstance(found, str) else None


def _remove_corrupt(path: Path, release: Release) -> str:
    """Delete a cached file that fails the hash (under the lock, so a fresh good copy is not hit)."""
    try:
        with writer_lock(_lock_file(release), _lock_timeout()) as access:
            try:
                data = read_regular(path, release.size)
                what = describe_mismatch(data, release)
            except FileNotFoundError:
                return f"{path} was being replaced by another process"
            except OSError as error:  # larger than the release, or no longer a regular file
                data, what = None, str(error)
            if data is not None and sha256_hex(data) == release.sha256:
                return f"{path} was being replaced by another process"
            if access != "unusable":
                path.unlink(missing_ok=True)
                return f"removed a corrupt {path} ({what})"
            return f"{path} is corrupt ({what}) and could not be removed"
    except OSError as error:
        return f"{path} is corrupt and could not be removed: {error}"


def _github_fetch(url: str, progress: bool, max_bytes: int) -> bytes:
    """GET a github.com URL, with ``TINIEST_GITHUB_TOKEN`` if set and the URL is https; explain GitHub's rate limit."""
    token = env_text("TINIEST_GITHUB_TOKEN")
    headers = None
    if token is not None and urllib.parse.urlsplit(url).scheme == "https":
        headers = {"Authorization": f"Bearer {token}"}
    elif token is not None:
        warn(f"TINIEST_GITHUB_TOKEN is not sent to {url}: a token goes over https only", TiniestWarning)
    try:
        return fetch(url, progress=progress, headers=headers, max_bytes=max_bytes)
    except RateLimitError as error:
        raise LookupError(
            f"GitHub's rate limit refused the download: {error}. To avoid it, set TINIEST_GITHUB_TOKEN to a GitHub "
            "token, let the huggingface source serve the file, or put the file in the weights/ folder."
        ) from None


def _from_github(release: Release, progress: bool) -> tuple[bytes, str]:
    data = _github_fetch(release.url, progress, release.size)
    if sha256_hex(data) != release.sha256:
        raise LookupError(f"{release.url} served the wrong bytes: {describe_mismatch(data, release)}")
    return data, release.url


def _from_huggingface(release: Release, progress: bool) -> tuple[bytes, str]:
    from tiniest.weights.huggingface import download_from_hub

    return download_from_hub(release, progress)


def _from_original(release: Release, progress: bool) -> tuple[bytes, str]:
    data = _github_fetch(release.source_url, progress, release.source_size)
    if sha256_hex(data) != release.source_sha256:
        raise LookupError(
            f"{release.source_url} served the wrong bytes: {describe_mismatch(data, release, release.source_sha256)}"
        )
    converted = _pinned_bytes(data, release)
    if converted is None:
        raise LookupError("the original checkpoint converted to different bytes than the pinned release")
    return converted, release.source_url


@dataclass(frozen=True)
class _Source:
    """How a source finds the release bytes (``(bytes, location)``), and whether it downloads them.

    A source that downloads is skipped offline, runs under the cache's writer lock and has its
    bytes kept in the cache.
    """

    find: Callable[[Release, bool], tuple[bytes, str]]
    network: bool


_SOURCES = {  # in the order they are tried
    "local": _Source(_from_local, network=False),
    "cache": _Source(_from_cache, network=False),
    "github": _Source(_from_github, network=True),
    "huggingface": _Source(_from_huggingface, network=True),
    "original": _Source(_from_original, network=True),
}
SOURCES: tuple[str, ...] = tuple(_SOURCES)


def _find(name: str, release: Release, progress: bool) -> tuple[bytes, str, str]:
    """The release bytes from source ``name``: ``(bytes, location, source that gave them)``.

    A download runs under the writer lock, held from the cache check to the atomic write: a process
    that waited for a peer finds the file cached (source ``"cache"``) instead of downloading it again.
    """
    source = _SOURCES[name]
    if not source.network:
        return (*source.find(release, progress), name)
    target = torch_cache_path(release)
    with writer_lock(_lock_file(release), _lock_timeout()) as access:
        if access != "unusable":
            cached = read_verified(target, release)
            if cached is not None:
                return cached, str(target), "cache"
        data, location = source.find(release, progress)
        if access != "unusable":
            _remember(data, release)
        return data, location, name


def _parse_sources(sources: str | Iterable[str] | None) -> Sequence[str]:
    if sources is None:
        return SOURCES
    names = [s.strip() for s in sources.split(",")] if isinstance(sources, str) else list(sources)
    unknown = [name for name in names if name not in _SOURCES]
    if unknown or not names:
        raise UsageError(f"unknown weights source(s) {unknown or names}; expected some of {', '.join(SOURCES)}")
    return names


def _how_to_supply(release: Release) -> str:
    folder = checkout_weights_dir()
    # a wheel has no weights/ folder: never send the user into site-packages
    put = f"put it in {folder}" if folder.is_dir() else "put it in a folder named by TINIEST_WEIGHTS_DIR"
    return (
        f"To supply the weights by hand, download {release.url} "
        f"(sha256 {release.sha256}) or the original checkpoint {release.source_url}, then either {put}, "
        f"copy it to {torch_cache_path(release)}, or pass its path as weights=PATH (or set TINIEST_WEIGHTS=PATH)."
    )


def _choose(weights: str | os.PathLike[str] | TiniestWeights | None) -> TiniestWeights | str | None:
    """The release named by ``weights`` (or ``TINIEST_WEIGHTS``), else the path or URL to read, else None.

    Like torchvision, a string may name a member (``"DEFAULT"``, ``"CIFAR10_V1"``,
    ``"TiniestWeights.CIFAR10_V1"``); an unknown name that is not an existing file is a ValueError.
    """
    if isinstance(weights, TiniestWeights):
        return weights
    spec = os.fspath(weights) if weights is not None else env_text("TINIEST_WEIGHTS")
    if not isinstance(weights, (str, type(None))) or spec is None or not _WEIGHTS_NAME.fullmatch(spec):
        return spec
    stripped = spec.removeprefix(f"{TiniestWeights.__name__}.")
    if stripped not in TiniestWeights.__members__ and Path(spec).is_file():
        return spec
    return TiniestWeights.from_name(spec)


def load_weights(
    weights: str | os.PathLike[str] | TiniestWeights | None = None,
    *,
    sources: str | Iterable[str] | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> LoadedWeights:
    """Find, verify and decode the weights; see the module docstring for the order.

    ``weights``: a :class:`TiniestWeights`, its name as a string (``"DEFAULT"``), a path or an
    http(s) URL. ``None`` (the default) means ``TiniestWeights.DEFAULT``, or what ``TINIEST_WEIGHTS``
    names when it is set; unlike ``tiniest.tiniest(weights=None)``, which is a random
    initialisation. A member passed explicitly (``TiniestWeights.DEFAULT`` included) or a name given
    as a string ignores ``TINIEST_WEIGHTS`` (``tiniest.tiniest`` passes ``None`` for the default
    member, so that the variable stands in for it there).
    A failure inside one source (a network error, a missing optional module, unreadable bytes)
    never stops the chain: it is reported and the next source is tried. A bad environment
    variable is one :class:`UsageError` naming it.
    """
    offline = is_offline(offline)
    from_env = weights is None and env_text("TINIEST_WEIGHTS") is not None
    try:
        choice = _choose(weights)
        release = choice.release if isinstance(choice, TiniestWeights) else TiniestWeights.DEFAULT.release
        if isinstance(choice, str):
            return _load_user_weights(choice, release, progress=progress, offline=offline)
    except (UsageError, ArtifactError, WeightsNotFoundError) as error:
        if from_env:  # say where the bad name or file came from
            raise type(error)(f"TINIEST_WEIGHTS: {error}") from None
        raise

    failures: list[str] = []
    for name in _parse_sources(sources):
        network = _SOURCES[name].network
        if offline and network:
            failures.append(f"{name}: skipped, offline mode (TINIEST_OFFLINE / HF_HUB_OFFLINE)")
            continue
        try:
            data, location, name = _find(name, release, progress)
        except UsageError:  # a bad setting (TINIEST_TIMEOUT=inf...) is the caller's to fix: said once, not per source
            raise
        except (LookupError, OSError, ValueError, RuntimeError, ImportError) as error:  # not programming errors
            ours = type(error) is LookupError or isinstance(error, TiniestError)
            reason = str(error) if ours else f"{type(error).__name__}: {error}"
            failures.append(f"{name}: {reason}")
            if network:  # say why a download was given up, even if a later source succeeds
                logger.warning("weights source %s failed: %s", name, reason)
            continue
        return LoadedWeights(read_state_dict(data), name, location, release.sha256, True, read_metadata(data))
    tried = "\n".join(f"  - {line}" for line in failures)
    raise WeightsNotFoundError(
        f"could not find the weights {release.filename} (sha256 {release.sha256}).\n"
        f"Sources tried:\n{tried}\n{_how_to_supply(release)}"
    )
