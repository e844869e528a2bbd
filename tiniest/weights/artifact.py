"""The release artifact: a state_dict as safetensors with descriptive, reproducible metadata.

:func:`to_safetensors` writes the format itself (an 8-byte header length, a JSON header, the raw
little-endian tensors), because ``safetensors.torch.save`` needs numpy, which neither torch nor
tiniest installs. It lays the tensors out as safetensors does (by dtype, largest first, then by
name; a test compares the two byte for byte) and writes the header with sorted keys, so that the
same checkpoint always gives the same bytes and the same sha256. Reading is
:mod:`tiniest.weights.safetensors_format`'s, in plain Python and torch, in every environment: the
torch.hub user who has only torch runs the same reader as the tests, which hold it to the library.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from tiniest.errors import ArtifactError
from tiniest.weights.safetensors_format import DTYPES, read_header, read_tensors

__all__ = [
    "artifact_metadata",
    "is_safetensors",
    "read_metadata",
    "read_state_dict",
    "sha256_hex",
    "to_safetensors",
]

_SAFETENSORS_ALIGN = 8
_HEADER_START = re.compile(rb"[ \t\n\r]*\{")  # JSON's blanks, then the header object
# the dtypes written, in the order safetensors lays tensors out (largest alignment first); built from
# names, as an older torch lacks some (uint64 came with torch 2.3)
_LAYOUT = [
    *["U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16"],
    *["F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"],
]
_DTYPES = {DTYPES[name]: name for name in _LAYOUT if name in DTYPES}
_LAYOUT_RANK = {dtype: rank for rank, dtype in enumerate(_DTYPES)}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_metadata(meta: Mapping[str, Any], *, source_sha256: str) -> dict[str, str]:
    """Flatten release metadata into the string-to-string header safetensors allows.

    ``source_sha256`` is the hash of the checkpoint the weights were converted from; an empty one
    (weights saved from memory, with no source file) is left out of the header.
    """
    header = {"format": "pt", "source_sha256": source_sha256} if source_sha256 else {"format": "pt"}
    for key, value in meta.items():
        header[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return header


def to_safetensors(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialize ``state_dict`` with ``metadata``; byte-identical for identical input (no numpy needed)."""
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    unsupported = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in _DTYPES})
    if unsupported:
        raise ArtifactError(f"expected tensors of the dtypes safetensors stores, got {', '.join(unsupported)}")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda n: (_LAYOUT_RANK[tensors[n].dtype], n)):
        data = _raw_bytes(tensors[name])
        header[name] = {"dtype": _DTYPES[tensors[name].dtype], "shape": list(tensors[name].shape)}
        header[name]["data_offsets"] = [offset, offset + len(data)]
        chunks.append(data)
        offset += len(data)
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    canonical += b" " * (-len(canonical) % _SAFETENSORS_ALIGN)
    return struct.pack("<Q", len(canonical)) + canonical + b"".join(chunks)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """The little-endian bytes of a contiguous CPU tensor, copied straight from its memory."""
    if sys.byteorder == "big" and tensor.element_size() > 1:
        tensor = tensor.view(torch.uint8).reshape(-1, tensor.element_size()).flip(1).contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.nbytes) if tensor.nbytes else b""


def read_metadata(data: bytes, *, origin: str = "weights") -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file, the whole header checked, the tensors not built."""
    return read_header(data, origin=origin).metadata


def is_safetensors(data: bytes) -> bool:
    """Whether ``data`` opens like a safetensors file: a header length that fits, then a JSON object.

    JSON allows blanks before the ``{`` (the library reads such a file); they are skipped within the
    header only, without copying it.
    """
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    return header_len <= len(data) - 8 and _HEADER_START.match(data, 8, 8 + header_len) is not None


def read_state_dict(data: bytes, *, origin: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes or a torch state_dict (never unpickling code)."""
    if is_safetensors(data):
        return read_tensors(data, origin=origin)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign bytes
        raise ArtifactError(_unreadable(data, origin, error)) from None
    if isinstance(loaded, Mapping) and str(loaded.get("format", "")).startswith("tiniest-train-checkpoint"):
        raise ArtifactError(
            f"{origin}: this is a `tiniest train` checkpoint (weights, optimizer, history), not a state_dict: "
            "pass the run's model.pt (written when the run finishes), or `tiniest release` the run or this file"
        )
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ArtifactError(f"{origin}: expected a state_dict of tensors, got {type(loaded).__name__}")
    return dict(loaded)


def _unreadable(data: bytes, origin: str, error: Exception) -> str:
    """Why torch.load refused ``data``: code or objects in a torch archive, or bytes of another kind."""
    reason = _torch_reason(error)
    if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(io.BytesIO(data)):
        return (
            f"{origin}: refused: this .pt file holds more than tensors (pickled objects or code), and tiniest "
            f"reads .pt files only with torch.load(weights_only=True). torch says: {reason}"
        )
    return (
        f"{origin}: expected a .safetensors file or a torch state_dict, "
        f"got {len(data)} bytes that are neither ({type(error).__name__}: {reason})"
    )


def _torch_reason(error: BaseException) -> str:
    """torch's explanation, whole, on one line; without its advice to load with weights_only=False."""
    paragraphs = [" ".join(p.split()) for p in str(error).split("\n\n") if p.strip()]
    kept = [p for p in paragraphs if "weights_only` set to `False`" not in p]
    return " ".join(kept or paragraphs)
