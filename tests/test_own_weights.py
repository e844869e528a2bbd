"""Your own weights, end to end: a 3-class image folder trained, released to your repos, reloaded, used.

One tiny epoch on random pixels: what is checked is that the weights' task (three class names)
travels through every step, not that they learn.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import tiniest
from tests.tiny_runs import make_dataset, train
from tiniest import Tiniest
from tiniest.commands import main
from tiniest.errors import UnverifiedWeightsWarning, WeightsNotFoundError
from tiniest.weights.artifact import read_metadata

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("circle", "square", "triangle")


def test_a_three_class_folder_from_training_to_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "shapes", train_per_class=8, test_per_class=2, classes=SHAPES)
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "1", "--batch-size", "8") == 0
    assert "(3 classes)" in capsys.readouterr().out

    out = tmp_path / "release"
    flags = ["--github-repo", "alice/tiniest-shapes", "--hf-repo-id", "alice/tiniest-shapes", "--license", "mit"]
    assert main(["release", str(run), "--output", str(out), *flags]) == 0
    capsys.readouterr()
    record = json.loads((out / "release.json").read_text())
    asset = out / record["filename"]
    assert record["name"].startswith("SHAPES_") and record["meta"]["categories"] == list(SHAPES)
    assert record["github"]["repo"] == "alice/tiniest-shapes" and "tiniest-models" not in json.dumps(record)
    assert json.loads(read_metadata(asset.read_bytes())["categories"]) == list(SHAPES)
    config = json.loads((out / "huggingface" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["id2label"] == {"0": "circle", "1": "square", "2": "triangle"}
    card = (out / "huggingface" / "README.md").read_text()
    assert "CIFAR-10" not in card and "cifar10" not in card.split("---")[1] and "3-class" in card

    # reloaded: the hub entry point (as a function and through torch.hub) and from_pretrained
    with pytest.warns(UnverifiedWeightsWarning):
        hub_model = tiniest.tiniest(weights=asset)
    with pytest.warns(UnverifiedWeightsWarning):
        torch_hub_model = torch.hub.load(str(ROOT), "tiniest", source="local", weights=str(asset))
    with pytest.warns(UnverifiedWeightsWarning):
        folder_model = Tiniest.from_pretrained(out / "huggingface")
    with pytest.warns(UnverifiedWeightsWarning):
        run_model = tiniest.tiniest(weights=run / "model.pt")  # the run's plain state_dict: names from its checkpoint
    for model in (hub_model, torch_hub_model, folder_model, run_model):
        assert model.labels == SHAPES and model.fc.out_features == 3
    assert all(torch.equal(hub_model.state_dict()[k], v) for k, v in run_model.state_dict().items())

    # save_pretrained of the reloaded model gives the release's bytes: its own facts, kept
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedWeightsWarning)
        again = folder_model.save_pretrained(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (out / "huggingface" / "model.safetensors").read_bytes()

    # predicted and evaluated with its own names
    image = data / "test" / "square" / "000.png"
    assert main(["predict", "--weights", str(asset), "--top-k", "3", "--json", "--eager", str(image)]) == 0
    top = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sorted(p["label"] for p in top) == list(SHAPES)
    report = tmp_path / "evaluation.json"
    args = ["evaluate", "--weights", str(asset), "--data", str(data), "--eager", "--quiet", "--json", str(report)]
    assert main(args) == 0
    capsys.readouterr()
    evaluation = json.loads(report.read_text())
    assert evaluation["classes"] == list(SHAPES) and evaluation["images"] == 6
    assert evaluation["correct"] == record["meta"]["metrics"]["shapes test"]["correct"]  # what training measured

    # the export programs carry the names too
    assert main(["export", str(asset), "--format", "torchscript", "--output", str(tmp_path / "programs")]) == 0
    files = {"labels.json": ""}
    torch.jit.load(capsys.readouterr().out.splitlines()[0], _extra_files=files)
    assert json.loads(files["labels.json"]) == list(SHAPES)


def test_messages_for_weights_that_are_not_a_weights_file(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1, classes=("a", "b"))
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "1", "--batch-size", "4", "--limit-test", "2") == 0
    with pytest.raises(WeightsNotFoundError, match=rf"is a folder; expected a \.safetensors or \.pt file; pass {run}"):
        tiniest.tiniest(weights=run)
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ValueError, match=r"pass the run's model\.pt"):
        tiniest.tiniest(weights=run / "checkpoint.pt")
