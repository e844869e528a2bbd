"""The safetensors format read with torch alone: a strict reader, so that torch.hub needs no other package.

A file is an 8-byte little-endian header length, a UTF-8 JSON header and the raw little-endian
tensors. The header maps each tensor name to ``{"dtype", "shape", "data_offsets"}`` (other keys are
ignored) and may hold ``"__metadata__"``, a map of strings to strings. The reader refuses what the
``safetensors`` library refuses (a differential test, ``tests/weights/test_artifact.py``, holds it to
that): a header over 100,000,000 bytes or past the end, JSON that serde_json would not read (numbers
out of range, lone surrogates, nesting deeper than 127), wrong types, unknown dtypes, shapes whose
size overflows 64 bits or disagrees with the offsets, and offsets that do not tile the data exactly,
in order, with no gap, overlap or trailing byte. It is stricter in three places, each a file that
readers could take in different ways: a key repeated in any JSON object (the library keeps the
last), a tensor entry written as a JSON array, and a dtype written as a JSON object.

Every size comes from the file, so each is checked against the bytes at hand before anything is
allocated.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from typing import Any

import torch

from tiniest.errors import ArtifactError, first_line

__all__ = ["DTYPES", "HEADER_LIMIT", "Header", "read_header", "read_tensors"]

HEADER_LIMIT = 100_000_000  # the library's cap on the JSON header, in bytes
_USIZE_MAX = 2**64 - 1  # serde's usize on a 64-bit machine: larger numbers are floats to it
_MAX_DEPTH = 127  # serde_json refuses a 128th nested array or object
_METADATA = "__metadata__"
_FIELDS = ("dtype", "shape", "data_offsets")

# the dtype names safetensors.torch reads (its own table), with torch's name and the element size in
# bits; a dtype this torch lacks is left out, as the library leaves it out
_DTYPE_NAMES = {
    "F64": ("float64", 64),
    "F32": ("float32", 32),
    "F16": ("float16", 16),
    "BF16": ("bfloat16", 16),
    "C64": ("complex64", 64),
    "I64": ("int64", 64),
    "I32": ("int32", 32),
    "I16": ("int16", 16),
    "I8": ("int8", 8),
    "U64": ("uint64", 64),
    "U32": ("uint32", 32),
    "U16": ("uint16", 16),
    "U8": ("uint8", 8),
    "BOOL": ("bool", 8),
    "F8_E4M3": ("float8_e4m3fn", 8),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 8),
    "F8_E5M2": ("float8_e5m2", 8),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 8),
}
DTYPES: dict[str, torch.dtype] = {
    code: getattr(torch, name) for code, (name, _) in _DTYPE_NAMES.items() if hasattr(torch, name)
}


@dataclass(frozen=True)
class Entry:
    """One tensor as the header places it: absolute byte range in the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """What a valid header says: the free-form metadata, and where each tensor lies."""

    metadata: dict[str, str]
    tensors: dict[str, Entry]


class _Refused(Exception):
    """A reason inside the JSON header; :func:`read_header` turns it into one ArtifactError."""


def read_header(data: bytes, *, origin: str = "weights") -> Header:
    """The validated header of safetensors ``data``: every check but building the tensors."""

    def refuse(reason: str) -> ArtifactError:
        return ArtifactError(f"{origin}: not a valid safetensors file: {reason}")

    if len(data) < 8:
        raise refuse(f"expected at least 8 bytes (the header length), got {len(data)}")
    (length,) = struct.unpack("<Q", data[:8])
    if length > HEADER_LIMIT:
        raise refuse(f"expected a header of at most {HEADER_LIMIT:,} bytes, got a length of {length:,}")
    if length > len(data) - 8:
        raise refuse(f"expected a header of {length:,} bytes, got {len(data) - 8:,} bytes after the length")
    try:
        text = data[8 : 8 + length].decode("utf-8")
        header = _parse_json(text)
        metadata, entries = _entries(header)
    except UnicodeDecodeError as error:
        raise refuse(f"expected a UTF-8 header, got {error.reason} at byte {8 + error.start}") from None
    except _Refused as error:
        raise refuse(str(error)) from None
    data_start = 8 + length
    position = 0
    tensors: dict[str, Entry] = {}
    for name, (dtype_name, shape, (start, end)) in sorted(entries.items(), key=lambda item: item[1][2]):
        if start != position:
            raise refuse(
                f"expected tensor {_show(name)} to start at byte {position} of the data, got offsets [{start}, {end}]"
            )
        size = _byte_size(shape, _DTYPE_NAMES[dtype_name][1])
        if size is None:
            raise refuse(f"tensor {_show(name)}: the size of shape {_dims(shape)} overflows 64 bits")
        if end - start != size:
            raise refuse(
                f"expected tensor {_show(name)} ({dtype_name} {_dims(shape)}) to take {size} bytes, "
                f"got offsets [{start}, {end}] ({end - start} bytes)"
            )
        position = end
        tensors[name] = Entry(DTYPES[dtype_name], shape, data_start + start, data_start + end)
    if position != len(data) - data_start:
        raise refuse(f"expected {position:,} bytes of tensor data after the header, got {len(data) - data_start:,}")
    return Header(metadata, tensors)


