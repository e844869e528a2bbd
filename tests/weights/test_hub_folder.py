"""``Tiniest.from_pretrained`` / ``save_pretrained``: Hub-style folders, verified like the hub entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

import tiniest
from tests.loopback import LoopbackServer
from tiniest import Tiniest, TiniestWeights
from tiniest.errors import UnverifiedWeightsWarning, UsageError, WeightsNotFoundError
from tiniest.weights.formats import read_weights, sha256_hex

ROOT = Path(__file__).resolve().parents[2]
PINNED = TiniestWeights.DEFAULT.release
PINNED_REPO = PINNED.where["huggingface"]["repo_id"]


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors metadata of ``data``, as its strings."""
    return read_weights(data)[1]


def hub_cache_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay ``files`` out in a Hugging Face cache folder as the ``main`` snapshot of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return cache


def test_import_stays_light_and_the_methods_are_there() -> None:
    code = (
        "import sys, tiniest\n"
        "assert callable(tiniest.Tiniest.from_pretrained) and callable(tiniest.Tiniest.save_pretrained)\n"
        "heavy = ('huggingface_hub', 'kornia', 'PIL', 'matplotlib',\n"
        "         'tiniest.weights.hub_folder', 'tiniest.training.loop')\n"
        "print([name for name in heavy if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_published_weights_round_trip_to_the_release_bytes(shared_checkpoint: Path, tmp_path: Path) -> None:
    model = tiniest.tiniest(weights=shared_checkpoint)
    folder = model.save_pretrained(tmp_path / "published")
    assert sha256_hex((folder / "model.safetensors").read_bytes()) == PINNED.sha256
    assert json.loads((folder / "config.json").read_text())["num_classes"] == 10
    assert (folder / "README.md").read_text().startswith("---\n")
    assert "THALES" in read_metadata((folder / "model.safetensors").read_bytes())["copyright"]  # the publisher's own
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Tiniest.from_pretrained(folder)
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_other_weights_load_with_a_warning(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Tiniest()
    folder = model.save_pretrained(tmp_path / "mine")
    first = (folder / "model.safetensors").read_bytes()
    assert Tiniest().save_pretrained(tmp_path / "other") and model.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == first  # deterministic bytes
    with pytest.warns(UnverifiedWeightsWarning):
        loaded = Tiniest.from_pretrained(str(folder), device="cpu")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # anyone's weights: no publisher credit, licence or metrics; not called verified
    meta = read_metadata(first)
    assert "THALES" not in json.dumps(meta) and "ThalesGroup" not in json.dumps(meta) and "copyright" not in meta
    assert meta["license"] == "unknown" and json.loads(meta["metrics"]) == {"note": "not measured"}
    card = (folder / "README.md").read_text()
    assert "# verified" not in card and "UnverifiedWeightsWarning" in card and "THALES" not in card


def test_labels_travel_through_the_folder(tmp_path: Path) -> None:
    model = Tiniest(3, labels=["ant", "bee", "wasp"])
    folder = model.save_pretrained(tmp_path / "insects")
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "ant", "1": "bee", "2": "wasp"}
    with pytest.warns(UnverifiedWeightsWarning):
        loaded = Tiniest.from_pretrained(folder)
    assert loaded.labels == ("ant", "bee", "wasp") and loaded.fc.out_features == 3
    with pytest.raises(ValueError, match="expected 3 labels, one per output, got 2"):
        Tiniest(3, labels=["ant", "bee"])


def test_pinned_repo_id_must_serve_the_pinned_bytes(release_bytes: bytes, tmp_path: Path) -> None:
    cache = hub_cache_snapshot(tmp_path, PINNED_REPO, {"model.safetensors": release_bytes[:-4] + b"\0" * 4})
    with pytest.raises(WeightsNotFoundError, match="refusing unverified weights from the pinned repo"):
        Tiniest.from_pretrained(PINNED_REPO, local_files_only=True, cache_dir=cache)


def test_pinned_repo_id_loads_from_the_hub_cache(release_bytes: bytes, tmp_path: Path) -> None:
    config = json.dumps({"num_classes": 10}).encode()
    files = {"model.safetensors": release_bytes, "config.json": config}
    cache = hub_cache_snapshot(tmp_path, PINNED_REPO, files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = Tiniest.from_pretrained(PINNED_REPO, local_files_only=True, cache_dir=cache)
    assert model.fc.out_features == 10


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="someone/absent"):
        Tiniest.from_pretrained("someone/absent", local_files_only=True, cache_dir=tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="expected a folder"):
        Tiniest.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected model\.safetensors"):
        Tiniest.from_pretrained(tmp_path / "empty")
    folder = Tiniest().save_pretrained(tmp_path / "five")
    (folder / "config.json").write_text(json.dumps({"num_classes": 5}))
    with pytest.warns(UnverifiedWeightsWarning), pytest.raises(ValueError, match="does not fit"):
        Tiniest.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="expected JSON"):
        Tiniest.from_pretrained(folder)


