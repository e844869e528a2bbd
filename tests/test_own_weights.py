"""Your own weights, end to end: a 3-class image folder trained, released to your repos, reloaded, used.

One tiny epoch on random pixels: what is checked is that the weights' task (three class names)
travels through every step, not that they learn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

import tiniest
from tests.conftest import copy_checkout
from tests.tiny_runs import make_dataset, train
from tiniest import Tiniest
from tiniest.commands import main
from tiniest.errors import TiniestWarning, UnverifiedWeightsWarning, WeightsNotFoundError
from tiniest.weights.formats import read_weights, sha256_hex
from tiniest.weights.loading import NoClassNamesWarning

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("circle", "square", "triangle")
T = TypeVar("T")


FLAGS = ("--github-repo", "alice/tiniest-shapes", "--hf-repo-id", "alice/tiniest-shapes", "--license", "mit")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 3-class image folder, one tiny training run on it and its release: ``(data, run, release)``."""
    tmp_path = tmp_path_factory.mktemp("shapes")
    data = make_dataset(tmp_path / "shapes", train_per_class=8, test_per_class=2, classes=SHAPES)
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "1", "--batch-size", "8") == 0
    out = tmp_path / "release"
    assert main(["release", str(run), "--output", str(out), *FLAGS]) == 0
    return data, run, out


def test_a_three_class_folder_from_training_to_evaluation(
    shapes: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run, out = shapes
    record = json.loads((out / "release.json").read_text())
    asset = out / record["filename"]
    assert record["name"].startswith("SHAPES_") and record["meta"]["categories"] == list(SHAPES)
    assert record["github"]["repo"] == "alice/tiniest-shapes" and "tiniest-models" not in json.dumps(record)
    assert json.loads(read_weights(asset.read_bytes())[1]["categories"]) == list(SHAPES)
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
    args = ["evaluate", "--weights", str(asset), "--data", str(data), "--eager", "--no-progress", "--json", str(report)]
    assert main(args) == 0
    capsys.readouterr()
    evaluation = json.loads(report.read_text())
    assert evaluation["classes"] == list(SHAPES) and evaluation["images"] == 6
    assert evaluation["correct"] == record["meta"]["metrics"]["shapes test"]["correct"]  # what training measured

    # the export programs carry the names too
    assert main(["export", str(asset), "--format", "torchscript", "--output", str(tmp_path / "programs")]) == 0
    files = {"tiniest.json": ""}
    torch.jit.load(capsys.readouterr().out.splitlines()[0], _extra_files=files)
    assert json.loads(files["tiniest.json"])["output"]["classes"] == list(SHAPES)


def test_messages_for_weights_that_are_not_a_weights_file(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1, classes=("a", "b"))
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "1", "--batch-size", "4", "--limit-test", "2") == 0
    with pytest.raises(WeightsNotFoundError, match=rf"is a folder; expected a \.safetensors or \.pt file; pass {run}"):
        tiniest.tiniest(weights=run)
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ValueError, match=r"pass the run's model\.pt"):
        tiniest.tiniest(weights=run / "checkpoint.pt")