def read_tensors(data: bytes, *, origin: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data``, on the CPU, each with memory of its own."""
    tensors = {}
    for name, entry in read_header(data, origin=origin).tensors.items():
        try:
            if entry.end == entry.start:  # torch.frombuffer refuses an empty buffer
                tensor = torch.empty(entry.shape, dtype=entry.dtype)
            else:
                raw = bytearray(memoryview(data)[entry.start : entry.end])
                tensor = torch.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape)
                if sys.byteorder == "big" and tensor.element_size() > 1:
                    tensor = _swapped(tensor)
        except (RuntimeError, TypeError, ValueError, OverflowError) as error:  # a shape torch cannot hold
            raise ArtifactError(
                f"{origin}: not a valid safetensors file: tensor {_show(name)} of shape {_dims(entry.shape)} "
                f"cannot be made by torch ({first_line(error)})"
            ) from None
        tensors[name] = tensor
    return tensors


def _swapped(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` read from little-endian bytes on a big-endian machine, in native order."""
    size = tensor.element_size()
    flipped = tensor.reshape(-1).view(torch.uint8).reshape(-1, size).flip(1).contiguous()
    return flipped.view(tensor.dtype).reshape(tensor.shape)


def _byte_size(shape: tuple[int, ...], bits: int) -> int | None:
    """Bytes of ``shape`` elements of ``bits`` bits; None where the library's 64-bit arithmetic overflows."""
    count = 1
    for dim in shape:  # multiplied in order and checked at each step, as the library does
        count *= dim
        if count > _USIZE_MAX:
            return None
    total = count * bits
    return None if total > _USIZE_MAX else total // 8


def _show(name: str, limit: int = 60) -> str:
    shown = repr(name)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _dims(shape: tuple[int, ...], limit: int = 8) -> str:
    shown = ", ".join(map(str, shape[:limit]))
    return f"[{shown}, ... {len(shape)} dims]" if len(shape) > limit else f"[{shown}]"


def _parse_json(text: str) -> Any:
    """``text`` as JSON, refused where serde_json (the library's parser) would refuse it, or a key repeats."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_integer,
            parse_float=_float,
            parse_constant=_no_constant,
        )
    except json.JSONDecodeError as error:
        raise _Refused(f"expected a JSON header, got {error.msg} at character {error.pos}") from None
    except RecursionError:
        raise _Refused(f"expected JSON nested at most {_MAX_DEPTH} deep, got deeper") from None
    except ValueError as error:  # a number of more digits than int() reads
        raise _Refused(f"expected a JSON header, got {error}") from None
    _check_values(value)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _Refused(f"expected each key once in a JSON object, got {_show(key)} repeated")
        seen.add(key)
    return dict(pairs)


class _NotUsize(float):
    """A JSON number that serde reads as a float: negative (``-0`` too), fractional, or over 2**64 - 1."""


def _integer(literal: str) -> int | float:
    if not literal.startswith("-") and int(literal) <= _USIZE_MAX:
        return int(literal)
    try:
        return _NotUsize(int(literal))
    except OverflowError:
        raise _Refused(f"expected JSON numbers within a double's range, got one of {len(literal)} characters") from None


def _float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"expected JSON numbers within a double's range, got {literal[:40]}")
    return _NotUsize(value)


def _no_constant(literal: str) -> None:
    raise _Refused(f"expected a JSON value, got {literal}")


def _check_values(value: Any) -> None:
    """No string holds a lone surrogate (``"\\ud800"``) and nothing nests deeper than serde_json reads."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _whole_characters(item)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > _MAX_DEPTH:
            raise _Refused(f"expected JSON nested at most {_MAX_DEPTH} deep, got deeper")
        if isinstance(item, dict):
            for key in item:
                _whole_characters(key)
        pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def _whole_characters(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("expected JSON strings of whole characters, got a lone surrogate escape") from None


def _entries(header: Any) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]]:
    """The metadata and each tensor's (dtype name, shape, offsets), with every type checked."""
    if not isinstance(header, dict):
        raise _Refused(f"expected a JSON object as the header, got {_kind(header)}")
    metadata = header.get(_METADATA)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise _Refused(f"expected {_METADATA} to be an object of strings, got {_kind(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _Refused(f"expected {_METADATA} to map strings to strings, got {_show(key)}: {_kind(value)}")
    entries = {}
    for name, info in header.items():
        if name == _METADATA:
            continue
        if not isinstance(info, dict):
            raise _Refused(f"expected tensor {_show(name)} to be an object of {', '.join(_FIELDS)}, got {_kind(info)}")
        missing = [field for field in _FIELDS if field not in info]
        if missing:
            raise _Refused(f"expected tensor {_show(name)} to have {', '.join(missing)}, got none")
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _Refused(
                f"expected tensor {_show(name)} to have a dtype among {', '.join(DTYPES)}, got {_kind(dtype)}"
            )
        shape = _usizes(info["shape"], f"the shape of tensor {_show(name)}")
        offsets = _usizes(info["data_offsets"], f"the data_offsets of tensor {_show(name)}")
        if len(offsets) != 2:
            raise _Refused(f"expected tensor {_show(name)} to have 2 data_offsets, got {len(offsets)}")
        entries[name] = (dtype, shape, (offsets[0], offsets[1]))
    return metadata, entries


def _usizes(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _Refused(f"expected {what} to be a list of integers, got {_kind(value)}")
    for item in value:
        if type(item) is not int:  # bool and the floats of _NotUsize are refused
            raise _Refused(f"expected {what} to hold integers from 0 to 2**64 - 1, got {_kind(item)}")
    return tuple(value)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return _show(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value if type(value) is int else float(value))
    return "an object" if isinstance(value, dict) else "a list"
