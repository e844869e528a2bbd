"""Datasets: image folders, cifar-10-batches-py (never executing pickles), Hugging Face repos, and the cache."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from tests.loopback import LoopbackServer
from tiniest import data as data_module
from tiniest.data import load_split
from tiniest.errors import DatasetError, PreprocessError

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("cat", "dog", "ship")


def make_image_folder(split_dir: Path, per_class: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """``split_dir/<class>/<n>.png`` with random 32x32 RGB pixels; returns {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in CLASSES:
        (split_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(split_dir / name / f"{i:03d}.png")
            written[f"{name}/{i:03d}.png"] = pixels
    return written


def as_chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1)


def cache_files() -> list[Path]:
    return sorted((Path(os.environ["TINIEST_CACHE"]) / "datasets").glob("*"))


# --------------------------------------------------------------------------- image folders


def test_image_folder_is_read_in_class_order_with_exact_pixels(tmp_path: Path) -> None:
    written = make_image_folder(tmp_path / "cifar" / "test")
    make_image_folder(tmp_path / "cifar" / "train", per_class=1, seed=1)
    split = load_split(tmp_path / "cifar", "test")
    assert split.classes == CLASSES
    assert split.images.dtype == torch.uint8 and split.images.shape == (9, 3, 32, 32)
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for index, key in enumerate(sorted(written)):
        assert torch.equal(split.images[index], as_chw(written[key]))
    assert len(load_split(tmp_path / "cifar", "train")) == 3
    # The split folder itself is accepted too.
    assert torch.equal(load_split(tmp_path / "cifar" / "test").images, split.images)


def test_image_folder_converts_gray_and_resizes_other_sizes(tmp_path: Path) -> None:
    (tmp_path / "test" / "cat").mkdir(parents=True)
    Image.new("L", (32, 32), 77).save(tmp_path / "test" / "cat" / "gray.png")
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "test" / "cat" / "big.png")
    split = load_split(tmp_path, "test")
    assert split.images.shape == (2, 3, 32, 32)
    assert split.images[0].flatten().tolist() == [10] * 1024 + [200] * 1024 + [30] * 1024  # big.png sorts first
    assert bool((split.images[1] == 77).all())


def test_second_load_reads_the_cache_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_folder(tmp_path / "test")
    first = load_split(tmp_path, "test")
    assert len(cache_files()) == 1

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("decoded again although the source did not change")

    monkeypatch.setattr("tiniest.transforms.decode_image", refuse)
    second = load_split(tmp_path, "test")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == first.classes


def test_changed_source_invalidates_the_cache(tmp_path: Path) -> None:
    split_dir = tmp_path / "test"
    make_image_folder(split_dir)
    before = load_split(tmp_path, "test")

    # Same name, new pixels (a different size and mtime).
    new_pixels = np.full((32, 32, 3), 7, dtype=np.uint8)
    Image.fromarray(new_pixels).save(split_dir / "cat" / "001.png")
    os.utime(split_dir / "cat" / "001.png", ns=(1, 1))
    changed = load_split(tmp_path, "test")
    assert torch.equal(changed.images[1], as_chw(new_pixels))
    assert not torch.equal(changed.images[1], before.images[1])

    Image.fromarray(new_pixels).save(split_dir / "dog" / "extra.png")  # added
    assert len(load_split(tmp_path, "test")) == 10
    (split_dir / "ship" / "000.png").unlink()  # removed
    assert len(load_split(tmp_path, "test")) == 9
    assert len(cache_files()) == 1, "stale cache files of the same source are removed"


def test_corrupt_cache_file_is_decoded_again_and_replaced(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "test")
    expected = load_split(tmp_path, "test")
    (cache,) = cache_files()
    cache.write_bytes(cache.read_bytes()[:1000])
    again = load_split(tmp_path, "test")
    assert torch.equal(again.images, expected.images)
    (rewritten,) = cache_files()
    assert rewritten.stat().st_size > 1000


def test_unreadable_image_fails_clearly_and_leaves_no_cache(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "test")
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PreprocessError, match=r"cannot read image file .*broken\.png"):
        load_split(tmp_path, "test")
    assert cache_files() == []