def test_repo_ids_and_revisions_are_checked_before_the_hub_is_asked(tmp_path: Path, server: LoopbackServer) -> None:
    """A revision is a file name in huggingface_hub's cache (refs/<revision>): '..' in it wrote outside the cache."""
    escape = "../../../../escaped"  # from HF_HOME/hub/models--someone--x/refs/ up to tmp_path
    info = json.dumps({"id": "someone/x", "sha": "0" * 40, "siblings": [], "private": False}).encode()
    server.serve(f"/api/models/someone/x/revision/{quote(escape, safe='')}", info)
    server.serve(f"/api/models/someone/x/tree/{'0' * 40}", b"[]")
    script = (
        "import sys; from tiniest import Tiniest\n"
        "for repo_id, revision in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    try:\n        Tiniest.from_pretrained(repo_id, revision=revision or None)\n"
        "    except Exception as error:\n        print(type(error).__name__, str(error).splitlines()[0])\n"
    )
    tries = ["someone/x", escape, "someone/x y", "", "someone/x", "main:x", "someone/x", "v1.lock"]
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, *tries], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.splitlines()
    assert len(lines) == len(tries) // 2, done.stdout + done.stderr
    assert [line.split(" ", 1)[0] for line in lines] == ["UsageError"] * len(lines), done.stdout
    assert "revision: expected a git tag" in lines[0] and "repo_id_or_folder: expected a Hugging Face" in lines[1]
    assert not (tmp_path / "escaped").exists() and server.paths_requested() == []


def test_model_card_shows_names_literally_and_its_front_matter_stays_valid() -> None:
    """Class names, metric labels and the data's description reach the card's body as text, never as markup."""
    import yaml
    from huggingface_hub import ModelCard
    from markdown_it import MarkdownIt

    from tiniest.weights.hub_folder import model_card

    hostile = ["<script>alert(1)</script>", "**bold** | cell", "[link](https://evil.example)", "two\n# lines", "$x$"]
    meta = {
        "categories": hostile,
        "dataset": "train split of </td><img src=x onerror=alert(1)>, hf://someone/data\n---\nforged: yes",
        "metrics": {"<b>mine</b> test": {"accuracy": 0.5, "total": 10}, "x | y": {"accuracy": 0.25, "total": 4}},
        "credit": "<iframe src=//evil.example>",
    }
    card = model_card(meta, sha256="0" * 64, repo_id="alice/x")
    front, body = card.split("\n---\n", 2)[0], card.split("\n---\n", 1)[1]
    data = yaml.safe_load(front.removeprefix("---\n"))
    assert data["datasets"] == ["someone/data"] and "forged" not in data
    assert ModelCard(card).data.eval_results[0].dataset_name == "<b>mine</b>"  # YAML keeps it as a plain value

    html = MarkdownIt("commonmark").enable("table").render(body)
    assert not any(tag in html for tag in ("<script", "<img", "<iframe", "<b>", "<strong>", "<em>")), html
    links = re.findall(r'<a href="([^"]*)"', html)  # the card's own links only: architecture, code, loading code
    assert html.count("<a ") == len(links) == 3 and not any("evil.example" in link for link in links), links
    assert html.count("<h1>") == 1 and "<td>x | y</td>" in html  # one heading; the cell is not split
    assert "&lt;script&gt;alert(1)&lt;/script&gt;, **bold** | cell, [link](https://evil.example), two\\n# lines" in html
    with pytest.raises(UsageError, match="repo_id: expected a Hugging Face repo id"):
        model_card(meta, sha256="0" * 64, repo_id="alice/x y")


