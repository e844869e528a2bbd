"""Weights the caller names (``weights=PATH`` or URL, ``--weights``, ``TINIEST_WEIGHTS``): read alone, never a chain.

A named file loads or fails, never falling through to another source. Bytes that are not the pinned
release still load, with an ``UnverifiedWeightsWarning``: the caller chose them.
Imported only when weights are named, so that the default load runs none of it.
"""

from __future__ import annotations

from pathlib import Path

from tiniest.errors import UnverifiedWeightsWarning, WeightsNotFoundError, warn
from tiniest.files import read_regular
from tiniest.weights.fetch import max_download_bytes
from tiniest.weights.loading import LoadedWeights, decode_weights
from tiniest.weights.releases import Release, describe_mismatch

__all__ = ["load_named"]


def _read(spec: str, *, progress: bool, offline: bool) -> tuple[bytes, str]:
    if "://" in spec:
        if offline:
            raise WeightsNotFoundError(f"weights URL {spec} given, but offline mode forbids downloads")
        from tiniest.weights.downloads import download_url

        return download_url(spec, progress=progress), spec
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


def load_named(spec: str, release: Release, *, progress: bool, offline: bool) -> LoadedWeights:
    """The weights at the path or http(s) URL ``spec``, verified against ``release`` where they are it."""
    try:
        data, location = _read(spec, progress=progress, offline=offline)
    except OSError as error:  # a failed download (DownloadError), or a file that cannot be read
        raise WeightsNotFoundError(f"could not read the weights you named: {error}") from None
    verified = release.pins(data)
    if not verified:
        warn(
            f"{location} is not the pinned release {release.filename} ({describe_mismatch(data, release)}); "
            "loading it unverified because you asked for it",
            UnverifiedWeightsWarning,
        )
    return decode_weights(data, source="file", location=location, verified=verified)
