"""``tiniest release``: the published checkpoint reproduces the pinned record; a trained run gets its own,
aimed at the user's repositories, with only its own facts; refusals before anything is written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from tests.tiny_runs import make_dataset, train
from tiniest import names
from tiniest.commands import main
from tiniest.errors import UnverifiedWeightsWarning
from tiniest.model import Tiniest
from tiniest.release import SeenScoreWarning, publish_commands
from tiniest.weights import RECORD_PATH, Release, TiniestWeights
from tiniest.weights.artifact import build_artifact
from tiniest.weights.formats import read_weights, sha256_hex
from tiniest.weights.run_files import load_checkpoint

MINE = ("--github-repo", "someone/tiniest", "--hf-repo-id", "someone/tiniest-v2")


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors metadata of ``data``, as its strings."""
    return read_weights(data)[1]


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
    github, hub = pinned.where["github"], pinned.where["huggingface"]
    assert f"gh release create {github['tag']} " in publish and f"--repo {github['repo']}" in publish
    assert f"hf upload {hub['repo_id']} " in publish and "main:hub" in publish

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the pinned bytes load verified, without a warning
        model = Tiniest.from_pretrained(hf)
    reference = torch.load(shared_checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
    # the asset itself (already the release file) is accepted as a source too
    assert release(out / pinned.filename, tmp_path / "again") == 0
    assert (tmp_path / "again" / pinned.filename).read_bytes() == asset


@pytest.mark.slow
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
    # a local folder is no Hub dataset: no model-index (whose dataset type is a Hub id), the score in the table
    assert card.data.eval_results is None and f"{100 * metrics['accuracy']:.2f}%" in card.text
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


@pytest.mark.slow
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
    assert "--github-repo: expected a GitHub repository OWNER/NAME" in capsys.readouterr().err

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


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "mine.pt"
    torch.save(Tiniest().state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--github-repo", "../x"), "--github-repo: expected a GitHub repository OWNER/NAME"),
        (("--github-repo", "alice/x;id"), "--github-repo: expected a GitHub repository OWNER/NAME"),
        (("--github-repo", "-alice/x"), "--github-repo: expected a GitHub repository OWNER/NAME"),
        (("--github-repo", "alice/.."), "--github-repo: expected a GitHub repository OWNER/NAME"),
        (("--hf-repo-id", "alice/x y"), "--hf-repo-id: expected a Hugging Face repo id OWNER/NAME"),
        (("--hf-repo-id", "../.."), "--hf-repo-id: expected a Hugging Face repo id OWNER/NAME"),
        (("--hf-repo-id", "c/d$(id)"), "--hf-repo-id: expected a Hugging Face repo id OWNER/NAME"),
        (("--tag", "../../../../evil/tag"), "--tag: expected a git tag, branch or commit name"),
        (("--tag", "-v1"), "--tag: expected a git tag, branch or commit name"),
        (("--hf-revision", "a..b"), "--hf-revision: expected a git tag, branch or commit name"),
        (("--hf-revision", "v1\x1b[2J"), "--hf-revision: expected a git tag, branch or commit name"),
        (("--name", "X\n# forged"), "--name: expected a Python identifier"),
        (("--name", "DEFAULT"), "--name: expected a Python identifier"),  # the alias of the pinned member
        (("--license-link", "javascript:alert(1)"), "--license-link: expected an http(s) URL"),
    ],
)
def test_names_that_github_the_hub_or_git_would_not_take_are_refused(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, str], expected: str
) -> None:
    chosen = dict(zip(MINE[::2], MINE[1::2], strict=True)) | {flags[0]: flags[1]}
    out = tmp_path / "out"
    assert release(weights, out, *(f"{flag}={value}" for flag, value in chosen.items())) == 1
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1 and "\x1b" not in err and not out.exists()