BAD_METRICS = [
    ({"test": {"accuracy": "95%"}}, "'test' accuracy: expected a finite number in [0, 1], got '95%'"),
    ({"test": {"accuracy": 95}}, "'test' accuracy: expected a finite number in [0, 1], got 95"),
    ({"test": {"accuracy": 0.9, "total": "10k"}}, "'test' total: expected a positive whole number, got '10k'"),
    ({"test": {"accuracy": 0.9, "total": 0}}, "'test' total: expected a positive whole number, got 0"),
    ({"test": {"accuracy": 0.9, "total": 5, "subset_of": 1.5}}, "'test' subset_of: expected a positive whole"),
]


@pytest.mark.parametrize(("metrics", "expected"), BAD_METRICS)
def test_bad_metrics_are_refused_before_a_release_is_touched(
    metrics: dict, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tiniest release --metrics`` over an earlier release: one line, and the earlier release left whole."""
    from tiniest.commands import main

    torch.manual_seed(0)
    torch.save(Tiniest().state_dict(), tmp_path / "mine.pt")
    out = tmp_path / "out"
    mine = ["--github-repo", "someone/tiniest", "--hf-repo-id", "someone/tiniest-v2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no class names: a bare state_dict)
        assert main(["release", str(tmp_path / "mine.pt"), "--output", str(out), *mine]) == 0
        before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        torch.manual_seed(1)
        torch.save(Tiniest().state_dict(), tmp_path / "mine.pt")
        flags = ["--metrics", str(tmp_path / "metrics.json"), "--overwrite"]
        assert main(["release", str(tmp_path / "mine.pt"), "--output", str(out), *mine, *flags]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"tiniest release: error: --metrics {tmp_path / 'metrics.json'}: ")
    assert expected in error[0], error
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(("metrics", "expected"), [*BAD_METRICS[:1], ({"x": {"accuracy": float("nan")}}, "got nan")])
def test_bad_metrics_inherited_from_a_file_are_refused_naming_it(metrics: dict, expected: str, tmp_path: Path) -> None:
    from tiniest.errors import ArtifactError
    from tiniest.weights.artifact import artifact_metadata, to_safetensors
    from tiniest.weights.metadata import checkpoint_meta

    state = Tiniest().state_dict()
    meta = {"categories": list(tiniest.CLASSES), "metrics": metrics}
    data = to_safetensors(state, artifact_metadata(meta, source_sha256=""))
    with pytest.raises(ArtifactError, match=rf"^mine\.safetensors: metrics: .*{re.escape(expected)}"):
        checkpoint_meta(data, state, origin="mine.safetensors")


def test_the_pinned_repos_file_is_read_once_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pinned repo's model.safetensors past TINIEST_MAX_DOWNLOAD_MB is refused unread, not hashed whole first."""
    monkeypatch.setenv("TINIEST_MAX_DOWNLOAD_MB", "1")
    cache = hub_cache_snapshot(tmp_path, PINNED_REPO, {"model.safetensors": b""})
    with open(next(cache.rglob("model.safetensors")), "wb") as handle:
        handle.truncate(2 * 1024 * 1024)  # sparse: 2 MiB of zeros
    with pytest.raises(WeightsNotFoundError, match=r"holds more than 1,048,576 bytes"):
        Tiniest.from_pretrained(PINNED_REPO, local_files_only=True, cache_dir=cache)


def test_a_config_json_larger_than_any_config_is_refused_unread(tmp_path: Path) -> None:
    folder = Tiniest().save_pretrained(tmp_path / "mine")
    config = folder / "config.json"
    config.write_bytes(config.read_bytes() + b" " * 2 * 1024 * 1024)  # still valid JSON, past 1 MiB
    with pytest.raises(OSError, match=r"config\.json' holds more than 1,048,576 bytes"):
        Tiniest.from_pretrained(folder)


# --- hostile parent files and Hub repos ---------------------------------------------------------------------------

HOSTILE_REPO_ID = "a/b)<img src=x onerror=alert(1)>[click](javascript:alert(1))"


def parent_folder(folder: Path, **meta: object) -> Path:
    """A Hub folder whose model.safetensors carries ``meta`` as a parent file's metadata would."""
    from tiniest.weights.artifact import artifact_metadata, to_safetensors

    folder.mkdir()
    full = {"categories": list(tiniest.CLASSES), **meta}
    data = to_safetensors(Tiniest().state_dict(), artifact_metadata(full, source_sha256=""))
    (folder / "model.safetensors").write_bytes(data)
    return folder


def test_save_pretrained_refuses_a_base_model_repo_id_that_is_markup(tmp_path: Path) -> None:
    """An inherited base_model.hf_repo_id went into the card as a link: HTML and a javascript: link on the Hub page."""
    from tiniest.errors import ArtifactError

    base = {"name": "x", "sha256": "0" * 64, "hf_repo_id": HOSTILE_REPO_ID}
    with pytest.warns(UnverifiedWeightsWarning):
        model = Tiniest.from_pretrained(parent_folder(tmp_path / "parent", base_model=base))
    with pytest.raises(ArtifactError, match=r"^the weights' metadata: base_model: hf_repo_id: expected a Hugging Face"):
        model.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / "README.md").exists()


