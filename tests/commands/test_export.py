"""``tiniest export``: ONNX, TorchScript and torch.export programs run, agree with PyTorch, describe themselves."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import tiniest
from tiniest.commands import main
from tiniest.export import FORMATS, export, export_info
from tiniest.model import Tiniest
from tiniest.transforms import PREPROCESSING, Preprocess
from tiniest.weights import TiniestWeights

ATOL = 1e-4
INPUT_SIZE = Preprocess().size  # the published weights' contract
PROGRAMS = [name for name, spec in FORMATS.items() if spec.program]


def test_every_program_format_has_its_writer() -> None:
    """``tiniest.export_formats`` lists the formats without torch; ``tiniest.export`` writes each program."""
    from tiniest.export import _WRITERS

    assert list(_WRITERS) == PROGRAMS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tiniest]:
    """A state_dict .pt of a random model whose LayerNorm affines are not the identity."""
    torch.manual_seed(0)
    model = Tiniest().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln.weight", "ln.bias", "rs")):
                param.add_(torch.rand_like(param) - 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def programs(checkpoint: tuple[Path, Tiniest], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The random checkpoint in every program format, exported once for the module."""
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("programs")
    return {fmt: export(checkpoint[0], folder, fmt) for fmt in PROGRAMS}


def inputs(batch: int, size: tuple[int, int] = INPUT_SIZE) -> torch.Tensor:
    return Preprocess(size).random_input(batch, torch.Generator().manual_seed(batch))


def export_cli(checkpoint: Path, fmt: str, output: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["export", str(checkpoint), "--format", fmt, "--output", str(output)]) == 0
    target = Path(capsys.readouterr().out.splitlines()[0])
    assert target.parent == output and target.is_file()
    return target


def onnx_session(path: Path) -> Any:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["image"]
    info = json.loads(session.get_modelmeta().custom_metadata_map["tiniest.json"])
    assert info["output"]["classes"] == list(tiniest.CLASSES)
    return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def documents(fmt: str, path: Path) -> dict[str, Any]:
    """The JSON documents a program carries in its format's own metadata, decoded."""
    keys = ("tiniest.json",)
    if fmt == "onnx":
        found: dict[str, Any] = dict(onnx_session(path).get_modelmeta().custom_metadata_map)
    elif fmt == "torchscript":
        found = dict.fromkeys(keys, "")
        torch.jit.load(str(path), _extra_files=found)
    else:
        found = dict.fromkeys(keys, "")
        torch.export.load(str(path), extra_files=found)
    return {key: json.loads(found[key]) for key in keys}


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_at_batch_1_and_256(
    checkpoint: tuple[Path, Tiniest], programs: dict[str, Path]
) -> None:
    _, model = checkpoint
    onnx_file = programs["onnx"]
    assert onnx_file.suffix == ".onnx" and not list(onnx_file.parent.glob("*.data")), "weights must be in the file"
    for batch in (1, 256):
        x = inputs(batch)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(onnx_file, x), model(x), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_torchscript_and_exported_program_have_a_dynamic_batch(
    checkpoint: tuple[Path, Tiniest], programs: dict[str, Path]
) -> None:
    _, model = checkpoint
    scripted = torch.jit.load(str(programs["torchscript"]))
    program = torch.export.load(str(programs["exported-program"])).module()
    for batch in (1, 7):
        x = inputs(batch)
        with torch.no_grad():
            want = model(x)
            torch.testing.assert_close(scripted(x), want, rtol=0, atol=ATOL)
            torch.testing.assert_close(program(x), want, rtol=0, atol=ATOL)


