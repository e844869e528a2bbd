"""CIFAR-10 from where people keep it, decoded once and cached as uint8 tensors.

``load_split(root, split)`` understands three kinds of ``root``:

* an image-folder tree: ``root/<split>/<class>/*.png`` (the layout of Hugging Face's imagefolder
  datasets and of ``../shared/cifar10``); ``root`` may also be the split folder itself;
* the CIFAR-10 "python version" (``cifar-10-batches-py``): ``data_batch_1..5`` are ``train``,
  ``test_batch`` is ``test``. They are pickles; they are read by an unpickler that imports nothing
  (see ``DataOnlyUnpickler``);
* ``hf://owner/name[@revision]``: a Hugging Face dataset repo in the image-folder layout (such as
  ``hf://ego-thales/cifar10``, on which the published weights were trained), fetched with
  ``huggingface_hub.snapshot_download`` (honours ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``).

Decoded splits are cached in ``$TINIEST_CACHE/datasets`` (default ``~/.cache/tiniest``) as
safetensors. The cache key is a hash of the source's absolute path, the split and, for every
file read, its relative name, size and modification time (nanoseconds): stat-ing 10,000 files
costs milliseconds where re-hashing their content would cost a read of the whole dataset on every
run, and any copy, edit, addition or removal changes at least one of these. A changed source
therefore misses the cache and replaces the stale file; writes go through a temporary file and
``os.replace`` so that a crash never leaves a half-written cache (the next load removes the temporary
files of a killed writer: ``tiniest.storage.remove_stale_parts``). A cache file is read whole into
memory, never mapped (truncating a mapped file kills its reader with SIGBUS), read by the safetensors
library (the project's one safetensors reader), and is used only if the sha256 of its tensors, stored in
its metadata (a ``meta`` tensor holding JSON), matches: a truncated, altered or unreadable cache file is
decoded again, never trusted.

The CIFAR pickles are read whole (at most 64 MiB, a batch is 31 MB) and scanned before unpickling
(``pickletools.genops``): only the opcodes and globals CIFAR's batches are written with are accepted, at
most as many as a batch needs (containers counted apart), and every length and memo index they declare
must fit in their bytes. Unpickling then checks the type of every argument the numpy stand-ins get, and
the arrays are checked against CIFAR's layout (rows of 3072 uint8 values, at most 10,000 per batch).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pickle
import pickletools
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import torch

from tiniest import names
from tiniest.classes import CIFAR10_CLASSES
from tiniest.errors import CacheWarning, DatasetError, PreprocessError, UsageError, warn
from tiniest.files import read_regular
from tiniest.storage import HF_PREFIX, cache_dir, remove_stale_parts, save_atomically

__all__ = [
    "IMAGE_SUFFIXES",
    "DataOnlyUnpickler",
    "LabeledImages",
    "Select",
    "hold_out",
    "load_split",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
logger = logging.getLogger(__name__)

CACHE_FORMAT = 4  # 2: EXIF orientation and reduced-scale JPEG decoding; skipped files recorded; 3: sha256;
# 4: read with the safetensors library alone, metadata in a "meta" tensor, sha256 of names, shapes and bytes
# A CIFAR-10 batch: 10,000 rows of 3072 uint8 values, a 31,035,704-byte pickle; anything larger is not one.
CIFAR_ROWS = 10_000
MAX_PICKLE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class LabeledImages:
    """A decoded split: ``images`` ``(N, 3, 32, 32)`` uint8 RGB, ``labels`` ``(N,)`` int64 into ``classes``.

    ``skipped``: ``(file, reason)`` for each unreadable image file left out (``skip_unreadable=True``).
    ``identities``: where each image was read, as ``(st_dev, st_ino, index in the file)``, so that two
    splits can be proved disjoint whatever their folders are called (empty when unknown).
    ``content``: a hash of the names and sizes of the files read (not their folder): equal for a copy.
    ``empty_classes``: class folders that hold no image file (left out of ``classes``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    identities: tuple[tuple[int, int, int], ...] = ()
    content: str = ""
    empty_classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: torch.Tensor) -> LabeledImages:
        """The images at ``indices`` (their identities with them), in that order."""
        identities = tuple(self.identities[i] for i in indices.tolist()) if self.identities else ()
        return replace(self, images=self.images[indices], labels=self.labels[indices], identities=identities)


