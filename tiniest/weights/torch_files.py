"""torch zip archives (``torch.save``'s format), checked before ``torch.load(weights_only=True)`` reads them.

torch inflates a deflated record to the size it declares before comparing, so a 2 MB file could ask
for gigabytes. ``torch.save`` never compresses, so refusing compressed or oversized records costs
real checkpoints nothing. The legacy (pre-zip) format is refused too: it allocates each storage at
its declared size.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import torch

from tiniest.errors import ArtifactError

__all__ = ["MAX_PICKLE_BYTES", "check_torch_archive", "load_torch_file"]

# The pickle of a state_dict holds names and storage keys, ~150 bytes a tensor (Tiniest's: 12 kB); a
# training checkpoint adds its optimizer and history. 4 MiB holds tens of thousands of tensors, while
# the unpickler's objects built from it stay within a few hundred MB whatever the opcodes are.
MAX_PICKLE_BYTES = 4 * 2**20
_MAX_RECORDS = 100_000


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
