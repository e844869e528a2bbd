"""Weight files as tensors: safetensors (the library, else a bounded fallback) and torch zip archives.

A safetensors file is read by the ``safetensors`` library wherever it imports; torch.hub users, who
have torch alone, get ``tiniest.weights.safetensors_fallback``, which refuses every file the
library refuses (a property test holds it to that). A ``.pt`` file is read by
``tiniest.weights.torch_files`` (``torch.load(weights_only=True)`` after its zip records are checked),
imported only for one.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Mapping

import torch

from tiniest.errors import ArtifactError

__all__ = [
    "is_safetensors",
    "read_state_dict",
    "read_weights",
    "sha256_hex",
]

def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` opens as a safetensors file does: a header length that fits, then ``{``."""
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return length <= len(data) - 8 and data[8 : 8 + length].lstrip(b" \t\r\n")[:1] == b"{"


def read_weights(
    data: bytes, *, origin: str = "weights", pinned: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of safetensors bytes or a torch state_dict archive, and the file's metadata (``{}`` for a .pt).

    Pickled code is never run: ``.pt`` files load with ``weights_only=True``, after
    ``tiniest.weights.torch_files.check_torch_archive`` unless they are ``pinned`` (bytes whose
    sha256 the release record pins: the publisher's own ``.pt``, known to be a plain state_dict).
    """
    if is_safetensors(data):
        return _load_safetensors(data, origin)
    if pinned:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), {}
    from tiniest.weights.torch_files import load_torch_file  # a .pt: the archive checks are needed only here

    loaded = load_torch_file(data, origin=origin)
    if isinstance(loaded, Mapping) and str(loaded.get("format", "")).startswith("tiniest-train-checkpoint"):
        raise ArtifactError(
            f"{origin}: this is a `tiniest train` checkpoint (weights, optimizer, history), not a state_dict: "
            "pass the run's model.pt (written when the run finishes), or `tiniest release` the run or this file"
        )
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ArtifactError(f"{origin}: expected a state_dict of tensors, got {type(loaded).__name__}")
    return dict(loaded), {}


def read_state_dict(data: bytes, *, origin: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of ``read_weights``."""
    return read_weights(data, origin=origin)[0]


def _load_safetensors(data: bytes, origin: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load
    except ImportError:  # torch alone (a torch.hub user)
        from tiniest.weights.safetensors_fallback import read_header, read_tensors

        return read_tensors(data, origin=origin), read_header(data, origin=origin).metadata
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as error:
        raise ArtifactError(
            f"{origin}: expected a valid safetensors file; the safetensors library says: {error}"
        ) from None
    # The library has accepted the file: its header is JSON (of at most the library's 100 MB, in a file whose
    # size was bounded when it was read) whose __metadata__ maps strings to strings. It offers no reader of
    # the metadata of bytes (safe_open takes a path), so json reads it.
    (length,) = struct.unpack("<Q", data[:8])
    return tensors, json.loads(data[8 : 8 + length]).get("__metadata__") or {}