def test_onnx_runtime_writes_into_the_tests_cache_not_the_home_folder(
    programs: dict[str, Path], tmp_path: Path
) -> None:
    """tests/conftest.py points XDG_CACHE_HOME at a throwaway folder before any test opens a session: ONNX
    Runtime writes its device id there, never under the home folder of whoever runs the tests. (It writes
    none where CI is set, so the session here runs without it, with this run's environment otherwise.)"""
    env = {name: value for name, value in os.environ.items() if name != "CI"}
    env["HOME"] = str(tmp_path / "home")
    code = "import onnxruntime, sys; onnxruntime.InferenceSession(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(programs["onnx"])], env=env, check=True, timeout=300)
    assert not (tmp_path / "home").exists(), "written into the home folder"
    assert (Path(env["XDG_CACHE_HOME"]) / "Microsoft").is_dir(), "its device id, written into the tests' cache"


def test_every_program_takes_any_batch_and_only_32x32(programs: dict[str, Path]) -> None:
    """The same input shape everywhere: batch unbounded (it was capped at 65,536 in .pt2), 32x32 only."""
    import onnx

    graph_input = onnx.load(str(programs["onnx"])).graph.input[0].type.tensor_type.shape.dim
    assert graph_input[0].dim_param and [d.dim_value for d in graph_input[1:]] == [3, *INPUT_SIZE]
    exported = torch.export.load(str(programs["exported-program"]))
    (batch_range,) = exported.range_constraints.values()
    assert batch_range.lower == 1 and batch_range.upper > sys.maxsize - 2, batch_range

    large = inputs(1, (64, 64))
    with pytest.raises(Exception, match=r"(?is)invalid dimensions.*index: 2 Got: 64 Expected: 32"):
        onnx_session(programs["onnx"]).run(["logits"], {"image": large.numpy()})
    refusal = r"expected an input of shape \[batch, 3, 32, 32\] \(NCHW\), got \[1, 3, 64, 64\]"
    with pytest.raises(torch.jit.Error, match=refusal):
        torch.jit.load(str(programs["torchscript"]))(large)
    # torch.export's shape guard: an AssertionError since torch made its guards asserts, a RuntimeError before.
    guard = r"^Guard failed: x\.size\(\)\[2\] == 32$|^Expected input at .*\[2\] to be equal to 32, but got 64"
    with pytest.raises((AssertionError, RuntimeError), match=guard):
        exported.module()(large)