def test_unreadable_images_can_be_skipped_and_listed(tmp_path: Path) -> None:
    written = make_image_folder(tmp_path / "test")
    broken = tmp_path / "test" / "dog" / "broken.png"
    broken.write_bytes(b"not a png")
    (tmp_path / "test" / "dog" / "empty.jpg").write_bytes(b"")
    split = load_split(tmp_path, "test", skip_unreadable=True)
    assert len(split) == 9 and split.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for index, key in enumerate(sorted(written)):
        assert torch.equal(split.images[index], as_chw(written[key]))
    assert [Path(file).name for file, _ in split.skipped] == ["broken.png", "empty.jpg"]
    assert all("cannot read image file" in reason and file in reason for file, reason in split.skipped)
    cached = load_split(tmp_path, "test", skip_unreadable=True)
    assert cached.skipped == split.skipped, "the cache remembers what was skipped"
    with pytest.raises(PreprocessError, match=r"cannot read image file .*broken\.png"):
        load_split(tmp_path, "test")  # the default stays strict, cache or not
    for path in (tmp_path / "test").rglob("*.png"):
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match="none of its 11 image files could be read"):
        load_split(tmp_path, "test", skip_unreadable=True)


@pytest.mark.parametrize(
    ("layout", "message"),
    [("missing", "not a folder"), ("empty", "found no 'test' folder and no class folders")],
)
def test_unknown_layouts_are_rejected(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout == "empty":
        (root / "notes").mkdir(parents=True)
        (root / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=message):
        load_split(root, "test")


# --------------------------------------------------------------------------- cifar-10-batches-py


def python2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote CIFAR-10 (protocol 2, str as BINSTRING, numpy.core names)."""

    def string(value: bytes) -> bytes:
        return b"U" + bytes([len(value)]) + value if len(value) < 256 else b"T" + struct.pack("<I", len(value)) + value

    def small(value: int) -> bytes:
        return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\n" + small(0) + b"\x85" + string(b"b") + b"\x87R"
    )
    dtype = b"cnumpy\ndtype\n" + string(b"u1") + small(0) + small(1) + b"\x87R"
    dtype += b"(" + small(3) + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + small(0) + b"tb"
    shape = small(data.shape[0]) + small(data.shape[1]) + b"\x86"
    state = b"(" + small(1) + shape + dtype + b"\x89" + string(data.tobytes()) + b"tb"
    items = string(b"batch_label") + string(b"testing batch 1 of 1")
    items += string(b"data") + array + state
    items += string(b"labels") + b"](" + b"".join(small(v) for v in labels) + b"e"
    return b"\x80\x02}(" + items + b"u."


def make_cifar_batches(folder: Path, per_batch: int = 4, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """A small cifar-10-batches-py: test_batch in Python 2's format, data batches from Python 3's pickle."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    batches = {}
    for name in ["test_batch", *(f"data_batch_{i}" for i in range(1, 6))]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batches[name] = (data, labels)
        if name == "test_batch":
            payload = python2_pickle(data, labels)
        else:
            batch = {b"batch_label": name.encode(), b"data": data, b"labels": labels}
            payload = pickle.dumps(batch, protocol=protocol)
        (folder / name).write_bytes(payload)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def test_cifar_python_batches_are_read_as_plain_data(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    batches = make_cifar_batches(folder)
    test = load_split(folder, "test")
    data, labels = batches["test_batch"]
    assert test.classes[0] == "airplane" and test.classes[9] == "truck"
    assert torch.equal(test.images, torch.from_numpy(data).reshape(-1, 3, 32, 32))
    assert test.labels.tolist() == labels
    train = load_split(folder, "train")
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(expected).reshape(-1, 3, 32, 32))
    assert train.labels.tolist() == [label for i in range(1, 6) for label in batches[f"data_batch_{i}"][1]]
    with pytest.raises(DatasetError, match=r"splits \['test', 'train'\], got 'valid'"):
        load_split(folder, "valid")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_cifar_batches_written_by_any_pickle_protocol_are_read(tmp_path: Path, protocol: int) -> None:
    """Protocol 5 (Python 3.8's default for numpy) writes arrays as ``numpy._core.numeric._frombuffer``."""
    folder = tmp_path / "cifar-10-batches-py"
    batches = make_cifar_batches(folder, protocol=protocol)
    if protocol == 5:
        assert b"_frombuffer" in (folder / "data_batch_1").read_bytes(), "the test exercises the protocol 5 form"
    train = load_split(folder, "train")
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(train.images, torch.from_numpy(expected).reshape(-1, 3, 32, 32))
    assert train.classes[9] == "truck"
    fortran = np.asfortranarray(np.zeros((4, 3072), np.uint8))  # refused, with the true reason
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": fortran, b"labels": [0] * 4}, protocol=protocol))
    with pytest.raises(DatasetError, match="expected a C-ordered integer array"):
        load_split(folder, "train")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_pickles_that_name_code_are_refused_without_running_it(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing to load (posix|os|nt)\.system"):
        load_split(folder, "test")
    assert not marker.exists()
    assert cache_files() == []
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": [[1, 2]], b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match="expected a numpy array or a list of ints"):
        load_split(folder, "test")


def test_data_only_unpickler_refuses_numpy_functions_beyond_arrays() -> None:
    payload = pickle.dumps(np.add, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data_module.DataOnlyUnpickler(__import__("io").BytesIO(payload)).load()


# --------------------------------------------------------------------------- Hugging Face (loopback Hub)


def serve_dataset_repo(server: LoopbackServer, repo_id: str, files: dict[str, bytes]) -> str:
    """Answer the routes huggingface_hub's ``snapshot_download`` uses for a dataset repo; return the commit."""
    commit = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
    info = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in files], "private": False}
    server.serve(f"/api/datasets/{repo_id}/revision/main", json.dumps(info).encode())
    tree = [
        {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
        for name, body in files.items()
    ]
    server.serve(f"/api/datasets/{repo_id}/tree/{commit}", json.dumps(tree).encode())
    for name, body in files.items():
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(body).hexdigest()}"'}
        server.serve(f"/datasets/{repo_id}/resolve/{commit}/{name}", body, headers=headers)
    return commit


@pytest.mark.slow
def test_hugging_face_dataset_repo_through_a_loopback_hub(tmp_path: Path, server: LoopbackServer) -> None:
    local = tmp_path / "repo"
    written = make_image_folder(local / "test", per_class=2)
    make_image_folder(local / "train", per_class=1, seed=5)
    files = {path.relative_to(local).as_posix(): path.read_bytes() for path in sorted(local.rglob("*.png"))}
    files["README.md"] = b"# tiny cifar\n"
    serve_dataset_repo(server, "someone/tiny-cifar", files)
    script = (
        "import json, sys; from tiniest.data import load_split\n"
        "split = load_split('hf://someone/tiny-cifar', 'test')\n"
        "record = {'classes': split.classes, 'labels': split.labels.tolist(), 'images': split.images.tolist()}\n"
        "json.dump(record, sys.stdout)\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert tuple(result["classes"]) == CLASSES
    assert result["labels"] == [0, 0, 1, 1, 2, 2]
    for index, key in enumerate(sorted(written)):
        assert torch.equal(torch.tensor(result["images"][index], dtype=torch.uint8), as_chw(written[key]))
    requested = server.paths_requested()
    assert any(p.endswith("/test/cat/000.png") for p in requested)
    assert not any("/train/" in p for p in requested), "only the requested split is downloaded"

    # A second, offline run finds the snapshot in the HF cache and the decoded split in ours.
    offline = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "HF_HUB_OFFLINE": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == result


def test_bad_hugging_face_spec_is_rejected() -> None:
    with pytest.raises(DatasetError, match=r"expected hf://owner/name\[@revision\]"):
        load_split("hf://just-a-name", "test")


# --------------------------------------------------------------------------- hostile pickles and caches


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        # BINBYTES declaring 2 GB in a file of a few bytes: the C unpickler allocated it before reading
        (b"\x80\x04}C\x04dataB" + struct.pack("<I", 0x7FFFFFFF) + b"abc" * 30 + b"s.", "expected 2147483647 bytes"),
        # BINBYTES8 declaring 32 TB: a MemoryError traceback
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**45) + b"abc.", "but only 4 remain"),
        # a memo index of 2**31: the C unpickler grew its memo to it
        (b"\x80\x04Nr" + struct.pack("<I", 2**31) + b".", "memo index 2147483648"),
    ],
)
def test_pickles_declaring_more_than_they_hold_are_refused_before_allocating(
    tmp_path: Path, payload: bytes, message: str
) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes(payload)
    script = f"""
import tracemalloc
from tiniest.data import load_split
from tiniest.errors import DatasetError
tracemalloc.start()
try:
    load_split({str(folder)!r}, "test")
except DatasetError as error:
    print(error)
print(tracemalloc.get_traced_memory()[1] // 2**20)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    error, peak_mb = done.stdout.strip().splitlines()
    assert "test_batch': expected a CIFAR-10 python batch" in error and message in error
    assert int(peak_mb) < 50, f"{peak_mb} MB allocated for a {len(payload)}-byte file"


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((10_001, 3072), np.uint8), b"labels": [0] * 10_001}, "at most 10000 rows, got 10001"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 2**70]}, r"list of ints \(0 to 2\*\*31 - 1\)"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"labels outside 0\.\.9"),
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, "expected uint8 rows of 3072 values"),
    ],
)
def test_cifar_batches_outside_cifars_layout_are_refused(tmp_path: Path, batch: dict, message: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(DatasetError, match=message):
        load_split(folder, "test")


def test_a_pickle_declaring_a_wrong_array_size_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    payload = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 4}, protocol=2)
    (folder / "test_batch").write_bytes(payload.replace(b"K\x04M\x00\x0c", b"J\xff\xff\xff\x7fM\x00\x0c", 1))
    with pytest.raises(DatasetError, match=r"12288 bytes do not fill the shape \(2147483647, 3072\)"):
        load_split(folder, "test")
    (folder / "data_batch_1").unlink()
    os.mkfifo(folder / "data_batch_1")  # a FIFO named like a batch: refused, not waited on
    with pytest.raises(DatasetError, match=r"data_batch_1' is a FIFO \(named pipe\), not a regular file"):
        load_split(folder, "train")


def labels_offset(cache: Path) -> int:
    """Where the labels' bytes start in a cache file (from its safetensors header)."""
    data = cache.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return 8 + length + json.loads(data[8 : 8 + length])["labels"]["data_offsets"][0]


