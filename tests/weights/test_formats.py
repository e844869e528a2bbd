"""Weight files: the torch-only safetensors fallback held to the library, and ``.pt`` archives checked first.

Hypothesis writes the files: headers with tensors of every dtype name the library knows (and some it
does not), shapes up to 2**64 - 1, offsets right and wrong, metadata of every JSON type, numbers and
strings serde_json refuses, nesting near its limit, wrong length prefixes, truncations and appended
bytes, random byte edits and plain garbage. Every file the library refuses, the fallback refuses (it
may be stricter); where both accept, they give equal tensors.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from tiniest.errors import ArtifactError
from tiniest.weights import TiniestWeights
from tiniest.weights.artifact import to_safetensors
from tiniest.weights.formats import read_state_dict, read_weights
from tiniest.weights.safetensors_fallback import MAX_HEADER_BYTES, read_tensors
from tiniest.weights.torch_files import MAX_PICKLE_BYTES

# every dtype name of the library's format, with its size in bits; the reader (like safetensors.torch)
# refuses those torch cannot load: F4, F6_*, F8_E8M0
FORMAT_BITS = {
    **{name: 64 for name in ("F64", "I64", "U64", "C64")},
    **{name: 32 for name in ("F32", "I32", "U32")},
    **{name: 16 for name in ("F16", "BF16", "I16", "U16")},
    **{name: 8 for name in ("I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0")},
    **{"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6},
}
ORIGIN = "test.safetensors"
EXAMPLES = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Raw(str):
    """JSON text written as is: numbers and strings Python's json would never write."""