# Given the labels of every image of a split, listed before any is decoded: the sorted indices of those to decode.
Select = Callable[[torch.Tensor], torch.Tensor]


def load_split(
    root: str | os.PathLike[str],
    split: str = "test",
    *,
    progress: bool = False,
    skip_unreadable: bool = False,
    select: Select | None = None,
    part: str = "selected",
) -> LabeledImages:
    """Split ``split`` of the dataset at ``root`` (see the module docs for what ``root`` may be).

    An image file that cannot be read raises ``tiniest.errors.PreprocessError`` naming it;
    with ``skip_unreadable`` it is left out instead and listed in the result's ``skipped``.
    ``select`` picks, from the labels of the whole split, the images to decode and return (decoding an image
    folder's 50,000 pictures takes minutes where a run may use a few hundred); ``content`` stays the whole split's.
    ``part`` names the selection in the cache, which keeps the last one of each name: two selections from one
    split, used together, take two names.
    """
    chosen = None if select is None else (part, select)
    text = os.fspath(root)
    if text.startswith(HF_PREFIX):
        folder = _hf_split_folder(text[len(HF_PREFIX) :], split)
        return _load_folder(folder, progress=progress, skip_unreadable=skip_unreadable, select=chosen)
    path = Path(text).expanduser()
    if not path.is_dir():
        raise DatasetError(f"expected a dataset folder or {HF_PREFIX}owner/name, got {text!r} (not a folder)")
    if (path / "batches.meta").is_file() or any(
        (path / name).is_file() for batches in CIFAR_BATCHES.values() for name in batches
    ):
        batches = _load_cifar_batches(path, split)  # (a few pickles, read whole: nothing to spare)
        return batches if select is None else batches.take(select(batches.labels))
    if (path / split).is_dir():
        return _load_folder(path / split, progress=progress, skip_unreadable=skip_unreadable, select=chosen)
    if _class_folders(path):
        return _load_folder(path, progress=progress, skip_unreadable=skip_unreadable, select=chosen)
    raise DatasetError(
        f"{text!r}: expected an image-folder dataset (<root>/{split}/<class>/<image>, or <split>/<class>/<image>), "
        f"a cifar-10-batches-py folder, or {HF_PREFIX}owner/name; found no {split!r} folder and no class folders"
    )