def test_publish_commands_run_exactly_the_named_commands(tmp_path: Path) -> None:
    """Pasting PUBLISH.md's commands into bash runs gh, hf and git with the names as single arguments, and nothing else.

    The names are hostile on purpose (release refuses them, but the commands must not trust that), and
    so is the output folder, which any user may name as they like.
    """
    record = {
        "name": "N", "filename": "tiniest-x.safetensors", "sha256": "0" * 64,
        "github": {"repo": "alice/x;id", "tag": "v1$(id)"},
        "huggingface": {"repo_id": "c/d$(id)", "revision": "r`id`", "filename": "model.safetensors"},
    }
    output = tmp_path / "my $(id); 'release'"
    files = [output / "tiniest-x.safetensors", output / "tiniest-x.pt"]
    text = publish_commands(record, output, files)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for command in ("gh", "hf", "git", "id"):  # each records its arguments instead of acting
        stub = stubs / command
        stub.write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            "with open(os.environ['STUB_LOG'], 'a') as log:\n"
            "    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n"
        )
        stub.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(log)}
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        subprocess.run(["bash", "-c", block], env=env, check=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    notes = "Tiniest weights N: tiniest-x.safetensors, sha256 " + "0" * 64
    assert calls == [
        ["gh", "release", "create", "v1$(id)", *map(str, files), "--repo", "alice/x;id", "--title", "v1$(id)",
         "--notes", notes],
        ["hf", "upload", "c/d$(id)", str(output / "huggingface"), ".", "--commit-message", "Tiniest N"],
        ["hf", "repos", "tag", "create", "c/d$(id)", "r`id`"],
        ["git", "push", "origin", "main"],
        ["git", "push", "origin", "main:hub"],
    ]
    assert "upload_folder(repo_id='c/d$(id)', folder_path=" in text


def test_overwrite_replaces_only_what_the_previous_record_lists(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert release(weights, out, *MINE) == 0
    old = json.loads((out / "release.json").read_text())["filename"]
    foreign = [out / "tiniest-mine.pt", out / "tiniest-notes.safetensors"]  # named alike, never released
    for path in foreign:
        path.write_bytes(b"mine")
    torch.manual_seed(1)
    torch.save(Tiniest().state_dict(), weights)
    assert release(weights, out, *MINE, "--overwrite") == 0
    new = json.loads((out / "release.json").read_text())["filename"]
    assert new != old and not (out / old).exists() and not (out / old.replace(".safetensors", ".pt")).exists()
    assert all(path.read_bytes() == b"mine" for path in foreign)

    # a record that is not one, or that names a file outside the folder, is refused before anything is removed
    record = json.loads((out / "release.json").read_text())
    (out / "release.json").write_text(json.dumps(record | {"filename": "../victim.safetensors"}))
    (tmp_path / "victim.safetensors").write_bytes(b"keep")
    assert release(weights, out, *MINE, "--overwrite") == 1
    assert "lists '../victim.safetensors'" in capsys.readouterr().err
    assert (tmp_path / "victim.safetensors").read_bytes() == b"keep" and (out / new).exists()
    (out / "release.json").write_text("[1, 2")
    assert release(weights, out, *MINE, "--overwrite") == 1
    assert "is not a release record" in capsys.readouterr().err and (out / new).exists()


@pytest.mark.parametrize("link", ["huggingface", "PUBLISH.md", "huggingface/README.md", "release.json"])
def test_outputs_that_are_symbolic_links_are_refused(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    out = tmp_path / "out"
    assert release(weights, out, *MINE) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = out / link
    target = elsewhere if link == "huggingface" else elsewhere / "victim"
    if target != elsewhere:
        target.write_bytes(b"keep")
    if path.is_dir():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    else:
        path.unlink()
    path.symlink_to(target)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    assert release(weights, out, *MINE, "--overwrite") == 1
    assert "is a symbolic link" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before and path.is_symlink()


def test_a_fine_tune_stopped_early_gets_a_hugging_face_card_that_says_so(
    tmp_path: Path, shared_checkpoint: Path
) -> None:
    """A run started from the published weights (``--init``), scored on a held-out validation split
    (``--val-fraction``) and stopped at epoch 1 of 2, released under a licence outside the Hub's list:
    the card's metadata, read by huggingface_hub, says exactly that."""
    data = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=1, classes=("ok", "defect"))
    run = tmp_path / "run"
    fine_tune = ("--init", str(shared_checkpoint), "--val-fraction", "0.5")
    assert train(data, run, "--epochs", "2", "--batch-size", "4", "--stop-after", "1", *fine_tune) == 0
    pinned = TiniestWeights.DEFAULT.release
    out = tmp_path / "release"
    licence = ("--license", "My Custom Licence v2")
    assert release(run / "checkpoint.pt", out, *MINE, *licence) == 1  # a licence the Hub lists not: its link too
    assert not out.exists()
    assert release(run / "checkpoint.pt", out, *MINE, *licence, "--license-link", "https://example.org/licence") == 0

    card = read_card(out / "huggingface")
    data_ = card.data.to_dict()
    assert (data_["license"], data_["license_name"], data_["license_link"]) == (
        "other", "my-custom-licence-v2", "https://example.org/licence"
    )
    assert data_["base_model"] == pinned.where["huggingface"]["repo_id"]  # fine-tuned from the published weights
    assert "datasets" not in data_ and card.data.eval_results is None  # a local folder is no Hub dataset
    meta = json.loads((out / "release.json").read_text())["meta"]
    assert "epochs=1 of 2 planned" in meta["recipe"] and "epochs=2," not in meta["recipe"]
    assert list(meta["metrics"]) == ["data validation"] and meta["metrics"]["data validation"]["split"] == "validation"
    text = card.text
    assert 'pip install "tiniest @ git+https://github.com/tiniest-models/tiniest"' in text
    assert "pip install tiniest\n" not in text and "https://github.com/tiniest-models/tiniest" in text
    assert "## Intended uses" in text and "## Limitations" in text
    made_by = names.markdown("val_fraction 0.5 of the train split, stratified by class, seed 0")
    assert f"| validation | 4 ({made_by}) |" in text
    assert f"Fine-tuned from: {names.markdown(pinned.name)} ([{pinned.where['huggingface']['repo_id']}]" in text
    assert "epochs=1 of 2 planned" in text and "My Custom Licence v2" in text


def test_a_fine_tune_scored_on_pictures_the_base_was_trained_on_says_so_in_the_card_and_the_terminal(
    tmp_path: Path, shared_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 29: fine-tuned from the published weights with ``--val-fraction`` on CIFAR-10's train split (the docs'
    example), the release reported a "validation" score the base weights had been trained on, without a word."""
    data = make_dataset(tmp_path / "cifar10", train_per_class=2, test_per_class=0)  # CIFAR-10's classes
    run = tmp_path / "run"
    assert train(data, run, "--epochs", "1", "--batch-size", "10", "--init", str(shared_checkpoint),
                 "--val-fraction", "0.5") == 0
    said = "the base weights were trained on CIFAR-10, train split of huggingface.co/datasets/ego-thales/cifar10"
    assert f"tiniest train: warning: {said}" in capsys.readouterr().err
    with pytest.warns(SeenScoreWarning, match=f"^CIFAR-10 validation: {re.escape(said)}"):  # the command prints it
        assert release(run, tmp_path / "out", *MINE) == 0
    card = read_card(tmp_path / "out" / "huggingface")
    assert f"**Caveat (CIFAR-10 validation):** {said}" in card.text
    assert f"itself trained on: {said.rsplit(' on ', 1)[1]}" in card.text  # the base weights' data, named


def test_a_fine_tune_of_an_earlier_run_on_its_own_data_is_warned_of_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same files: a run's model.pt carries no dataset, the checkpoint beside it does (a folder named 'parts')."""
    data = make_dataset(tmp_path / "parts", train_per_class=4, test_per_class=1, classes=("ok", "defect"))
    assert train(data, tmp_path / "base", "--epochs", "1", "--batch-size", "4") == 0
    capsys.readouterr()
    assert train(data, tmp_path / "tuned", "--epochs", "1", "--batch-size", "4", "--init", str(tmp_path / "base"),
                 "--val-fraction", "0.5") == 0
    said = "the base weights were trained on train split of a local dataset folder named 'parts' (8 images)"
    assert f"tiniest train: warning: {said}" in capsys.readouterr().err
    with pytest.warns(SeenScoreWarning, match=re.escape(said)):
        assert release(tmp_path / "tuned", tmp_path / "out", *MINE) == 0


@pytest.mark.parametrize(
    ("given", "expected"), [("MIT", {"license": "mit"}), ("Apache-2.0", {"license": "apache-2.0"})]
)
def test_hub_licence_ids_stay_ids(weights: Path, tmp_path: Path, given: str, expected: dict[str, str]) -> None:
    assert release(weights, tmp_path / "out", *MINE, "--license", given) == 0
    data = read_card(tmp_path / "out" / "huggingface").data.to_dict()
    assert {key: data[key] for key in data if key.startswith("license")} == expected


def test_publish_names_the_huggingface_hub_its_hf_commands_need(tmp_path: Path) -> None:
    """``hf auth login`` and ``hf upload`` came with huggingface_hub 0.34, ``hf repos`` with 1.5 (``hf repo``
    before, and no ``hf`` at all before 0.34): PUBLISH.md says which it needs, and that one knows the commands."""
    from importlib.metadata import version

    from packaging.version import Version

    from tiniest.release import HF_CLI_VERSION

    record = {
        "name": "N", "filename": "tiniest-x.safetensors", "sha256": "0" * 64,
        "github": {"repo": "alice/x", "tag": "v1"},
        "huggingface": {"repo_id": "alice/x", "revision": "v1", "filename": "model.safetensors"},
    }
    text = publish_commands(record, tmp_path, [tmp_path / "tiniest-x.safetensors"])
    assert f"the `hf` command of huggingface_hub {HF_CLI_VERSION} or later" in text
    assert f'pip install -U "huggingface_hub>={HF_CLI_VERSION}"' in text
    hf = Path(sys.executable).with_name("hf")
    if Version(version("huggingface_hub")) < Version(HF_CLI_VERSION) or not hf.is_file():
        pytest.skip(f"the installed huggingface_hub is older than {HF_CLI_VERSION}, or has no hf command here")
    for words in (["auth", "login"], ["upload"], ["repos", "tag", "create"]):
        assert f"hf {' '.join(words)}" in text, words
        run = subprocess.run([str(hf), *words, "--help"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HF_HUB_DISABLE_UPDATE_CHECK": "1"})
        assert run.returncode == 0, (words, run.stdout, run.stderr)


# --- hostile parent files, records and sources ---------------------------------------------------------------------


def parent_file(path: Path, **meta: object) -> Path:
    """A safetensors whose metadata is ``meta`` over CIFAR-10's names, as a parent file would carry it."""
    from tiniest.weights.artifact import artifact_metadata, to_safetensors

    torch.manual_seed(2)
    full = {"categories": list(TiniestWeights.DEFAULT.meta["categories"]), **meta}
    path.write_bytes(to_safetensors(Tiniest().state_dict(), artifact_metadata(full, source_sha256="")))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_base_model_repo_id_that_is_markup_never_reaches_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inherited base_model.hf_repo_id went into the card's Markdown as a link: <img onerror>, javascript:."""
    base = {"name": "x", "sha256": "0" * 64, "hf_repo_id": "a/b)<img src=x onerror=alert(1)>[c](javascript:alert(1))"}
    parent = parent_file(tmp_path / "parent.safetensors", base_model=base)
    assert release(parent, tmp_path / "out", *MINE) == 1
    line = one_error_line(capsys)
    assert "parent.safetensors: base_model: hf_repo_id: expected a Hugging Face repo id" in line, line
    assert not (tmp_path / "out" / "huggingface" / "README.md").exists()


@pytest.mark.parametrize("categories", ["abcdefghij", 15055, ["a", 1, "b", "c", "d", "e", "f", "g", "h", "i"]])
def test_categories_that_are_no_list_of_names_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], categories: object
) -> None:
    """A string gave one class per letter (ten letters: ten "classes"), written by export and then unloadable."""
    parent = parent_file(tmp_path / "parent.safetensors", categories=categories)
    assert release(parent, tmp_path / "out", *MINE) == 1
    assert "parent.safetensors: categories: expected a list of class names, got" in one_error_line(capsys)
    assert main(["export", str(parent), "--output", str(tmp_path / "exported")]) == 1
    assert "categories: expected a list of class names" in one_error_line(capsys)
    assert not list((tmp_path / "exported").glob("*.safetensors")) if (tmp_path / "exported").exists() else True


def test_a_release_json_nested_past_the_parser_is_one_line(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "release.json").write_text("[" * 100_000)
    assert release(weights, out, *MINE, "--overwrite") == 1
    line = one_error_line(capsys)
    assert "release.json is not a release record (RecursionError" in line, line


def test_overwrite_deletes_only_the_recorded_bytes_inside_the_folder(weights: Path, tmp_path: Path) -> None:
    """A release.json copied from elsewhere named files that --overwrite deleted unchecked: only files of the
    recorded size and sha256, inside --output, are replaced; any other stays, and the command says so."""
    out = tmp_path / "out"
    assert release(weights, out, *MINE) == 0
    record = json.loads((out / "release.json").read_text())
    asset, original = out / record["filename"], out / Path(record["source"]["path"]).name
    asset.write_bytes(b"my own notes, not the release")  # the name the record gives, other bytes
    elsewhere = tmp_path / "elsewhere.pt"
    elsewhere.write_bytes(original.read_bytes())  # the recorded bytes, but outside the folder, behind a link
    original.unlink()
    original.symlink_to(elsewhere)
    torch.manual_seed(1)
    torch.save(Tiniest().state_dict(), weights)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert release(weights, out, *MINE, "--overwrite") == 0
    assert asset.read_bytes() == b"my own notes, not the release" and original.is_symlink() and elsewhere.exists()
    from tiniest.release import KeptFileWarning

    warned = [str(warning.message) for warning in caught if issubclass(warning.category, KeptFileWarning)]
    assert len(warned) == 2, warned
    assert "is not the recorded file" in warned[0] and "is a link or lies outside the folder" in warned[1]

    # the new release's own files match its record: a second --overwrite replaces them
    new = json.loads((out / "release.json").read_text())
    torch.manual_seed(3)
    torch.save(Tiniest().state_dict(), weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeptFileWarning)  # nothing kept: the record's own bytes
        assert release(weights, out, *MINE, "--overwrite") == 0
    assert not (out / new["filename"]).exists()


def test_the_source_is_read_bounded_and_a_fifo_says_it_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """release read the whole source (a 3 GiB file: 3.37 GB RSS) where export stops at TINIEST_MAX_DOWNLOAD_MB;
    a FIFO was reported as "does not exist"."""
    monkeypatch.setenv("TINIEST_MAX_DOWNLOAD_MB", "1")
    big = tmp_path / "big.pt"
    with open(big, "wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: 3 GiB of zeros
    assert release(big, tmp_path / "out", *MINE) == 1
    assert "holds more than 1,048,576 bytes" in one_error_line(capsys)
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    assert release(fifo, tmp_path / "out", *MINE) == 1
    line = one_error_line(capsys)
    assert "is a FIFO (named pipe), not a regular file" in line and "does not exist" not in line, line
