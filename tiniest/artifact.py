"""The release artifact: a state_dict as safetensors with descriptive, reproducible metadata.

``safetensors`` writes its header keys in hash-map order, so the same tensors could give
different bytes in two runs; :func:`to_safetensors` rewrites the header with sorted keys so
that the same checkpoint always gives the same bytes and the same sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "ArtifactError",
    "artifact_metadata",
    "is_safetensors",
    "read_metadata",
    "read_state_dict",
    "sha256_hex",
    "to_safetensors",
]

_SAFETENSORS_ALIGN = 8


class ArtifactError(ValueError):
    """Bytes that are neither a safetensors file nor a plain torch state_dict."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_metadata(meta: Mapping[str, Any], *, source_sha256: str) -> dict[str, str]:
    """Flatten release metadata into the string-to-string header safetensors allows."""
    header = {"format": "pt", "source_sha256": source_sha256}
    for key, value in meta.items():
        header[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return header


def to_safetensors(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialize ``state_dict`` with ``metadata``; byte-identical for identical input."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    raw = save(tensors, metadata=dict(metadata))
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    canonical += b" " * (-len(canonical) % _SAFETENSORS_ALIGN)
    return struct.pack("<Q", len(canonical)) + canonical + raw[8 + header_len :]


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file, without reading the tensors."""
    if len(data) < 8:
        raise ArtifactError(f"expected a safetensors file, got {len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ArtifactError("expected a safetensors header, got a length past the end of the data")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as error:
        raise ArtifactError(f"expected a JSON safetensors header: {error}") from None
    return dict(header.get("__metadata__") or {})


def is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    (header_len,) = struct.unpack("<Q", data[:8])
    return header_len <= len(data) - 8 and data[8:9] == b"{"


def read_state_dict(data: bytes, *, origin: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes or a torch state_dict (never unpickling code)."""
    if is_safetensors(data):
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except SafetensorError as error:
            raise ArtifactError(f"{origin}: not a valid safetensors file ({error})") from None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign bytes
        raise ArtifactError(
            f"{origin}: expected a .safetensors file or a torch state_dict, "
            f"got {len(data)} bytes that are neither ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ArtifactError(f"{origin}: expected a state_dict of tensors, got {type(loaded).__name__}")
    return dict(loaded)
