"""Weight files as tensors: safetensors (the library, else a bounded fallback) and torch zip archives.

A safetensors file is read by the ``safetensors`` library wherever it imports; torch.hub users, who
have torch alone, get ``tiniest.weights.safetensors_fallback``, which refuses every file the
library refuses (a property test holds it to that). A ``.pt`` file is loaded with
``torch.load(weights_only=True)`` only after its zip records have been checked: torch inflates a
deflated record to the size it declares before comparing, so a 2 MB file could ask for gigabytes.
``torch.save`` never compresses, so refusing compressed or oversized records costs real checkpoints
nothing. The legacy (pre-zip) format is refused too: it allocates each storage at its declared size.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from tiniest.errors import ArtifactError

__all__ = [
    "MAX_PICKLE_BYTES",
    "check_torch_archive",
    "is_safetensors",
    "load_torch_file",
    "read_metadata",
    "read_state_dict",
    "read_weights",
    "sha256_hex",
]

# The pickle of a state_dict holds names and storage keys, ~150 bytes a tensor (Tiniest's: 12 kB); a
# training checkpoint adds its optimizer and history. 4 MiB holds tens of thousands of tensors, while
# the unpickler's objects built from it stay within a few hundred MB whatever the opcodes are.
MAX_PICKLE_BYTES = 4 * 2**20
_MAX_RECORDS = 100_000


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` opens as a safetensors file does: a header length that fits, then ``{``."""
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return length <= len(data) - 8 and data[8 : 8 + length].lstrip(b" \t\r\n")[:1] == b"{"


def read_weights(data: bytes, *, origin: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of safetensors bytes or a torch state_dict archive, and the file's metadata (``{}`` for a .pt).

    Pickled code is never run: ``.pt`` files load with ``weights_only=True`` after ``check_torch_archive``.
    """
    if is_safetensors(data):
        from tiniest.weights.safetensors_fallback import read_header

        tensors = _load_safetensors(data, origin)  # the whole file checked first, by the library where it imports
        return tensors, read_header(data, origin=origin).metadata
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


def read_metadata(data: bytes, *, origin: str = "weights") -> dict[str, str]:
    """The metadata of ``read_weights``: what a safetensors file says of itself (``{}`` for a .pt)."""
    return read_weights(data, origin=origin)[1]


def _load_safetensors(data: bytes, origin: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load
    except ImportError:  # torch alone (a torch.hub user)
        from tiniest.weights.safetensors_fallback import read_tensors

        return read_tensors(data, origin=origin)
    try:
        return load(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as error:
        raise ArtifactError(
            f"{origin}: expected a valid safetensors file; the safetensors library says: {error}"
        ) from None


def check_torch_archive(data: bytes, *, origin: str = "weights") -> None:
    """Refuse, before ``torch.load``, a ``.pt`` whose records would cost more memory than the file holds."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ArtifactError(
            f"{origin}: expected a .safetensors file or a torch zip archive (torch.save's format), "
            f"got {len(data):,} bytes that are neither ({error})"
        ) from None
    if len(records) > _MAX_RECORDS:
        raise ArtifactError(
            f"{origin}: expected at most {_MAX_RECORDS:,} records in a torch archive, got {len(records):,}"
        )
    for record in records:
        if record.compress_type != zipfile.ZIP_STORED:
            raise ArtifactError(
                f"{origin}: record {record.filename!r} is compressed; expected stored records, as torch.save writes"
            )
        if record.file_size > len(data) or record.compress_size != record.file_size:
            raise ArtifactError(
                f"{origin}: record {record.filename!r} declares {record.file_size:,} bytes in a file of {len(data):,}"
            )
        if record.filename.endswith(".pkl") and record.file_size > MAX_PICKLE_BYTES:
            raise ArtifactError(
                f"{origin}: record {record.filename!r} is a pickle of {record.file_size:,} bytes; expected at most "
                f"{MAX_PICKLE_BYTES:,} (a state_dict's names and keys)"
            )


def load_torch_file(data: bytes, *, origin: str = "weights", map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of checked archive bytes; one ``ArtifactError`` otherwise."""
    check_torch_archive(data, origin=origin)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for foreign bytes
        raise ArtifactError(_unreadable(origin, error)) from None


def _unreadable(origin: str, error: Exception) -> str:
    """Why torch.load refused an archive, on one line, without torch's advice to pass weights_only=False."""
    paragraphs = [" ".join(p.split()) for p in str(error).split("\n\n") if p.strip()]
    reason = " ".join(p for p in paragraphs if "weights_only` set to `False`" not in p) or " ".join(paragraphs)
    if isinstance(error, pickle.UnpicklingError):
        return (
            f"{origin}: refused: this .pt file holds more than tensors (pickled objects or code), and tiniest "
            f"reads .pt files only with torch.load(weights_only=True). torch says: {reason}"
        )
    return f"{origin}: expected a torch state_dict archive ({type(error).__name__}: {reason})"