class Pairs(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs, so that a key may repeat."""


def dump(value: Any, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{dump(v, ascii_only)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(item, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def library(data: bytes) -> dict[str, torch.Tensor] | None:
    try:
        return safetensors.torch.load(data)
    except Exception:  # the library refuses with SafetensorError, and some files with KeyError or torch's errors
        return None


def own(data: bytes) -> dict[str, torch.Tensor] | None:
    try:
        return read_tensors(data, origin=ORIGIN)
    except ArtifactError as error:  # anything else fails the test
        message = str(error)
        assert message.startswith(f"{ORIGIN}: expected a valid safetensors file: ") and "\n" not in message, message
        return None


def same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    return ours.keys() == theirs.keys() and all(
        ours[k].dtype == theirs[k].dtype
        and ours[k].shape == theirs[k].shape
        and torch.equal(ours[k].reshape(-1).view(torch.uint8), theirs[k].reshape(-1).view(torch.uint8))
        for k in ours
    )


def check_agreement(data: bytes) -> None:
    theirs, ours = library(data), own(data)
    if ours is not None:
        assert theirs is not None, "the fallback accepted a file the library refuses"
        assert same_tensors(ours, theirs)


def file_bytes(header_text: str, data: bytes, *, length: int | None = None) -> bytes:
    encoded = header_text.encode("utf-8")
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + data


# JSON values that are valid somewhere and wrong elsewhere, as serde_json reads them
ODD_NUMBERS = [Raw(text) for text in ("-0", "0.0", "1e0", "-1", "1e400", "-1e400", "1e-400", "1" + "0" * 320)]
ODD_VALUES = [
    *ODD_NUMBERS,
    Raw(str(2**64)),
    Raw(str(2**64 - 1)),
    True,
    None,
    "1",
    [1],
    Pairs([("k", 1)]),
    Raw('"\\ud800"'),
    Raw('"\\udc00x"'),
    Raw('"\\ud83d\\ude00"'),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("[" * 126 + "]" * 126),
    Raw("[" * 125 + "]" * 125),
    Raw("[1,]"),
]
# valid JSON to Python, in or out of serde_json's reach
SERDE_READS = [Raw(text) for text in ("1e-400", "-0", "[" * 125 + "]" * 125, '"\\ud83d\\ude00"', str(2**64), "9" * 300)]
SERDE_REFUSES = [Raw(text) for text in ("1e400", "-1e400", "9" * 310, '"\\ud800"', '"\\udc00x"', "[" * 126 + "]" * 126)]
names = st.text(alphabet='ab_.\u00e9\u2603"\\\n\x00', max_size=3)
dims = st.integers(0, 3) | st.sampled_from([2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1])
strings = names | st.sampled_from([Raw('"\\ud800"'), Raw('"\\udfff"'), Raw('"\\ud83d\\ude00"'), Raw('"\\u00e9"')])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False) | names,
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(names, inner), max_size=3).map(Pairs),
    max_leaves=6,
)


def odd_values() -> st.SearchStrategy[Any]:
    """A fresh copy of one of ODD_VALUES: the twists edit what they are given, and a shared list would carry
    one example's edits into the next (hypothesis then sees the same choices build other data)."""
    return st.sampled_from(ODD_VALUES).map(copy.deepcopy)


LOADABLE = [name for name in FORMAT_BITS if name not in ("F4", "F6_E2M3", "F6_E3M2", "F8_E8M0")]


# one change each, to a file otherwise valid: where the reader departs from the library (three
# refusals of its own), and where it must follow serde_json's reading of numbers and strings exactly
TWISTS = [
    None,
    "repeated tensor",
    "repeated key",
    "array entry",
    "object dtype",
    "number spelling",
    "odd unknown field",
    "empty tensor of huge dims",
]


def twist(draw: st.DrawFn, kind: str | None, entries: list[tuple[str, Any]], end: int) -> None:
    tensors = [i for i, (name, info) in enumerate(entries) if name != "__metadata__" and isinstance(info, Pairs)]
    if kind == "empty tensor of huge dims":
        shape = draw(st.lists(st.sampled_from([1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]), min_size=1, max_size=3))
        shape.insert(draw(st.integers(0, len(shape))), 0)
        info = Pairs([("dtype", draw(st.sampled_from(LOADABLE))), ("shape", shape), ("data_offsets", [end, end])])
        entries.append(("huge", info))
    if not tensors or kind is None:
        return
    index = draw(st.sampled_from(tensors))
    name, info = entries[index]
    if kind == "repeated tensor":
        entries.insert(draw(st.integers(0, len(entries))), (name, info))
    elif kind == "repeated key":
        info.extend([("x", 1), ("x", 2)])
    elif kind == "array entry":
        entries[index] = (name, [value for _, value in info])
    elif kind == "object dtype":
        entries[index] = (name, Pairs([(k, {v: None} if k == "dtype" and isinstance(v, str) else v) for k, v in info]))
    elif kind == "odd unknown field":
        info.insert(draw(st.integers(0, len(info))), ("x", draw(st.sampled_from(SERDE_READS + SERDE_REFUSES))))
    elif kind == "number spelling":  # serde_json reads each of these as a float, never as a size
        lists = [value for key, value in info if key in ("shape", "data_offsets") and isinstance(value, list)]
        lists = [value for value in lists if value and all(type(number) is int for number in value)]
        if lists:
            numbers = draw(st.sampled_from(lists))
            zeros = [at for at, number in enumerate(numbers) if number == 0]  # "-0" is the likeliest slip
            at = draw(st.sampled_from(zeros) if zeros and draw(st.booleans()) else st.integers(0, len(numbers) - 1))
            number = numbers[at]
            spellings = [f"-{number}", f"{number}.0", f"{number}e0", f"{number}0e-1"]
            numbers[at] = Raw(draw(st.sampled_from(spellings[:1] if draw(st.booleans()) else spellings)))


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A file laid out by the format's rules, bent in a few random places (or none), and given one twist."""
    roughness = draw(st.sampled_from([0, 0, 0.3, 1]))  # none, about one, several bends

    def bent(chance: float) -> bool:
        return draw(st.floats(0, 1)) < chance * roughness

    entries: list[tuple[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name in draw(st.lists(names, max_size=4, unique=True)):
        dtype = draw(st.sampled_from([*FORMAT_BITS, "u8", "X8", ""] if bent(1) else LOADABLE))
        shape = draw(st.lists(dims if bent(1) else st.integers(0, 3), max_size=3))
        count = 1
        for dim in shape:
            count *= dim
        size = count * FORMAT_BITS.get(dtype, 8) // 8
        if size <= 64:
            chunks.append(draw(st.binary(min_size=size, max_size=size)))
        info = Pairs([("dtype", dtype), ("shape", shape), ("data_offsets", [offset, offset + size])])
        offset += size
        if bent(0.15):
            field = draw(st.integers(0, 2))
            info[field] = (info[field][0], draw(odd_values()))
        if bent(0.15):
            info[2] = ("data_offsets", [draw(st.integers(0, 70)) for _ in range(draw(st.integers(0, 3)))])
        if draw(st.integers(0, 4)) == 0 or bent(0.1):
            field = draw(names.map(lambda text: "x" + text))
            info.insert(draw(st.integers(0, 3)), (field, draw(json_values | odd_values())))
        if bent(0.1):
            del info[draw(st.integers(0, len(info) - 1))]
        if bent(0.1):
            entries.append((name, draw(odd_values())))
        else:
            entries.append((name, info))
    if draw(st.booleans()):
        metadata: Any = Pairs(draw(st.dictionaries(names, strings, max_size=3)).items())
        if bent(0.2):
            metadata = draw(st.none() | odd_values())
        elif bent(0.2):
            metadata.append((draw(names), draw(json_values)))
        entries.insert(draw(st.integers(0, len(entries))), ("__metadata__", metadata))
    twist(draw, draw(st.sampled_from(TWISTS)), entries, offset)
    entries = draw(st.permutations(entries)) if draw(st.booleans()) else entries
    text = dump(Pairs(entries), ascii_only=draw(st.booleans()))
    text = draw(st.sampled_from(["", " ", "\n\t"])) + text + " " * draw(st.integers(0, 7))
    data = b"".join(chunks)
    if bent(0.1):
        data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=3))
    length = None
    if bent(0.1):
        encoded = len(text.encode())
        length = draw(st.sampled_from([encoded - 1, encoded + 1, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 2**64 - 1, 0]))
    return file_bytes(text, data, length=max(length, 0) if length is not None else None)


@given(headers())
@EXAMPLES
def test_reader_agrees_with_the_library_on_generated_files(data: bytes) -> None:
    check_agreement(data)


@given(headers(), st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=2)), min_size=1, max_size=3))
@EXAMPLES
def test_reader_agrees_with_the_library_on_files_with_random_edits(data: bytes, edits: list[tuple[int, bytes]]) -> None:
    edited = bytearray(data)
    for position, replacement in edits:
        at = 8 + position % max(len(edited) - 8, 1)
        edited[at : at + len(replacement)] = replacement
    check_agreement(bytes(edited))