def test_a_cache_file_with_altered_labels_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "test")
    expected = load_split(tmp_path, "test")
    (cache,) = cache_files()
    data = bytearray(cache.read_bytes())
    data[labels_offset(cache)] = 2  # the first image, a cat (0), now says ship (2): same size, valid file
    cache.write_bytes(bytes(data))
    again = load_split(tmp_path, "test")
    assert again.labels.tolist() == expected.labels.tolist()
    assert cache.read_bytes()[labels_offset(cache)] == 0, "the altered file was replaced"


def test_a_cache_file_truncated_under_a_reader_never_kills_it(tmp_path: Path) -> None:
    """The file is cut to 100 bytes right after the reader opens it (however it opens it: safetensors'
    mmap or tiniest.files): a reader of a mapped file dies with SIGBUS or reads zeros (both seen); it must
    notice and decode again instead."""
    make_image_folder(tmp_path / "test")
    expected = load_split(tmp_path, "test")
    (cache,) = cache_files()
    script = f"""
import importlib, json, os, sys, safetensors, tiniest.data as data
cache = {str(cache)!r}
def truncating(opener):
    def wrapped(path, *args, **kwargs):
        handle = opener(path, *args, **kwargs)
        if os.fspath(path) == cache:
            os.truncate(cache, 100)
        return handle
    return wrapped
safetensors.safe_open = truncating(safetensors.safe_open)
try:
    files = importlib.import_module("tiniest.files")
    files.open_regular = truncating(files.open_regular)
except ImportError:
    pass  # before tiniest.files: the cache was read through safe_open alone
split = data.load_split({str(tmp_path)!r}, "test")
json.dump(split.labels.tolist(), sys.stdout)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the reader died (exit {done.returncode}): {done.stderr[-2000:]}"
    assert json.loads(done.stdout) == expected.labels.tolist()
    assert cache.stat().st_size > 100, "the truncated file was replaced"


def test_temporary_files_of_a_killed_cache_writer_are_removed(tmp_path: Path) -> None:
    """A writer SIGKILLed between writing and renaming leaves its .part file; a later load removes it
    once it is old enough that no live writer can own it, and leaves a fresh one (a peer's) alone."""
    make_image_folder(tmp_path / "test")
    script = f"""
import os, signal
from tiniest.data import load_split
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # killed as the cache file is flushed
load_split({str(tmp_path)!r}, "test")
"""
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = Path(os.environ["TINIEST_CACHE"]) / "datasets"
    (left,) = folder.glob(".*.part")
    assert left.stat().st_size > 9 * 3072, "the killed writer had written its data"
    hour_ago = left.stat().st_mtime - 3700
    os.utime(left, (hour_ago, hour_ago))
    fresh = folder / ".other.safetensors.0123.part"
    fresh.write_bytes(b"a peer writing now")
    load_split(tmp_path, "test")
    assert not left.exists() and fresh.exists()
    assert [p.name for p in cache_files() if p.suffix == ".safetensors"] != []


def test_hugging_face_names_are_checked_before_the_hub_is_asked(tmp_path: Path, server: LoopbackServer) -> None:
    """A revision is a file name in huggingface_hub's cache (refs/<revision>): '..' in it wrote outside the cache."""
    escape = "../../../../escaped"  # from HF_HOME/hub/datasets--someone--tiny-cifar/refs/ up to tmp_path
    commit = serve_dataset_repo(server, "someone/tiny-cifar", {"test/cat/000.png": b"", "README.md": b"# tiny\n"})
    info = json.dumps({"id": "someone/tiny-cifar", "sha": commit, "siblings": [], "private": False}).encode()
    server.serve(f"/api/datasets/someone/tiny-cifar/revision/{quote(escape, safe='')}", info)
    script = (
        "import sys; from tiniest.data import load_split\n"
        "for spec in sys.argv[1:]:\n"
        "    try:\n        load_split(spec, 'test')\n"
        "    except Exception as error:\n        print(type(error).__name__, str(error).splitlines()[0])\n"
    )
    specs = [f"hf://someone/tiny-cifar@{escape}", "hf://../..", "hf://someone/x y", "hf://someone/x@a:b"]
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, *specs], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.splitlines()
    assert len(lines) == len(specs), done.stdout + done.stderr
    assert all(line.startswith("DatasetError expected hf://owner/name[@revision]") for line in lines), done.stdout
    assert not (tmp_path / "escaped").exists() and server.paths_requested() == []