def hold_out(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(kept, held_out)`` of a seeded, stratified split: in every class, ``round(fraction * n)`` of
    its ``n`` images are held out (at least one), chosen at random with ``seed``; each set is sorted.

    A class too small to keep one image and hold out one is refused, naming it by its label.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"val_fraction: expected a fraction in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for label in range(int(labels.max()) + 1 if labels.numel() else 0):
        members = (labels == label).nonzero().flatten()
        count = max(1, round(fraction * len(members)))
        if len(members) and count >= len(members):
            raise DatasetError(
                f"val_fraction {fraction}: class {label} has {len(members)} image(s), too few to train on some "
                "and hold out at least one"
            )
        order = members[torch.randperm(len(members), generator=generator)]
        held.append(order[:count])
        kept.append(order[count:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


# --------------------------------------------------------------------------- image folders


def class_name(folder_name: str) -> str:
    """A class folder's name as a class name: Unicode NFC, so that ``café`` typed on macOS (NFD) and elsewhere
    (NFC) is one class, not two that look alike."""
    return unicodedata.normalize("NFC", folder_name)


def _class_folders(folder: Path, *, with_empty: bool = False) -> list[Path]:
    """Subfolders holding at least one image file, sorted by name (their names are the classes).

    ``with_empty``: every visible subfolder, the empty ones included.
    """
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            with os.scandir(child) as entries:
                if with_empty or any(Path(entry.name).suffix.lower() in IMAGE_SUFFIXES for entry in entries):
                    found.append(child)
    return found


def _content_key(stats: Iterable[Sequence[Any]]) -> str:
    """A hash of each file's relative name and size: what a copy of the data keeps, wherever it is put."""
    return hashlib.sha256(json.dumps([[name, size] for name, size, *_ in stats]).encode()).hexdigest()


def _load_folder(
    folder: Path, *, progress: bool, skip_unreadable: bool, select: tuple[str, Select] | None
) -> LabeledImages:
    class_folders = _class_folders(folder)
    if not class_folders:
        raise DatasetError(f"{os.fspath(folder)!r}: expected one subfolder of images per class, found none")
    classes = tuple(sorted({class_name(path.name) for path in class_folders}))
    files: list[tuple[Path, int]] = []
    stats: list[list[Any]] = []
    identities: list[tuple[int, int, int]] = []
    for class_folder in class_folders:
        label = classes.index(class_name(class_folder.name))
        with os.scandir(class_folder) as entries:
            images = sorted(
                (e for e in entries if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES),
                key=lambda e: e.name,
            )
        for entry in images:
            stat = entry.stat()  # follows links: a linked file is the file it names
            files.append((Path(entry.path), label))
            stats.append([f"{class_folder.name}/{entry.name}", stat.st_size, stat.st_mtime_ns])
            identities.append((stat.st_dev, stat.st_ino, 0))
    content = _content_key(stats)  # the whole split's, whatever is selected
    fingerprint: dict[str, Any] = {"kind": "imagefolder", "root": str(folder.resolve())}
    if select is not None:
        fingerprint["split"] = select[0]  # (its own cache file, beside the whole split's)
        chosen = select[1](torch.tensor([label for _, label in files], dtype=torch.int64)).tolist()
        files, stats = [files[i] for i in chosen], [stats[i] for i in chosen]
        identities = [identities[i] for i in chosen]
    fingerprint["files"] = stats
    empty = tuple(class_name(path.name) for path in _class_folders(folder, with_empty=True)
                  if class_name(path.name) not in classes)

    def decode() -> LabeledImages:
        from tiniest.transforms import decode_image

        images, labels, skipped = [], [], []
        for path, label in _progress(files, progress, f"decoding {folder.name}"):
            try:
                images.append(decode_image(path))
            except PreprocessError as error:
                if not skip_unreadable:
                    raise
                skipped.append((os.fspath(path), str(error)))
            else:
                labels.append(label)
        if not images:
            raise DatasetError(f"{os.fspath(folder)!r}: none of its {len(files)} image files could be read")
        return LabeledImages(torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes, tuple(skipped))

    result = _cached(fingerprint, len(files), decode)
    if result.skipped and not skip_unreadable:  # decoded earlier with skip_unreadable: still strict now
        raise PreprocessError(result.skipped[0][1])
    left_out = {file for file, _ in result.skipped}
    kept = tuple(identity for (path, _), identity in zip(files, identities, strict=True)
                 if os.fspath(path) not in left_out)
    return replace(result, identities=kept if len(kept) == len(result) else (), content=content, empty_classes=empty)


def _progress(items: Sequence[Any], enabled: bool, description: str) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    # disable=None: none on a stderr that is no terminal (a log file), which would get a line per update
    bar: Iterable[Any] = tqdm(items, desc=description, unit="img", leave=False, disable=None)
    return bar


# --------------------------------------------------------------------------- cifar-10-batches-py


class _ArrayStub:
    """Stands for a numpy array in a pickle: records its state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.state: tuple[Any, ...] | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError(f"expected a numpy array's state (5 values), got {_kind(state)}")
        self.state = state


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStub:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``: an empty array whose state ``BUILD`` sets."""
    if cls is not _ArrayStub or not isinstance(shape, tuple) or not isinstance(typecode, (bytes, str)):
        raise pickle.UnpicklingError(
            f"expected _reconstruct(ndarray, a shape, a type code), got _reconstruct({_kind(cls)}, {_kind(shape)}, "
            f"{_kind(typecode)})"
        )
    return _ArrayStub()


class _DTypeStub:
    """Stands for a numpy dtype in a pickle: remembers its name (``u1``, ``i8``, ...)."""

    def __init__(self, name: Any, *args: Any) -> None:
        if not (isinstance(name, (str, bytes)) and 0 < len(name) <= 8) or len(args) > 2:
            raise pickle.UnpicklingError(f"expected dtype(a short type name such as 'u1'), got dtype({_kind(name)})")
        self.name = name.decode("latin1") if isinstance(name, bytes) else name
        self.byteorder = "|"

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else None
        if not isinstance(order, (str, bytes)) or len(order) != 1:
            raise pickle.UnpicklingError(f"expected a dtype's state (version, byte order, ...), got {_kind(state)}")
        self.byteorder = order.decode("latin1") if isinstance(order, bytes) else order


def _kind(value: Any) -> str:
    """A short, bounded description of a value found in a pickle, for the messages."""
    if isinstance(value, (int, str, bytes)) and len(repr(value)) <= 40:
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__.lstrip("_")


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing: no class or function named in the pickle is ever looked up.

    The CIFAR batches hold dicts, lists, ints, bytes and numpy arrays. The names a numpy array is
    pickled with (``_reconstruct``, ``ndarray``, ``dtype``, and ``_frombuffer`` from protocol 5 on)
    resolve to inert local stubs that check their arguments' types and only record the raw bytes, shape
    and dtype; every other name is refused. The bytes the stubs make (``_codecs.encode`` of Python 3's
    protocol 2) are counted: together they may not exceed the pickle's own size, as in any real batch.
    """

    def __init__(self, file: IO[bytes], *, budget: int = MAX_PICKLE_BYTES, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.budget = budget
        self.stubs: dict[tuple[str, str], Callable[..., Any]] = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): _ArrayStub,
            ("numpy", "dtype"): _DTypeStub,
            ("numpy.core.numeric", "_frombuffer"): self._from_buffer,
            ("numpy._core.numeric", "_frombuffer"): self._from_buffer,
            ("_codecs", "encode"): self._latin1,
        }

    def find_class(self, module: str, name: str) -> Any:
        stub = self.stubs.get((module, name))
        if stub is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is accepted")
        return stub

    def _spend(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise pickle.UnpicklingError("it makes more bytes than the file holds: expected one array per batch")

    def _from_buffer(self, buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayStub:
        """Protocol 5 writes an array as ``_frombuffer(bytes, dtype, shape, order)``: recorded the same way.

        The buffer must be bytes: an int there made ``bytes(n)`` allocate whatever the file declared.
        """
        if not isinstance(buffer, (bytes, bytearray)):
            raise pickle.UnpicklingError(f"expected bytes for a numpy array's buffer, got {_kind(buffer)}")
        if not isinstance(dtype, _DTypeStub) or not isinstance(shape, tuple) or order not in ("C", "F"):
            raise pickle.UnpicklingError(
                f"expected _frombuffer(bytes, dtype, shape, 'C' or 'F'), got a {_kind(dtype)}, {_kind(shape)}, "
                f"{_kind(order)}"
            )
        array = _ArrayStub()
        array.state = (1, shape, dtype, order == "F", buffer)  # the buffer itself, not a copy
        return array

    def _latin1(self, text: Any, encoding: Any = "latin1") -> bytes:
        """Python 3 pickles bytes at protocol 2 as ``_codecs.encode(text, "latin1")``: only that, nothing else."""
        if not isinstance(text, str) or encoding != "latin1":
            raise pickle.UnpicklingError(
                f"expected _codecs.encode(str, 'latin1'), got ({_kind(text)}, {_kind(encoding)})"
            )
        self._spend(len(text))
        return text.encode("latin1")


_DTYPES = {"u1": torch.uint8, "i1": torch.int8, "i2": torch.int16, "i4": torch.int32, "i8": torch.int64}


def _to_tensor(value: Any, *, what: str) -> torch.Tensor:
    """A recorded numpy array (or a list of ints) as a tensor, checked against its bytes before anything is built."""
    if isinstance(value, list) and all(isinstance(v, int) and 0 <= v < 2**31 for v in value):
        return torch.tensor(value, dtype=torch.int64)
    if not isinstance(value, _ArrayStub) or value.state is None or len(value.state) != 5:
        raise DatasetError(
            f"{what}: expected a numpy array or a list of ints (0 to 2**31 - 1), got {type(value).__name__}"
        )
    _, shape, dtype, fortran, raw = value.state
    if not isinstance(dtype, _DTypeStub) or dtype.name not in _DTYPES or fortran:
        raise DatasetError(f"{what}: expected a C-ordered integer array, got dtype {getattr(dtype, 'name', dtype)!r}")
    if dtype.byteorder == ">" or not isinstance(raw, (bytes, bytearray, str)):
        raise DatasetError(f"{what}: expected little-endian raw bytes, got byte order {dtype.byteorder!r}")
    if not (isinstance(shape, tuple) and len(shape) <= 4 and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise DatasetError(f"{what}: expected a shape of at most 4 non-negative ints, got {shape!r}")
    itemsize = _DTYPES[dtype.name].itemsize
    size = len(raw)  # a str's latin1 encoding has one byte per character
    if size != math.prod(shape) * itemsize:
        raise DatasetError(f"{what}: {size} bytes do not fill the shape {shape} of {itemsize}-byte values")
    data = bytearray(raw.encode("latin1") if isinstance(raw, str) else raw)
    kind = _DTYPES[dtype.name]
    return (torch.frombuffer(data, dtype=kind) if data else torch.empty(0, dtype=kind)).reshape(shape)


# The opcodes CIFAR-10's batches are written with, by Python 2's cPickle (protocol 2) and Python 3's pickle
# (protocols 2 to 5): nothing else is unpickled. Sets, frozensets, persistent ids, NEWOBJ, extension codes,
# the text protocols 0 and 1 are refused before the unpickler runs.
_SCALARS = {"NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1"}
_DATA = {"SHORT_BINSTRING", "BINSTRING", "SHORT_BINUNICODE", "BINUNICODE", "SHORT_BINBYTES", "BINBYTES",
         "BINBYTES8", "BYTEARRAY8"}
_CONTAINERS = {"EMPTY_DICT", "EMPTY_LIST", "MARK"}  # the only opcodes that open a container that grows
_STRUCTURE = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "APPENDS", "APPEND", "SETITEMS", "SETITEM", "GLOBAL",
              "STACK_GLOBAL", "REDUCE", "BUILD", "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET",
              "PROTO", "FRAME", "STOP"}
_CIFAR_OPCODES = _SCALARS | _DATA | _CONTAINERS | _STRUCTURE
# A batch with labels and file names, 10,000 each, pickled at protocol 2 by Python 3 (the most verbose form,
# each name a _codecs.encode call) takes 90,152 opcodes and 23 containers (dicts, lists, MARKs).
MAX_PICKLE_OPCODES = 10 * CIFAR_ROWS + 1000
MAX_PICKLE_CONTAINERS = 256
_GLOBALS = {
    "numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct", "numpy ndarray", "numpy dtype",
    "numpy.core.numeric _frombuffer", "numpy._core.numeric _frombuffer", "_codecs encode",
}


def _check_pickle(data: bytes) -> None:
    """Refuse, before unpickling, a pickle that is not made of what a CIFAR batch is made of.

    The C unpickler allocates a declared length before reading it (a 116-byte file asks for 2 GB) and
    grows its memo to any index it is given: every length must fit in the bytes that follow
    (``pickletools.genops`` checks that as it reads) and every memo index in the opcodes seen so far.
    Cheap opcodes amplify: 4 MiB of EMPTY_SET took 1.17 GB. So only the opcodes of CIFAR's batches are
    accepted (``_CIFAR_OPCODES``), and at most as many as a batch needs, containers counted apart.
    """
    memo = {"BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET"}
    containers = 0
    for count, (opcode, arg, _) in enumerate(pickletools.genops(io.BytesIO(data)), start=1):
        name = opcode.name
        if name not in _CIFAR_OPCODES:
            raise pickle.UnpicklingError(
                f"expected only the opcodes of a CIFAR batch (dicts, lists, tuples, ints, bytes, numpy arrays), "
                f"got {name} at opcode {count}"
            )
        if count > MAX_PICKLE_OPCODES:
            raise pickle.UnpicklingError(f"expected at most {MAX_PICKLE_OPCODES:,} opcodes (a CIFAR batch), got more")
        containers += name in _CONTAINERS
        if containers > MAX_PICKLE_CONTAINERS:
            raise pickle.UnpicklingError(
                f"expected at most {MAX_PICKLE_CONTAINERS} dicts, lists and marks (a CIFAR batch has a few dozen), "
                "got more"
            )
        number = arg if isinstance(arg, int) else 0
        if name in memo and not 0 <= number <= count:
            raise pickle.UnpicklingError(f"memo index {arg} after {count} opcodes")
        if name == "FRAME" and number > len(data):
            raise pickle.UnpicklingError(f"a frame of {arg} bytes in a file of {len(data)}")
        if name == "PROTO" and not 2 <= number <= 5:
            raise pickle.UnpicklingError(f"expected pickle protocol 2 to 5, got protocol {arg}")
        if name == "GLOBAL" and arg not in _GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {str(arg).replace(' ', '.')}: only plain data is accepted")


def _unpickle(path: Path) -> dict[str, Any]:
    name = os.fspath(path)
    try:
        data = read_regular(path, MAX_PICKLE_BYTES)
    except OSError as error:
        raise DatasetError(f"cannot read {name!r}, expected a CIFAR-10 python batch: {error}") from None
    try:
        _check_pickle(data)
        obj = DataOnlyUnpickler(io.BytesIO(data), budget=len(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
        message = " ".join(str(error).split())  # one line
        raise DatasetError(f"{name!r}: expected a CIFAR-10 python batch (plain-data pickle): {message}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{name!r}: expected a dict, got {type(obj).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def _cifar_classes(folder: Path) -> tuple[str, ...]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASSES
    label_names = _unpickle(meta).get("label_names")
    if not isinstance(label_names, list) or not all(isinstance(n, (bytes, str)) for n in label_names):
        raise DatasetError(f"{os.fspath(meta)!r}: expected 'label_names', a list of strings")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in label_names)


def _load_cifar_batches(folder: Path, split: str) -> LabeledImages:
    if split not in CIFAR_BATCHES:
        raise DatasetError(f"cifar-10-batches-py has splits {sorted(CIFAR_BATCHES)}, got {split!r}")
    paths = [folder / name for name in CIFAR_BATCHES[split]]
    missing = [p.name for p in paths if not p.exists()]  # a FIFO or folder in their place: refused when read
    if missing:
        raise DatasetError(f"{os.fspath(folder)!r}: split {split!r} needs {', '.join(missing)}, which is missing")
    sources = [*paths, folder / "batches.meta"] if (folder / "batches.meta").is_file() else paths
    stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sources]
    batches = [p.stat() for p in paths]
    fingerprint = {"kind": "cifar-batches", "root": str(folder.resolve()), "split": split, "files": stats}

    def decode() -> LabeledImages:
        classes = _cifar_classes(folder)
        images, labels = [], []
        for path in paths:
            batch = _unpickle(path)
            if "data" not in batch or "labels" not in batch:
                raise DatasetError(f"{os.fspath(path)!r}: expected keys 'data' and 'labels', got {sorted(batch)}")
            data = _to_tensor(batch["data"], what=f"{path.name} data")
            label = _to_tensor(batch["labels"], what=f"{path.name} labels").to(torch.int64).reshape(-1)
            if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3 * 32 * 32:
                raise DatasetError(
                    f"{path.name} data: expected uint8 rows of 3072 values, got {data.dtype} {tuple(data.shape)}"
                )
            if data.shape[0] > CIFAR_ROWS:
                raise DatasetError(f"{path.name} data: expected at most {CIFAR_ROWS} rows, got {data.shape[0]}")
            if label.shape[0] != data.shape[0]:
                raise DatasetError(f"{path.name}: {data.shape[0]} images but {label.shape[0]} labels")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(label)
        label_tensor = torch.cat(labels)
        if label_tensor.numel() and (int(label_tensor.min()) < 0 or int(label_tensor.max()) >= len(classes)):
            raise DatasetError(f"{os.fspath(folder)!r}: labels outside 0..{len(classes) - 1}")
        return LabeledImages(torch.cat(images), label_tensor, classes)

    result = _cached(fingerprint, CIFAR_ROWS * len(paths), decode)
    rows = [(stat.st_dev, stat.st_ino, row) for stat in batches for row in range(CIFAR_ROWS)]
    return replace(result, identities=tuple(rows) if len(rows) == len(result) else (), content=_content_key(stats))


# --------------------------------------------------------------------------- Hugging Face


def _hf_split_folder(spec: str, split: str) -> Path:
    """Download (or find in the HF cache) the ``split`` folder of a dataset repo; return its local path."""
    repo_id, at, revision = spec.partition("@")
    try:  # the revision names a file in huggingface_hub's cache: '..' would write outside it
        names.hf_repo_id(repo_id, "repo id")
        if at:
            names.git_ref(revision, "revision")
    except UsageError as error:
        raise DatasetError(f"expected {HF_PREFIX}owner/name[@revision], got {HF_PREFIX + spec!r}: {error}") from None
    from huggingface_hub import snapshot_download

    snapshot = Path(
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision or None,
            allow_patterns=[f"{split}/*", f"data/{split}/*"],
        )
    )
    for candidate in (snapshot / split, snapshot / "data" / split):
        if candidate.is_dir():
            return candidate
    raise DatasetError(
        f"{HF_PREFIX}{spec}: expected a {split!r} folder of class subfolders in the dataset repo, found none"
    )


# --------------------------------------------------------------------------- cache


def _cached(fingerprint: dict[str, Any], most_images: int, decode: Callable[[], LabeledImages]) -> LabeledImages:
    """``decode()``'s result, from the cache when ``fingerprint`` matches, else decoded and stored.

    A cache file is read whole into memory, never mapped (a file truncated under a mapping kills the
    reader with SIGBUS), and only used when its size is plausible for ``most_images`` images, its
    sha256 (stored in its metadata) matches and its tensors fit: anything else is decoded again.
    """
    from safetensors.torch import save

    fingerprint = {"format": CACHE_FORMAT, **fingerprint}
    source = json.dumps([fingerprint["kind"], fingerprint["root"], fingerprint.get("split")])
    prefix = hashlib.sha256(source.encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    folder = cache_dir() / "datasets"
    target = folder / f"{prefix}-{key[:16]}.safetensors"
    remove_stale_parts(folder)  # of any source's cache file: a changed source writes under another name
    cached = _read_cache(target, key, most_images)
    if cached is not None:
        return cached
    result = decode()
    tensors = {"images": result.images.contiguous(), "labels": result.labels.contiguous()}
    metadata = {
        "key": key,
        "classes": list(result.classes),
        "skipped": [list(entry) for entry in result.skipped],
        "root": fingerprint["root"],
        "sha256": _tensors_sha256(tensors),
    }
    meta = torch.frombuffer(bytearray(json.dumps(metadata).encode()), dtype=torch.uint8)
    data = save({**tensors, "meta": meta})
    try:
        save_atomically(target, data)
        for stale in folder.glob(f"{prefix}-*.safetensors"):
            if stale != target:
                stale.unlink(missing_ok=True)
    except OSError as error:  # a read-only or full cache costs speed, not correctness
        warn(f"could not write the dataset cache {os.fspath(target)!r}: {error}", CacheWarning)
    return result


_HASH_CHUNK = 4 * 2**20


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The sha256 of the tensors' names, dtypes, shapes and bytes, in name order, a few MiB at a time.

    A chunk is copied into a ``bytearray`` viewed as a tensor and hashed there: no numpy (not a core
    dependency), no raw pointers, and no second copy of a split (154 MB for CIFAR-10's train split).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([[name, str(t.dtype), list(t.shape)] for name, t in sorted(tensors.items())]).encode())
    buffer = bytearray(_HASH_CHUNK)
    window = torch.frombuffer(buffer, dtype=torch.uint8)
    for _, tensor in sorted(tensors.items()):
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        for start in range(0, flat.numel(), _HASH_CHUNK):
            chunk = flat[start : start + _HASH_CHUNK]
            window[: chunk.numel()].copy_(chunk)
            digest.update(memoryview(buffer)[: chunk.numel()])
    return digest.hexdigest()


def _read_cache(target: Path, key: str, most_images: int) -> LabeledImages | None:
    """The cache file ``target`` if it is whole and ours (``key``, sha256, shapes), else ``None``.

    Read with the safetensors library from bytes read whole (never mapped: a file truncated under a mapping
    kills its reader with SIGBUS); its ``meta`` tensor (JSON) holds the key, the classes and the sha256.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    limit = most_images * (3 * 32 * 32 + 8 + 4096) + 2**20  # pixels, a label and a skipped file's reason each
    try:
        tensors = load(read_regular(target, limit))
        images, labels, meta_bytes = tensors["images"], tensors["labels"], tensors["meta"]
        if meta_bytes.dtype != torch.uint8 or meta_bytes.dim() != 1:
            raise ValueError(f"a meta tensor of {meta_bytes.dtype} {tuple(meta_bytes.shape)}, expected uint8 JSON")
        meta = json.loads(bytes(meta_bytes.tolist()))
        if not isinstance(meta, dict):
            raise ValueError("a meta tensor that is not a JSON object")
        digest = _tensors_sha256({"images": images, "labels": labels})
        if meta.get("key") != key or meta.get("sha256") != digest:
            raise ValueError("not the file written for this source, or altered since")
        classes = tuple(str(name) for name in meta["classes"])
        skipped = tuple((str(f), str(r)) for f, r in meta.get("skipped", []))
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 32, 32) or labels.shape != images.shape[:1]:
            raise ValueError(f"tensors of shapes {tuple(images.shape)} and {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(f"labels outside 0..{len(classes) - 1}")
    except FileNotFoundError:
        return None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as error:  # decoded again
        logger.info("dataset cache %s not used: %s", target, error)
        return None
    return LabeledImages(images, labels, classes, skipped)