@given(st.binary(max_size=40), st.binary(max_size=40))
@EXAMPLES
def test_reader_agrees_with_the_library_on_garbage(header: bytes, tail: bytes) -> None:
    check_agreement(struct.pack("<Q", len(header)) + header + tail)
    check_agreement(header + tail)


U8 = '"dtype":"U8","shape":[1],"data_offsets":[0,1]'
EMPTY = '"shape":[0,{}],"data_offsets":[0,0]}}}}'
KNOWN = {
    "empty header": ("{}", b"", True),
    "leading and trailing whitespace": (" \n{}\t\r ", b"", True),
    "no header": ("", b"", False),
    "a byte-order mark": ("\ufeff{}", b"", False),
    "data past the last tensor": ("{}", b"x", False),
    "a gap before the tensor": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"ab", False),
    "tensors listed out of order": (
        '{"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{' + U8 + "}}",
        b"ab",
        True,
    ),
    "two tensors on the same bytes": ('{"a":{' + U8 + '},"b":{' + U8 + "}}", b"a", False),
    "a repeated tensor name (the library keeps the last)": ('{"a":{' + U8 + '},"a":{' + U8 + "}}", b"a", False),
    "a repeated metadata key (the library keeps the last)": ('{"__metadata__":{"k":"a","k":"b"}}', b"", False),
    "a repeated field": ('{"a":{"dtype":"U8",' + U8 + "}}", b"a", False),
    "an unknown field": ('{"a":{' + U8 + ',"x":[1.5,null]}}', b"a", True),
    "null metadata": ('{"__metadata__":null}', b"", True),
    "a number as a metadata value": ('{"__metadata__":{"k":1}}', b"", False),
    "-0 as a dimension": ('{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}', b"", False),
    "true as a dimension": ('{"a":{"dtype":"U8","shape":[true],"data_offsets":[0,1]}}', b"a", False),
    "1e400 in an unknown field": ('{"a":{' + U8 + ',"x":1e400}}', b"a", False),
    "a lone surrogate": ('{"__metadata__":{"k":"\\ud800"}}', b"", False),
    "a surrogate pair": ('{"__metadata__":{"k":"\\ud83d\\ude00"}}', b"", True),
    "nesting 127 deep": ('{"a":{' + U8 + ',"x":' + "[" * 125 + "]" * 125 + "}}", b"a", True),
    "nesting 128 deep": ('{"a":{' + U8 + ',"x":' + "[" * 126 + "]" * 126 + "}}", b"a", False),
    "a size overflowing 64 bits": ('{"a":{"dtype":"U8",' + EMPTY.format("4294967296,4294967296,0"), b"", False),
    "an empty tensor torch can make": ('{"a":{"dtype":"U8",' + EMPTY.format(2**63 - 1), b"", True),
    "an empty tensor torch cannot make": ('{"a":{"dtype":"U8",' + EMPTY.format(2**63), b"", False),
    "a dtype safetensors.torch cannot load": ('{"a":{"dtype":"F8_E8M0",' + U8[12:] + "}}", b"a", False),
    "a lower-case dtype": ('{"a":{"dtype":"u8","shape":[1],"data_offsets":[0,1]}}', b"a", False),
    "a tensor entry as an array": ('{"a":["U8",[1],[0,1]]}', b"a", False),
    "a dtype as an object": ('{"a":{"dtype":{"U8":null},"shape":[1],"data_offsets":[0,1]}}', b"a", False),
}