# --------------------------------------------------------------------------- class names, held-out splits, identity


def test_a_class_name_in_nfc_and_in_nfd_is_one_class(tmp_path: Path) -> None:
    """macOS writes ``café`` decomposed (NFD), most tools composed (NFC): one class, under its NFC name."""
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    for folder, count in ((nfc, 2), (nfd, 3), ("dog", 1)):
        (tmp_path / "train" / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (i, 0, 0)).save(tmp_path / "train" / folder / f"{folder}{i}.png")
    split = load_split(tmp_path, "train")
    assert split.classes == (nfc, "dog")
    assert split.labels.tolist() == [0, 0, 0, 0, 0, 1]


def test_hold_out_is_seeded_stratified_and_disjoint() -> None:
    from tiniest.data import hold_out

    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 5)
    kept, held = hold_out(labels, 0.2, seed=0)
    assert sorted(kept.tolist() + held.tolist()) == list(range(35))  # every image once
    assert [int((labels[held] == c).sum()) for c in range(3)] == [2, 4, 1]  # a fifth of each class
    again, other = hold_out(labels, 0.2, seed=0), hold_out(labels, 0.2, seed=1)
    assert torch.equal(again[1], held) and not torch.equal(other[1], held)
    with pytest.raises(DatasetError, match="class 1 has 1 image"):
        hold_out(torch.tensor([0, 0, 0, 1]), 0.5, seed=0)


