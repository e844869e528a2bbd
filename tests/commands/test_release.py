"""``tiniest release``: the published checkpoint reproduces the pinned record; a trained run gets its own,
aimed at the user's repositories, with only its own facts; refusals before anything is written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from tests.tiny_runs import make_dataset, train
from tiniest.commands import main
from tiniest.errors import UnverifiedWeightsWarning
from tiniest.model import Tiniest
from tiniest.weights import RECORD_PATH, Release, TiniestWeights, build_artifact
from tiniest.weights.artifact import read_metadata, sha256_hex
from tiniest.weights.run_files import load_checkpoint

MINE = ("--github-repo", "someone/tiniest", "--hf-repo-id", "someone/tiniest-v2")


def release(source: Path, output: Path, *flags: str) -> int:
    return main(["release", str(source), "--output", str(output), *flags])


def read_card(folder: Path) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def test_published_checkpoint_gives_the_pinned_release(shared_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    assert release(shared_checkpoint, out) == 0
    pinned = TiniestWeights.DEFAULT.release
    asset = (out / pinned.filename).read_bytes()
    assert sha256_hex(asset) == pinned.sha256 and len(asset) == pinned.size
    assert json.loads((out / "release.json").read_text()) == json.loads(RECORD_PATH.read_text())
    assert not list(out.glob("*.pt"))  # the original already lives at its pinned address

    hf = out / "huggingface"
    assert (hf / "model.safetensors").read_bytes() == asset
    config = json.loads((hf / "config.json").read_text())
    assert config["num_classes"] == 10 and config["id2label"]["9"] == "truck"
    card = read_card(hf)
    assert card.data.license == "mit" and card.data.datasets == ["ego-thales/cifar10"]
    results = {result.dataset_split: result.metric_value for result in card.data.eval_results}
    assert results == {"test": 0.9463, "train": 0.9859}
    assert pinned.sha256 in card.text and "# verified" in card.text and "THALES" in card.text
    publish = (out / "PUBLISH.md").read_text()
    assert f"gh release create {pinned.github_tag} " in publish and f"--repo {pinned.github_repo}" in publish
    assert f"hf upload {pinned.hf_repo_id} " in publish and "main:hub" in publish

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pinned bytes load verified, without a warning
        model = Tiniest.from_pretrained(hf)
    reference = torch.load(shared_checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    # the asset itself (already the release file) is accepted as a source too
    assert release(out / pinned.filename, tmp_path / "again") == 0
    assert (tmp_path / "again" / pinned.filename).read_bytes() == asset


def test_trained_run_gets_its_own_release(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=8)
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "1", "--batch-size", "40", "--limit-test", "20") == 0
    out = tmp_path / "release"
    assert release(run, out, *MINE) == 0
    record = json.loads((out / "release.json").read_text())
    Release.from_record(record)  # the layout tiniest/release.json expects
    sha8 = record["sha256"][:8]
    asset = (out / record["filename"]).read_bytes()
    original = out / f"tiniest-{sha8}.pt"
    assert record["filename"] == f"tiniest-{sha8}.safetensors" and sha256_hex(asset) == record["sha256"]
    assert record["name"] == f"CIFAR10_{sha8.upper()}" and record["github"] == {
        "repo": "someone/tiniest",
        "tag": f"weights-{sha8}",
    }
    assert record["huggingface"] == {
        "repo_id": "someone/tiniest-v2",
        "revision": f"weights-{sha8}",
        "filename": "model.safetensors",
    }
    assert original.read_bytes() == (run / "model.pt").read_bytes()
    assert record["source"] == {
        "path": f"someone/tiniest/releases/download/weights-{sha8}/{original.name}",
        "sha256": sha256_hex(original.read_bytes()),
        "size": original.stat().st_size,
    }
    # the asset is the deterministic export of that original, carrying the run's own facts
    assert build_artifact(original.read_bytes(), record["meta"]) == asset
    last = load_checkpoint(run / "checkpoint.pt")["history"][-1]
    metrics = record["meta"]["metrics"]["CIFAR-10 test"]
    assert (metrics["correct"], metrics["total"]) == (last["test_correct"], 20)
    assert "train split of" in record["meta"]["dataset"] and "epochs=1" in record["meta"]["recipe"]
    assert str(tmp_path) not in json.dumps(record)  # no local path leaks into what is published
    assert metrics["split"] == "test" and "subset_of" not in metrics  # the whole test split: 20 of 20
    assert record["meta"]["license"] == "unknown" and "THALES" not in json.dumps(record)
    assert "ThalesGroup" not in record["meta"]["credit"] and "copyright" not in record["meta"]
    assert json.loads(read_metadata(asset)["metrics"]) == record["meta"]["metrics"]

    card = read_card(out / "huggingface")
    assert [r.metric_value for r in card.data.eval_results] == [metrics["accuracy"]]
    assert "cifar10" in card.data.tags and card.data.datasets is None  # CIFAR-10's classes, but a local folder
    assert "# verified" not in card.text and "UnverifiedWeightsWarning" in card.text
    assert "tiniest-models" not in (out / "PUBLISH.md").read_text()
    assert "hf repos tag create someone/tiniest-v2" in (out / "PUBLISH.md").read_text()
    with pytest.warns(UnverifiedWeightsWarning):
        model = Tiniest.from_pretrained(out / "huggingface")
    ema = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())

    # the run's checkpoint.pt releases the same averaged weights, hence the same bytes
    assert release(run / "checkpoint.pt", tmp_path / "from-checkpoint", *MINE) == 0
    assert (tmp_path / "from-checkpoint" / record["filename"]).read_bytes() == asset


def test_release_refuses_what_it_cannot_publish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=4)
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "2", "--batch-size", "40", "--limit-test", "4", "--stop-after", "1") == 0
    assert release(run, tmp_path / "out") == 1
    assert "stopped after epoch 1 of 2" in capsys.readouterr().err
    assert release(tmp_path / "missing", tmp_path / "out") == 1
    assert "does not exist" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)
    assert release(wrong, tmp_path / "out") == 1
    assert f"{wrong}: expected Tiniest weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_new_weights_need_the_users_repositories_and_an_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "mine.pt"
    torch.save(Tiniest().state_dict(), weights)
    out = tmp_path / "out"
    assert release(weights, out) == 1
    err = capsys.readouterr().err
    assert "--github-repo OWNER/NAME and --hf-repo-id OWNER/NAME" in err and not out.exists()
    assert release(weights, out, "--github-repo", "me/x") == 1
    assert "pass --hf-repo-id OWNER/NAME" in capsys.readouterr().err and not out.exists()
    assert release(weights, out, "--github-repo", "me", "--hf-repo-id", "me/x") == 1
    assert "--github-repo: expected OWNER/NAME, got 'me'" in capsys.readouterr().err

    assert release(weights, out, *MINE, "--license", "apache-2.0") == 0
    capsys.readouterr()
    first = {p.name for p in out.iterdir()}
    meta = json.loads((out / "release.json").read_text())["meta"]
    assert meta["license"] == "apache-2.0" and meta["metrics"] == {"note": "not measured"}
    assert "THALES" not in json.dumps(meta) and "dataset" not in meta

    # an existing release folder: refused, untouched; --overwrite replaces the old release's files
    torch.manual_seed(1)
    torch.save(Tiniest().state_dict(), weights)
    assert release(weights, out, *MINE) == 1
    assert "--overwrite" in capsys.readouterr().err and {p.name for p in out.iterdir()} == first
    (out / "notes.txt").write_text("mine")
    assert release(weights, out, *MINE, "--overwrite") == 0
    second = {p.name for p in out.iterdir()}
    assert "notes.txt" in second and len(second) == len(first) + 1 and not (first - {"huggingface"}) & (
        second - {"huggingface", "release.json", "PUBLISH.md"}
    )
    assert len(list(out.glob("tiniest-*.safetensors"))) == 1  # nothing of the old release beside the new

    # an --output that is a file is refused before anything is read
    assert release(weights, out / "notes.txt", *MINE) == 1
    assert "is a file; expected a folder" in capsys.readouterr().err


def test_published_checkpoint_keeps_its_record(shared_checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert release(shared_checkpoint, tmp_path / "out", "--license", "apache-2.0") == 1
    assert "pinned record" in capsys.readouterr().err
