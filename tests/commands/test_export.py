"""``tiniest export --format``: ONNX, TorchScript and torch.export programs run and agree with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tiniest
from tiniest.commands import main
from tiniest.model import Tiniest
from tiniest.weights import TiniestWeights

ATOL = 1e-4


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


def inputs(batch: int) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) - 0.5


def export(checkpoint: Path, fmt: str, output: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["export", str(checkpoint), "--format", fmt, "--output", str(output)]) == 0
    target = Path(capsys.readouterr().out.splitlines()[0])
    assert target.parent == output and target.is_file()
    return target


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels.json"]) == list(tiniest.CLASSES)
    return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def test_onnx_runs_in_onnxruntime_at_batch_1_and_256(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxscript")
    path, model = checkpoint
    onnx_file = export(path, "onnx", tmp_path, capsys)
    assert onnx_file.suffix == ".onnx" and not list(tmp_path.glob("*.data")), "weights must be inside the file"
    for batch in (1, 256):
        x = inputs(batch)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(onnx_file, x), model(x), rtol=0, atol=ATOL)


def test_torchscript_and_exported_program_have_a_dynamic_batch(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, model = checkpoint
    scripted = torch.jit.load(str(export(path, "torchscript", tmp_path, capsys)))
    program = torch.export.load(str(export(path, "exported-program", tmp_path, capsys))).module()
    for batch in (1, 7):
        x = inputs(batch)
        with torch.no_grad():
            want = model(x)
            torch.testing.assert_close(scripted(x), want, rtol=0, atol=ATOL)
            torch.testing.assert_close(program(x), want, rtol=0, atol=ATOL)


def test_published_checkpoint_exports_keep_the_pinned_bytes_and_names(
    shared_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxscript")
    release = TiniestWeights.DEFAULT.release
    safetensors = export(shared_checkpoint, "safetensors", tmp_path, capsys)
    assert safetensors.name == release.filename
    from tiniest.weights.artifact import sha256_hex

    assert sha256_hex(safetensors.read_bytes()) == release.sha256
    onnx_file = export(shared_checkpoint, "onnx", tmp_path, capsys)
    assert onnx_file.name == "tiniest-cifar10-v1.onnx"
    model = tiniest.tiniest(weights=str(shared_checkpoint))
    x = inputs(256)
    with torch.no_grad():
        got, want = run_onnx(onnx_file, x), model(x)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_metrics_only_apply_to_safetensors(checkpoint: tuple[Path, Tiniest], tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")
    path, _ = checkpoint
    args = ["export", str(path), "--format", "torchscript", "-o", str(tmp_path), "--metrics", str(metrics)]
    assert main(args) == 1


def test_only_the_published_checkpoint_carries_the_publishers_credit(
    checkpoint: tuple[Path, Tiniest], shared_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiniest.weights.artifact import read_metadata

    path, _ = checkpoint
    mine = read_metadata(export(path, "safetensors", tmp_path / "mine", capsys).read_bytes())
    assert "THALES" not in json.dumps(mine) and "ThalesGroup" not in mine["credit"] and "copyright" not in mine
    assert mine["license"] == "unknown" and json.loads(mine["metrics"]) == {"note": "not measured"}
    published = read_metadata(export(shared_checkpoint, "safetensors", tmp_path / "published", capsys).read_bytes())
    assert published["copyright"] == "Copyright 2024-2025 THALES" and "ThalesGroup" in published["credit"]


def test_programs_carry_the_class_names(
    checkpoint: tuple[Path, Tiniest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = checkpoint
    files = {"labels.json": ""}
    torch.jit.load(str(export(path, "torchscript", tmp_path, capsys)), _extra_files=files)
    assert json.loads(files["labels.json"]) == list(tiniest.CLASSES)
    extra = {"labels.json": ""}
    torch.export.load(str(export(path, "exported-program", tmp_path, capsys)), extra_files=extra)
    assert json.loads(extra["labels.json"]) == list(tiniest.CLASSES)