def test_every_program_carries_the_same_contract_and_provenance(
    checkpoint: tuple[Path, Tiniest], programs: dict[str, Path]
) -> None:
    found = {fmt: documents(fmt, path) for fmt, path in programs.items()}
    assert found["onnx"] == found["torchscript"] == found["exported-program"]
    info = found["onnx"]["tiniest.json"]
    assert info["output"]["classes"] == list(tiniest.CLASSES)
    assert info["input"]["name"] == "image" and info["output"]["name"] == "logits"
    assert info["input"]["shape"] == ["batch", 3, *INPUT_SIZE] and info["output"]["shape"] == ["batch", 10]
    assert info["input"]["layout"] == "NCHW" and info["input"]["dtype"] == "float32"
    policy = info["input"]["preprocessing"]
    assert policy == PREPROCESSING, "numbers: RGB, the size, x = (pixel / 255 - mean) / std"
    assert policy["mean"] == [0.5] * 3 and policy["std"] == [1.0] * 3 and policy["size"] == [32, 32]
    path = checkpoint[0]
    assert info["weights"] == {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert info["tiniest_version"] == tiniest.__version__
    assert info["license"] == "unknown" and "copyright" not in info and "xvel/cifar10-tiniest" in info["credit"]


CONSUMER = r"""
import sys

for name in ("torch", "tiniest"):
    sys.modules[name] = None  # any import of them fails: this reader has neither

import json
import os
import struct

import numpy as np
import onnxruntime as ort
from PIL import Image

model_path, *pictures = sys.argv[1:]
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
info = json.loads(session.get_modelmeta().custom_metadata_map["tiniest.json"])
given, wanted = info["input"], info["output"]
policy = given["preprocessing"]
assert given["layout"] == "NCHW" and policy["interpolation"] == "bilinear", info
height, width = policy["size"]
mean, std = (np.array(policy[key], dtype=given["dtype"])[:, None, None] for key in ("mean", "std"))
batch = []
for path in pictures:
    with Image.open(path) as image:
        rgb = image.convert(policy["color"]).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=given["dtype"]).transpose(2, 0, 1)  # HWC -> CHW
    batch.append((pixels / 255 - mean) / std)
logits = session.run([wanted["name"]], {given["name"]: np.stack(batch).astype(given["dtype"])})[0]
labels = [wanted["classes"][i] for i in logits.argmax(axis=1)]
print(json.dumps({"labels": labels, "logits": logits.tolist(), "info": info}))
"""


@pytest.mark.slow
def test_onnx_alone_reads_its_contract_and_classifies_pictures_as_predict_does(
    shared_checkpoint: Path, shared_cifar10: Path, tmp_path: Path
) -> None:
    """A reader with onnxruntime, numpy and Pillow only preprocesses PNGs from the metadata; same top-1 as predict."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("PIL")
    pictures = []
    for name in tiniest.CLASSES:  # a PNG per class, written now from a test picture (none committed)
        from PIL import Image

        source = sorted((shared_cifar10 / "test" / name).glob("*.png"))[0]
        with Image.open(source) as image:
            image.save(tmp_path / f"{name}.png")
        pictures.append(tmp_path / f"{name}.png")
    onnx_file = export(shared_checkpoint, tmp_path / "exports", "onnx")
    run = subprocess.run(
        [sys.executable, "-c", CONSUMER, str(onnx_file), *map(str, pictures)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    model = tiniest.tiniest(weights=str(shared_checkpoint))
    assert result["labels"] == [prediction.label for prediction in tiniest.predict(pictures, model=model)]
    with torch.no_grad():
        want = model(tiniest.preprocess(pictures))
    torch.testing.assert_close(torch.tensor(result["logits"]), want, rtol=0, atol=ATOL)
    assert sum(label == name for label, name in zip(result["labels"], tiniest.CLASSES, strict=True)) >= 8

    info, release = result["info"], TiniestWeights.DEFAULT.release
    assert info["weights"] == {"file": shared_checkpoint.name, "sha256": release.source_sha256}
    for key in ("license", "copyright", "credit"):
        assert info[key] == release.meta[key]
    assert info["input"]["preprocessing"] == Preprocess.from_meta(release.meta["preprocessing"]).contract


@pytest.mark.slow
def test_published_checkpoint_exports_keep_the_pinned_bytes_and_names(
    shared_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxscript")
    release = TiniestWeights.DEFAULT.release
    safetensors = export_cli(shared_checkpoint, "safetensors", tmp_path, capsys)
    assert safetensors.name == release.filename
    from tiniest.weights.formats import sha256_hex

    assert sha256_hex(safetensors.read_bytes()) == release.sha256
    onnx_file = export_cli(shared_checkpoint, "onnx", tmp_path, capsys)
    assert onnx_file.name == "tiniest-cifar10-v1.onnx"
    model = tiniest.tiniest(weights=str(shared_checkpoint))
    x = inputs(256)
    with torch.no_grad():
        got, want = run_onnx(onnx_file, x), model(x)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert torch.equal(got.argmax(1), want.argmax(1))
    exported = documents("onnx", onnx_file)["tiniest.json"]["weights"]
    assert exported == {"file": shared_checkpoint.name, "sha256": release.source_sha256}
    from_release = export(safetensors, tmp_path / "from-release", "torchscript")
    assert documents("torchscript", from_release)["tiniest.json"]["weights"]["sha256"] == release.sha256


def test_metrics_only_apply_to_safetensors(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")
    path, _ = checkpoint
    args = ["export", str(path), "--format", "torchscript", "-o", str(tmp_path), "--metrics", str(metrics)]
    assert main(args) == 1
    assert "metrics and license: expected only with the safetensors format" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.pt"))


def test_only_the_published_checkpoint_carries_the_publishers_credit(
    checkpoint: tuple[Path, Tiniest], shared_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiniest.weights.formats import read_weights

    path, _ = checkpoint
    mine = read_weights(export_cli(path, "safetensors", tmp_path / "mine", capsys).read_bytes())[1]
    assert "THALES" not in json.dumps(mine) and "ThalesGroup" not in mine["credit"] and "copyright" not in mine
    assert mine["license"] == "unknown" and json.loads(mine["metrics"]) == {"note": "not measured"}
    published_file = export_cli(shared_checkpoint, "safetensors", tmp_path / "published", capsys)
    published = read_weights(published_file.read_bytes())[1]
    assert published["copyright"] == "Copyright 2024-2025 THALES" and "ThalesGroup" in published["credit"]


def test_a_program_takes_the_licence_of_the_release_file_it_is_made_from(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path
) -> None:
    release_file = export(checkpoint[0], tmp_path, license="CC-BY-4.0")
    program = export(release_file, tmp_path, "exported-program")
    info = documents("exported-program", program)["tiniest.json"]
    assert info["license"] == "CC-BY-4.0"
    sha256 = hashlib.sha256(release_file.read_bytes()).hexdigest()
    assert info["weights"] == {"file": release_file.name, "sha256": sha256}


def test_the_command_line_offers_the_registrys_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(FORMATS) + "}" in text
    for spec in FORMATS.values():
        assert spec.suffix in text



@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ({"size": ["a", "b"]}, "preprocessing 'size': expected [height, width], two whole numbers from 1 to 1024"),
        ({"size": [0, 0]}, "preprocessing 'size': expected [height, width], two whole numbers from 1 to 1024"),
        ({"mean": "x"}, "preprocessing 'mean': expected three numbers from -1 to 1"),
        ({"shift": -0.5}, "preprocessing: expected the keys size, interpolation, antialias, mean, std, color, got"),
        (["size", [32, 32]], "preprocessing: expected a JSON object (a mapping), got list"),
    ],
)
def test_a_weights_files_preprocessing_is_checked_before_a_program_describes_it(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path, policy: Any, says: str
) -> None:
    """A model loaded from a release file keeps the file's policy: a bad one raised a bare ValueError
    (non-numbers, a list), or described a program for any input size ([0, 0])."""
    from safetensors.torch import load_file, save_file

    release_file = export(checkpoint[0], tmp_path)
    with open(release_file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        metadata = json.loads(handle.read(length))["__metadata__"]
    wanted = {**json.loads(metadata["preprocessing"]), **policy} if isinstance(policy, dict) else policy
    metadata["preprocessing"] = json.dumps(wanted, sort_keys=True)
    altered = tmp_path / "altered.safetensors"
    save_file(load_file(release_file), altered, metadata=metadata)
    with pytest.warns(tiniest.errors.UnverifiedWeightsWarning):
        model = tiniest.tiniest(weights=altered)
    with pytest.raises(tiniest.errors.PreprocessError) as caught:
        export_info(model, weights_file=altered.name, sha256="0" * 64)
    assert str(caught.value).startswith(says) and "\n" not in str(caught.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
@pytest.mark.slow
def test_a_fifo_or_an_oversized_file_is_refused_not_read(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path, fmt: str
) -> None:
    """export read the checkpoint with read_bytes(): a FIFO named model.pt hung it, any size was read whole."""
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "tiniest", "export", "--format", fmt, "--output", str(tmp_path / "out")]
    try:
        done = subprocess.run([*command, str(fifo)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("export blocked on a FIFO")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("tiniest export: error: "), done.stderr
    assert "is a FIFO (named pipe), not a regular file" in done.stderr, done.stderr

    size = checkpoint[0].stat().st_size
    limit = {**os.environ, "TINIEST_MAX_DOWNLOAD_MB": str(size / 2 / 2**20)}
    done = subprocess.run([*command, str(checkpoint[0])], capture_output=True, text=True, timeout=120, env=limit)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "holds more than" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
