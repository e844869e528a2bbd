"""The release artifact: a state_dict as safetensors, with descriptive, reproducible metadata.

Written here rather than by ``safetensors.torch.save``: the library lays tensors out in a fixed
order, but writes the metadata in hash-map order, which changes from one process to the next, so
the same checkpoint would not give the same sha256 twice. This writer uses the library's layout
(by dtype, largest first, then by name; a test compares the tensor bytes) and a sorted header: the
same checkpoint always gives the bytes pinned in ``release.json``. Loading never converts anything.
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
from collections.abc import Mapping
from typing import Any

import torch

from tiniest.errors import ArtifactError
from tiniest.weights.formats import read_state_dict, sha256_hex
from tiniest.weights.safetensors_fallback import DTYPES

__all__ = ["artifact_metadata", "build_artifact", "to_safetensors"]

_SAFETENSORS_ALIGN = 8
# the dtypes written, in the order safetensors lays tensors out (largest alignment first); built from
# names, as an older torch lacks some (uint64 came with torch 2.3)
_LAYOUT = [
    *["U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16"],
    *["F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"],
]
_DTYPES = {DTYPES[name]: name for name in _LAYOUT if name in DTYPES}
_LAYOUT_RANK = {dtype: rank for rank, dtype in enumerate(_DTYPES)}




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


def build_artifact(checkpoint: bytes, meta: Mapping[str, Any], *, origin: str = "checkpoint") -> bytes:
    """A state_dict checkpoint (.pt or .safetensors bytes) as release bytes.

    Only bytes and keys are read here: the caller checks that the tensors fit the architecture
    (:func:`tiniest.hub.check_architecture`), or compares the result with a pinned hash.
    """
    state_dict = read_state_dict(checkpoint, origin=origin)
    return to_safetensors(state_dict, artifact_metadata(meta, source_sha256=sha256_hex(checkpoint)))