# what the library and tiniest's own writer produce: the fallback, stricter elsewhere, reads these
MUST_ACCEPT = {
    "empty header", "leading and trailing whitespace", "tensors listed out of order", "a surrogate pair",
    "an empty tensor torch can make",
}  # fmt: skip


@pytest.mark.parametrize("case", list(KNOWN))
def test_known_cases(case: str) -> None:
    """The cases found by probing the library (safetensors 0.8), each with the reader's answer."""
    text, data, accepted = KNOWN[case]
    whole = file_bytes(text, data)
    if case in MUST_ACCEPT:
        assert own(whole) is not None and accepted
    check_agreement(whole)


@pytest.mark.parametrize("length", [MAX_HEADER_BYTES + 1, 2**64 - 1, 100])
def test_header_length_is_checked_before_anything_is_read(length: int) -> None:
    data = struct.pack("<Q", length) + b"{}"
    with pytest.raises(ArtifactError, match=rf"^{ORIGIN}: expected a valid safetensors file: a header of [\d,]+ bytes"):
        read_tensors(data, origin=ORIGIN)


def test_errors_name_the_file_the_tensor_and_what_was_expected() -> None:
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    good = to_safetensors(state, {"k": "v"})
    assert read_weights(good)[1] == {"k": "v"}
    assert torch.equal(read_state_dict(good)["w"], state["w"])
    with pytest.raises(ArtifactError, match=r"^net\.safetensors: expected a valid safetensors file"):
        read_state_dict(good[:-1], origin="net.safetensors")
    bent = good.replace(b'"shape":[2,3]', b'"shape":[3,3]')
    with pytest.raises(ArtifactError, match=r"tensor 'w': its shape needs 36 bytes, its data_offsets span 24"):
        read_tensors(bent, origin="net.safetensors")
    repeated = file_bytes('{"__metadata__":{"k":"a","k":"b"}}', b"")
    with pytest.raises(ArtifactError, match=r"^net\.safetensors: .*a key repeated"):
        read_tensors(repeated, origin="net.safetensors")


