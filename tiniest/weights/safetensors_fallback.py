"""A small safetensors reader for environments with torch alone (torch.hub users), bounded in memory.

It is stricter than the library, never looser: a test generates files and checks that every one the
library refuses, this refuses too. Strictness costs nothing here: a file written by the library or
by ``tiniest`` has its tensors laid end to end from offset 0, a short header (16 MiB would hold the
class names of a Tiniest with a million classes) and only the keys the format defines. The header
is parsed once, with Python's JSON parser (its nesting bounded by the recursion limit), and each
tensor is one copy out of the file's bytes.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from typing import Any

import torch

from tiniest.errors import ArtifactError

__all__ = ["MAX_HEADER_BYTES", "Header", "read_header", "read_tensors"]

MAX_HEADER_BYTES = 16 * 2**20
_DTYPE_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "F64": "float64", "I64": "int64",
    "U64": "uint64", "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip
DTYPES = {name: getattr(torch, attr) for name, attr in _DTYPE_NAMES.items() if hasattr(torch, attr)}


@dataclass(frozen=True)
class Entry:
    """One tensor of the header: its dtype, shape and byte range in the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    entries: dict[str, Entry]
    data_start: int


def read_header(data: bytes, *, origin: str = "weights") -> Header:
    """The checked header of safetensors ``data``; one ``ArtifactError`` saying what is wrong otherwise."""

    def refuse(reason: str) -> ArtifactError:
        return ArtifactError(f"{origin}: expected a valid safetensors file: {reason}")

    if len(data) < 8:
        raise refuse(f"{len(data)} bytes, fewer than the 8 of the header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(len(data) - 8, MAX_HEADER_BYTES):
        raise refuse(f"a header of {length:,} bytes in a file of {len(data):,} (at most {MAX_HEADER_BYTES:,} read)")
    try:
        header = json.loads(
            data[8 : 8 + length].decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_no_float,
            parse_int=_whole_number,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise refuse(f"a header that is not JSON ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(header, dict):
        raise refuse(f"a JSON object as header, got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refuse("__metadata__ to map names to strings")
    if not all(_is_unicode(text) for text in (*header, *metadata, *metadata.values())):
        raise refuse("names and metadata in Unicode (a lone surrogate escape is not)")
    entries = {name: _entry(name, info, refuse) for name, info in header.items()}
    offset = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.start != offset:
            raise refuse(f"tensor {name[:60]!r} to start at byte {offset:,} of the data, got {entry.start:,}")
        offset = entry.end
    if offset != len(data) - 8 - length:
        raise refuse(f"tensors covering the {len(data) - 8 - length:,} bytes after the header, got {offset:,}")
    return Header(metadata, entries, 8 + length)


def read_tensors(data: bytes, *, origin: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data``, each copied once (they do not share memory with ``data``)."""
    header = read_header(data, origin=origin)
    tensors = {}
    for name, entry in header.entries.items():
        raw = bytearray(data[header.data_start + entry.start : header.data_start + entry.end])
        tensor = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        if sys.byteorder == "big" and entry.dtype.itemsize > 1:  # the format is little-endian
            tensor = tensor.reshape(-1, entry.dtype.itemsize).flip(1).reshape(-1)
        tensors[name] = tensor.view(entry.dtype).reshape(entry.shape)
    return tensors


def _entry(name: str, info: Any, refuse: Any) -> Entry:
    shown = repr(name[:60])
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise refuse(f"tensor {shown}: expected exactly dtype, shape and data_offsets, got {_kind(info)}")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise refuse(f"tensor {shown}: expected a dtype among {', '.join(DTYPES)}, got {info['dtype']!r:.60}")
    shape, offsets = _whole_numbers(info["shape"]), _whole_numbers(info["data_offsets"])
    if shape is None or offsets is None or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise refuse(f"tensor {shown}: expected a shape and two increasing data_offsets of whole numbers")
    if math.prod(n for n in shape if n) >= 2**63:  # torch's sizes are signed 64-bit
        raise refuse(f"tensor {shown}: expected a shape torch can hold, got {shape[:8]}")
    size = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != size:
        raise refuse(
            f"tensor {shown}: its shape needs {size:,} bytes, its data_offsets span {offsets[1] - offsets[0]:,}"
        )
    return Entry(dtype, tuple(shape), offsets[0], offsets[1])


def _whole_numbers(value: Any) -> list[int] | None:
    if not isinstance(value, list) or len(value) > 64:
        return None
    good = all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**64 for n in value)
    return value if good else None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    return f"keys {sorted(value)[:5]}" if isinstance(value, dict) else type(value).__name__


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key repeated in one object")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _no_float(text: str) -> None:
    """Sizes and offsets are whole numbers and metadata is text: no number with a point or exponent is valid."""
    raise ValueError(f"{text[:40]}: expected a whole number")


def _whole_number(text: str) -> int:
    """A non-negative whole number (``-0`` included in the refusal, as the library refuses it)."""
    if text.startswith("-"):
        raise ValueError(f"{text[:40]}: expected a non-negative whole number")
    return int(text)