def test_identities_are_those_of_the_files_and_content_ignores_the_folder(tmp_path: Path) -> None:
    """The same files reached through another folder (links) have the same identities; a copy, the same content."""
    import shutil

    make_image_folder(tmp_path / "data" / "train")
    (tmp_path / "linked").mkdir()
    for name in CLASSES:
        (tmp_path / "linked" / name).mkdir()
        for file in (tmp_path / "data" / "train" / name).iterdir():
            (tmp_path / "linked" / name / file.name).symlink_to(file)
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    original, linked = load_split(tmp_path / "data", "train"), load_split(tmp_path / "linked", "test")
    copied = load_split(tmp_path / "copy", "train")
    assert len(original.identities) == 9 and len(set(original.identities)) == 9
    assert original.identities == linked.identities
    assert not set(original.identities) & set(copied.identities)
    assert original.content == copied.content and len(original.content) == 64
    (tmp_path / "copy" / "train" / "cat" / "000.png").write_bytes(b"")  # a size changed
    assert load_split(tmp_path / "copy", "train", skip_unreadable=True).content != original.content


def test_an_empty_class_folder_is_reported_as_empty(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "test")
    (tmp_path / "test" / "emu").mkdir()
    split = load_split(tmp_path, "test")
    assert split.classes == CLASSES and split.empty_classes == ("emu",)


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_the_dataset_cache_cleans_up_by_the_rule_of_every_write(tmp_path: Path) -> None:
    """The dataset cache had its own rule (any temporary file over an hour old): it removed a live writer's,
    and left a dead one's for an hour. Now: those no process holds, a minute after their creation."""
    make_image_folder(tmp_path / "test")
    folder = Path(os.environ["TINIEST_CACHE"]) / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    dead, live = folder / ".a.safetensors.0123.part", folder / ".b.safetensors.4567.part"
    for part, age in [(dead, 120), (live, 7200)]:
        part.write_bytes(b"half")
        os.utime(part, (time.time() - age, time.time() - age))
    holder = """
import fcntl, os, sys, time
handle = os.open(sys.argv[1], os.O_WRONLY)
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""
    with subprocess.Popen([sys.executable, "-c", holder, str(live)], stdout=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "held\n"
            load_split(tmp_path, "test")
            assert not dead.exists(), "no process holds it: its writer died"
            assert live.exists(), "a live writer's, however slow"
        finally:
            writer.kill()


def test_writing_the_cache_holds_one_serialised_copy_of_the_split(tmp_path: Path) -> None:
    """The cache file was serialised twice (once to hash its tensor bytes), both copies alive at once:
    2 x 154 MB more at the peak for CIFAR-10's train split. The file written still passes its sha256 check."""
    import tracemalloc

    count = 4000
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = data_module.LabeledImages(images, torch.arange(count) % 10, tuple("abcdefghij"), ())
    fingerprint = {"kind": "folder", "root": str(tmp_path), "split": "test", "files": []}
    tracemalloc.start()
    try:
        data_module._cached(fingerprint, count, lambda: split)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * images.nbytes, f"{peak / images.nbytes:.2f} times the images' bytes at the peak"

    def must_not_decode() -> data_module.LabeledImages:
        raise AssertionError("the cache file written was not accepted")

    again = data_module._cached(fingerprint, count, must_not_decode)
    assert torch.equal(again.images, images) and torch.equal(again.labels, split.labels)