def test_the_release_reads_without_the_safetensors_package(release_bytes: bytes, tmp_path: Path) -> None:
    """In a process where ``import safetensors`` fails: the published release, its metadata and its tensors."""
    path = tmp_path / "release.safetensors"
    path.write_bytes(release_bytes)
    code = f"""
import hashlib, sys, torch
sys.modules["safetensors"] = None
from tiniest.weights.formats import read_weights
state, metadata = read_weights(open({str(path)!r}, "rb").read())
assert not any(name.split(".")[0] == "safetensors" for name in sys.modules if sys.modules[name] is not None)
digest = hashlib.sha256()
for name, tensor in sorted(state.items()):
    digest.update(name.encode() + bytes(tensor.contiguous().view(-1).view(torch.uint8).tolist()))
print(len(state), sum(t.numel() for t in state.values()), metadata["source_sha256"], digest.hexdigest())
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    count, parameters, source, digest = run.stdout.split()
    assert source == TiniestWeights.DEFAULT.release.source_sha256
    theirs = safetensors.torch.load(release_bytes)
    expected = hashlib.sha256()
    for name, tensor in sorted(theirs.items()):
        expected.update(name.encode() + bytes(tensor.contiguous().view(-1).view(torch.uint8).tolist()))
    assert digest == expected.hexdigest()
    assert int(count) == len(theirs) and int(parameters) == sum(t.numel() for t in theirs.values())
    assert TiniestWeights.DEFAULT.meta["num_params"] <= int(parameters)


@pytest.mark.parametrize("blank", [b" ", b"\n", b"\t\r\n  "])
def test_a_header_opening_with_json_whitespace_is_still_safetensors(blank: bytes) -> None:
    """JSON allows blanks before the header's ``{``: the library reads such a file, so must we (not torch.load)."""
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    data = to_safetensors(state, {"format": "pt"})
    (length,) = struct.unpack("<Q", data[:8])
    padded = struct.pack("<Q", length + len(blank)) + blank + data[8:]
    assert torch.equal(safetensors.torch.load(padded)["w"], state["w"])  # the library's verdict
    assert torch.equal(read_state_dict(padded)["w"], state["w"])
    assert read_weights(padded)[1] == {"format": "pt"}


# ``.pt`` archives: checked before torch.load, which inflates a record to its declared size first


def _state_dict_pt(tmp_path: Path, state: dict[str, torch.Tensor] | None = None) -> bytes:
    path = tmp_path / "w.pt"
    torch.save(state or {"w": torch.zeros(4, 4)}, path)
    return path.read_bytes()


def _recompressed(data: bytes, *, level: int = 9) -> bytes:
    """The archive with every record deflated: what a hostile file does to hide a large storage."""
    import io
    import zipfile

    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z,
    ):
        for info in source.infolist():
            z.writestr(info.filename, source.read(info))
    return out.getvalue()


def test_a_state_dict_archive_loads(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    loaded = read_state_dict(_state_dict_pt(tmp_path, state))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_deflated_storage_bomb_is_refused_before_torch_load(tmp_path: Path) -> None:
    """A 64 MiB zero storage deflates to ~64 kB; torch.load would allocate it whole (2.3 GB for a 2 MB file)."""
    bomb = _recompressed(_state_dict_pt(tmp_path, {"w": torch.zeros(16 * 2**20)}))
    assert len(bomb) < 2**20
    with pytest.raises(ArtifactError, match=r"^bomb\.pt: record '.*' is compressed; expected stored records"):
        read_state_dict(bomb, origin="bomb.pt")


def test_a_record_declaring_more_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    data = bytearray(_state_dict_pt(tmp_path))
    # the central directory's sizes of the first record (compressed, uncompressed), set past the file's end
    first = bytes(data).find(b"PK\x01\x02")
    struct.pack_into("<II", data, first + 20, 2**31, 2**31)
    with pytest.raises(ArtifactError, match=r"^big\.pt: (record .* declares 2,147,483,648|expected a \.safetensors)"):
        read_state_dict(bytes(data), origin="big.pt")


def test_a_pickle_larger_than_any_state_dicts_is_refused(tmp_path: Path) -> None:
    """Cheap opcodes build objects ~50x their bytes: the pickle record is bounded before unpickling."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"]" * (MAX_PICKLE_BYTES + 1))
    with pytest.raises(ArtifactError, match=r"is a pickle of 4,194,305 bytes; expected at most 4,194,304"):
        read_state_dict(out.getvalue(), origin="lists.pt")


def test_the_legacy_format_and_other_bytes_are_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    for data in (path.read_bytes(), b"not weights at all"):
        with pytest.raises(ArtifactError, match=r"^x: expected a \.safetensors file or a torch zip archive") as caught:
            read_state_dict(data, origin="x")
        assert "\n" not in str(caught.value)


def test_a_training_checkpoint_is_read_through_the_same_archive_check(tmp_path: Path) -> None:
    """``train --resume`` reads checkpoint.pt with load_checkpoint: a deflated bomb is refused there too."""
    from tiniest.weights.run_files import CHECKPOINT_FORMAT, load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "w": torch.zeros(16 * 2**20)}, path)
    assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT
    path.write_bytes(_recompressed(path.read_bytes()))
    with pytest.raises(ArtifactError, match=r"a tiniest training checkpoint \(.*is compressed; expected stored"):
        load_checkpoint(path)
