"""The release artifact: a state_dict as safetensors, with descriptive, reproducible metadata.

Written by ``safetensors.torch.save``, then with its header's keys sorted: the library lays
tensors out in a fixed order but writes the metadata in hash-map order, which changes from one
process to the next, so without the sort the same checkpoint would not give the same sha256 twice.
With it, the published checkpoint always gives the bytes pinned in ``release.json``. Loading never
converts anything; only publishing writes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

from tiniest.errors import ArtifactError, MissingExtraError
from tiniest.weights.formats import read_state_dict, sha256_hex

__all__ = ["artifact_metadata", "build_artifact", "to_safetensors"]

_SAFETENSORS_ALIGN = 8


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
    """``state_dict`` with ``metadata`` as safetensors bytes, the same bytes for the same input.

    The library writes the file; its header is then written again with sorted keys (same length
    class, re-padded to 8 bytes), since the library's own order of metadata keys changes from one
    process to the next.
    """
    try:
        from safetensors.torch import save
    except ImportError:
        raise MissingExtraError("writing a .safetensors file needs safetensors: pip install safetensors") from None
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    try:
        written = save(tensors, metadata=dict(metadata) or None)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ArtifactError(f"expected tensors safetensors can store: {' '.join(str(error).split())[:300]}") from None
    (length,) = struct.unpack("<Q", written[:8])
    header = json.dumps(json.loads(written[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % _SAFETENSORS_ALIGN)
    return struct.pack("<Q", len(header)) + header + written[8 + length :]


def build_artifact(checkpoint: bytes, meta: Mapping[str, Any], *, origin: str = "checkpoint") -> bytes:
    """A state_dict checkpoint (.pt or .safetensors bytes) as release bytes.

    Only bytes and keys are read here: the caller checks that the tensors fit the architecture
    (``tiniest.export.check_architecture``), or compares the result with a pinned hash.
    """
    state_dict = read_state_dict(checkpoint, origin=origin)
    return to_safetensors(state_dict, artifact_metadata(meta, source_sha256=sha256_hex(checkpoint)))