def _loaded(load: Callable[[], T]) -> tuple[T, list[type[Warning]]]:
    """What ``load()`` returns, and the categories of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = load()
    return result, [warning.category for warning in caught]


def test_every_file_of_a_release_or_a_run_gives_its_names(
    shapes: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The release's bare .pt finds its names in the record beside it; a file with none says so, once."""
    data, run, out = shapes
    record = json.loads((out / "release.json").read_text())
    original = out / Path(record["source"]["path"]).name
    assert sha256_hex(original.read_bytes()) == record["source"]["sha256"]
    assert set(torch.load(original, weights_only=True)) == set(Tiniest(3).state_dict())  # any torch program loads it

    for load in (
        lambda: tiniest.tiniest(weights=original),
        lambda: torch.hub.load(str(ROOT), "tiniest", source="local", weights=str(original)),
    ):
        model, caught = _loaded(load)
        assert model.labels == SHAPES and caught == [UnverifiedWeightsWarning]
    image = data / "test" / "square" / "000.png"
    assert main(["predict", "--weights", str(original), "--top-k", "3", "--json", "--eager", str(image)]) == 0
    assert sorted(p["label"] for p in json.loads(capsys.readouterr().out)[0]["predictions"]) == list(SHAPES)
    report = tmp_path / "evaluation.json"
    args = ["evaluate", "--weights", str(original), "--data", str(data), "--eager", "--no-progress"]
    args += ["--json", str(report)]
    assert main(args) == 0 and json.loads(report.read_text())["classes"] == list(SHAPES)
    capsys.readouterr()
    assert main(["export", str(original), "--output", str(tmp_path / "exported")]) == 0
    exported = Path(capsys.readouterr().out.splitlines()[0])
    assert json.loads(read_weights(exported.read_bytes())[1]["categories"]) == list(SHAPES)

    # copied away from what names them (the run's checkpoint.pt, the release's record): one warning each
    alone = tmp_path / "alone"
    alone.mkdir()
    for path in (run / "model.pt", original):
        copy = Path(shutil.copy(path, alone))
        model, caught = _loaded(lambda copy=copy: tiniest.tiniest(weights=copy))
        assert model.labels == ("class_0", "class_1", "class_2")
        assert sorted(c.__name__ for c in caught) == ["NoClassNamesWarning", "UnverifiedWeightsWarning"], caught
        status, caught = _loaded(lambda copy=copy: main(["predict", "--weights", str(copy), "--json", str(image)]))
        assert status == 0 and caught.count(NoClassNamesWarning) == 1, caught
        assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["label"].startswith("class_")
    assert issubclass(NoClassNamesWarning, TiniestWarning)


def test_a_forks_release_is_its_default_by_its_name_verified(shapes: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """PUBLISH.md's procedure, in a copy of the checkout: its record over the pinned one, its .pt in weights/."""
    _, run, _ = shapes
    out = tmp_path / "named"
    assert main(["release", str(run), "--output", str(out), "--name", "SHAPES12_4FCC507D", *FLAGS]) == 0
    record = json.loads((out / "release.json").read_text())
    fork = copy_checkout(tmp_path / "fork")
    shutil.copy(out / "release.json", fork / "tiniest" / "weights" / "release.json")
    releases = fork / "tiniest" / "weights" / "releases.py"  # PUBLISH.md: the member is declared in code
    releases.write_text(releases.read_text().replace("    CIFAR10_V1 = _PINNED\n", "    SHAPES12_4FCC507D = _PINNED\n"))
    assert "= _PINNED" in (out / "PUBLISH.md").read_text() and "releases.py" in (out / "PUBLISH.md").read_text()
    shutil.copy(out / Path(record["source"]["path"]).name, fork / "weights")  # the original, converted on load
    script = """
import json, sys, warnings
warnings.simplefilter("error")  # verified: no warning of any kind
import torch, tiniest
from tiniest.errors import UsageError
assert tiniest.__file__.startswith(sys.argv[1]), tiniest.__file__
found = {name: list(tiniest.tiniest(weights=name).labels) for name in ("SHAPES12_4FCC507D", "DEFAULT")}
found["member"] = list(tiniest.tiniest(weights=tiniest.TiniestWeights.DEFAULT).labels)  # the default
found["torch.hub"] = list(torch.hub.load(sys.argv[1], "tiniest", source="local", weights="SHAPES12_4FCC507D").labels)
found["members"] = list(tiniest.TiniestWeights.__members__)
try:
    tiniest.tiniest(weights="CIFAR10_V1")
except UsageError as error:
    found["CIFAR10_V1"] = str(error)
print(json.dumps(found))
"""
    env = {key: value for key, value in os.environ.items() if key != "TINIEST_WEIGHTS_DIR"}
    env |= {"TINIEST_OFFLINE": "1", "PYTHONPATH": str(fork)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(fork)], cwd=fork, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    for key in ("SHAPES12_4FCC507D", "DEFAULT", "member", "torch.hub"):
        assert found[key] == list(SHAPES), (key, found)
    assert found["members"] == ["SHAPES12_4FCC507D", "DEFAULT"]
    # the upstream name is not rebound to the fork's file: refused, naming what the checkout pins
    assert found["CIFAR10_V1"].startswith("unknown weights 'CIFAR10_V1': expected one of 'SHAPES12_4FCC507D'")