def test_save_pretrained_refuses_metrics_that_are_no_numbers_in_one_line(tmp_path: Path) -> None:
    from tiniest.errors import ArtifactError

    with pytest.warns(UnverifiedWeightsWarning):
        model = Tiniest.from_pretrained(parent_folder(tmp_path / "parent", metrics={"test": {"accuracy": "high"}}))
    expected = r"metrics: 'test' accuracy: expected a finite number in \[0, 1\], got 'high'"
    with pytest.raises(ArtifactError, match=expected):
        model.save_pretrained(tmp_path / "again")


def test_a_config_json_nested_past_the_parser_is_one_artifact_error(tmp_path: Path) -> None:
    from tiniest.errors import ArtifactError

    folder = Tiniest().save_pretrained(tmp_path / "mine")
    (folder / "config.json").write_text("[" * 100_000)  # 100 KB: within the size bound, past Python's recursion
    with pytest.raises(ArtifactError, match=r"config\.json: expected JSON of a config \(RecursionError"):
        Tiniest.from_pretrained(folder)


def test_a_hub_file_announced_larger_than_the_cap_is_refused_before_any_download(
    tmp_path: Path, server: LoopbackServer
) -> None:
    """snapshot_download fetched whatever the repo held (a 300 MB disk filled in 3 s against 10 GB announced):
    the sizes the Hub announces are read first, and a file past TINIEST_MAX_DOWNLOAD_MB is never requested."""
    from tests.loopback import hf_resolve_path, serve_like_the_hub

    commit = "c" * 40
    big, small = 10 * 1024**3, Tiniest().save_pretrained(tmp_path / "small")
    data = (small / "model.safetensors").read_bytes()
    for repo_id, size in (("someone/big", big), ("someone/small", len(data))):
        siblings = [{"rfilename": "model.safetensors", "size": size}, {"rfilename": "README.md", "size": 10}]
        info = {"id": repo_id, "sha": commit, "siblings": siblings, "private": False}
        for route in (f"/api/models/{repo_id}", f"/api/models/{repo_id}/revision/main"):
            server.serve(route, json.dumps(info).encode())
        tree = [{"type": "file", "path": sibling["rfilename"], "size": sibling["size"], "oid": "0" * 40}
                for sibling in siblings]
        server.serve(f"/api/models/{repo_id}/tree/{commit}", json.dumps(tree).encode())  # what snapshot_download asks
        serve_like_the_hub(server, repo_id, commit, "model.safetensors", data)
    script = (
        "import sys, warnings; warnings.simplefilter('ignore'); from tiniest import Tiniest\n"
        "for repo_id in sys.argv[1:]:\n"
        "    try:\n        print('loaded', Tiniest.from_pretrained(repo_id).fc.out_features)\n"
        "    except Exception as error:\n        print(type(error).__name__, str(error).splitlines()[0])\n"
    )
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TINIEST_MAX_DOWNLOAD_MB": "1"}
    done = subprocess.run([sys.executable, "-c", script, "someone/big", "someone/small"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    requested = server.paths_requested()
    assert hf_resolve_path("someone/big", commit, "model.safetensors") not in requested, requested
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert lines[0] == (
        "DownloadError the Hugging Face repo 'someone/big' (revision main): model.safetensors is announced as "
        "10,737,418,240 bytes, more than the 1,048,576 allowed (TINIEST_MAX_DOWNLOAD_MB); not downloaded"
    ), lines
    assert lines[1] == "loaded 10", done.stdout + done.stderr  # a small repo loads, README.md never fetched
    assert hf_resolve_path("someone/small", commit, "model.safetensors") in requested
    assert not any(path.endswith("README.md") for path in requested), requested


def rendered_text(card: str) -> str:
    """The card's body as a reader sees it: rendered, tags removed, entities decoded."""
    import html

    from markdown_it import MarkdownIt

    body = card.split("\n---\n", 1)[1]
    return html.unescape(re.sub(r"<[^>]+>", "", MarkdownIt("commonmark").enable("table").render(body)))


def test_saved_new_weights_claim_no_metric_and_their_card_renders_as_written(tmp_path: Path) -> None:
    """Issue 29: ``metrics: [accuracy]`` in the front matter over a body saying "Not measured"; ``mit.``; backticks."""
    from huggingface_hub import ModelCard

    from tiniest.weights.hub_folder import model_card
    from tiniest.weights.metadata import weights_meta

    torch.manual_seed(0)
    Tiniest().save_pretrained(tmp_path / "mine")
    card = (tmp_path / "mine" / "README.md").read_text(encoding="utf-8")
    assert "metrics" not in ModelCard(card).data.to_dict() and "Not measured." in card
    run = {"data": "/data/cifar10", "classes": list(tiniest.CLASSES), "recipe": {"epochs": 1}, "history": []}
    meta = weights_meta(Tiniest().state_dict(), run=run, license="mit")
    text = rendered_text(model_card(meta, sha256="0" * 64))
    assert "`" not in text, "a backtick shown literally"
    assert "mit." not in text and "Licence: mit\n" in text


def test_a_score_the_base_weights_may_have_seen_is_a_caveat_not_a_hub_result() -> None:
    from huggingface_hub import ModelCard

    from tiniest.weights.hub_folder import model_card

    caveat = "the base weights were trained on it"
    meta = {
        "categories": list(tiniest.CLASSES),
        "dataset": "train split of huggingface.co/datasets/someone/data (100 images), 10 classes",
        "base_model": {"name": "CIFAR10_V1", "sha256": "1" * 64, "dataset": "CIFAR-10, train split of `x`"},
        "metrics": {"CIFAR-10 validation": {"accuracy": 0.98, "total": 20, "split": "validation", "caveat": caveat},
                    "CIFAR-10 test": {"accuracy": 0.9, "total": 10, "split": "test"}},
    }
    card = model_card(meta, sha256="0" * 64)
    results = ModelCard(card).data.eval_results
    assert [result.dataset_split for result in results] == ["test"], "the seen score is not published to the Hub"
    text = rendered_text(card)
    assert f"Caveat (CIFAR-10 validation): {caveat}." in text
    assert "itself trained on: CIFAR-10, train split of `x`" in text  # the base's data, its backticks as written


@pytest.mark.parametrize(
    ("base", "data", "split", "warned"),
    [
        ("CIFAR-10, train split of huggingface.co/datasets/ego-thales/cifar10", "/home/me/cifar10", "validation", True),
        ("CIFAR-10, train split of huggingface.co/datasets/ego-thales/cifar10", "/home/me/cifar10", "test", False),
        ("CIFAR-10 (all of it)", "/home/me/pictures", "test", True),  # no split named: the test split may be in it
        ("train split of huggingface.co/datasets/me/parts (80 images)", "hf://me/parts", "validation", True),
        ("train split of huggingface.co/datasets/me/parts (80 images)", "hf://me/other", "validation", False),
        ("train split of a local dataset folder named 'parts' (80 images)", "/x/parts", "validation", True),
        ("train split of a local dataset folder named 'parts' (80 images)", "/x/parts2", "validation", False),
        (None, "/home/me/cifar10", "validation", False),
    ],
)
def test_a_held_out_split_overlapping_the_base_weights_data_is_named(
    base: str | None, data: str, split: str, warned: bool
) -> None:
    from tiniest.weights.metadata import overlap_caveat

    classes = list(tiniest.CLASSES) if "cifar" in data or "pictures" in data else ["ok", "defect"]
    caveat = overlap_caveat(base, data, classes, split)
    assert (caveat is not None) is warned
    if caveat is not None:
        assert base is not None and base in caveat and f"the {split} pictures" in caveat and "\n" not in caveat