# --------------------------------------------------------------------------- pickle memory bombs


def _unicode(text: str) -> bytes:
    return b"\x8c" + bytes([len(text)]) + text.encode()  # SHORT_BINUNICODE


def frombuffer_bomb(declared: int) -> bytes:
    """110 bytes: ``_frombuffer(<int>, dtype("u1"), (declared,), "C")``, where the buffer's bytes belong."""
    array = b"cnumpy._core.numeric\n_frombuffer\n(J" + struct.pack("<i", declared)
    array += b"cnumpy\ndtype\n" + _unicode("u1") + b"\x85RJ" + struct.pack("<i", declared) + b"\x85" + _unicode("C")
    return b"\x80\x04}(" + _unicode("data") + array + b"tR" + _unicode("labels") + b"]u."


def reencode_bomb(copies: int) -> bytes:
    """One memoized 1 MiB string, turned into bytes ``copies`` times by ``_codecs.encode`` (1 MiB each)."""
    payload = b"\x80\x02]q\x00(c_codecs\nencode\nq\x01X" + struct.pack("<I", 2**20) + b"a" * 2**20 + b"q\x02"
    payload += b"X\x06\x00\x00\x00latin1q\x03" + b"h\x01h\x02h\x03\x86R" * copies
    return payload + b"e."


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("frombuffer", "expected bytes for a numpy array's buffer, got int 1073741824"),
        ("empty_sets", "expected only the opcodes of a CIFAR batch .* got EMPTY_SET at opcode 2"),
        ("empty_lists", "expected at most 256 dicts, lists and marks"),
        ("reencode", "it makes more bytes than the file holds"),
    ],
)
def test_pickle_memory_bombs_are_refused_in_bounded_memory(tmp_path: Path, name: str, message: str) -> None:
    """A 110-byte file declaring 1 GiB through ``_frombuffer`` (1.25 GB peak; 2 GiB: a raw MemoryError),
    4 MiB of EMPTY_SET or EMPTY_LIST opcodes (1.17 GB), one string re-encoded 2,000 times (2 GB): each is a
    one-line DatasetError. The child runs under an address-space limit 1 GiB above what it holds once
    imported, so a regression fails with a MemoryError instead of eating the machine."""
    payloads = {
        "frombuffer": lambda: frombuffer_bomb(2**30),
        "empty_sets": lambda: b"\x80\x04" + b"\x8f" * 2**22 + b".",
        "empty_lists": lambda: b"\x80\x04" + b"]" * 2**22 + b".",
        "reencode": lambda: reencode_bomb(2000),
    }
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes(payloads[name]())
    script = f"""
import resource, torch
from tiniest.data import load_split
from tiniest.errors import DatasetError
held = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (held + 2**30, resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_split({str(folder)!r}, "test")
except DatasetError as error:
    print(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    error, grown_mb = done.stdout.strip().splitlines()
    assert "test_batch': expected a CIFAR-10 python batch" in error
    assert __import__("re").search(message, error), error
    assert int(grown_mb) < 100, f"{grown_mb} MB more at the peak"


def test_real_batches_with_file_names_fit_the_pickle_allow_list(tmp_path: Path) -> None:
    """CIFAR-10's batches also hold 10,000 file names: at protocol 2 from Python 3 (a ``_codecs.encode`` call
    each, the most verbose form) they stay within the opcode and container bounds."""
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar_batches(folder)
    rows = data_module.CIFAR_ROWS
    data = np.random.default_rng(5).integers(0, 256, size=(rows, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(rows)]
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
             b"filenames": [f"image_{i:05d}.png".encode() for i in range(rows)]}
    for protocol in (2, 5):
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
        test = load_split(folder, "test")
        assert test.labels.tolist() == labels
        assert torch.equal(test.images, torch.from_numpy(data).reshape(-1, 3, 32, 32))



def test_the_dataset_cache_is_read_by_safetensors_alone_and_hashed_without_raw_pointers(tmp_path: Path) -> None:
    """data.py held a third safetensors header parser and hashed tensor memory through ctypes; the cache is
    now read with ``safetensors.torch.load`` only, and its digest is of the tensors' bytes, chunk by chunk."""
    source = Path(data_module.__file__).read_text()
    assert "ctypes" not in source and "struct.unpack" not in source and "import struct" not in source
    generator = torch.Generator().manual_seed(1)
    tensors = {"images": torch.randint(0, 256, (1500, 3, 32, 32), dtype=torch.uint8, generator=generator),
               "labels": torch.arange(1500) % 10}  # 4.6 MB: more than one hashing chunk
    header = json.dumps([["images", "torch.uint8", [1500, 3, 32, 32]], ["labels", "torch.int64", [1500]]]).encode()
    expected = hashlib.sha256(header + tensors["images"].numpy().tobytes() + tensors["labels"].numpy().tobytes())
    assert data_module._tensors_sha256(tensors) == expected.hexdigest()
    make_image_folder(tmp_path / "test")
    first = load_split(tmp_path, "test")
    (cache,) = cache_files()
    from safetensors.torch import load

    stored = load(cache.read_bytes())
    meta = json.loads(bytes(stored["meta"].tolist()))
    assert meta["sha256"] == data_module._tensors_sha256({"images": first.images, "labels": first.labels})
    assert meta["classes"] == list(CLASSES)
