"""``tiniest release``: from a finished run (or a checkpoint) to everything a publication needs.

Into ``--output`` it writes the release asset (the deterministic safetensors that ``tiniest
export`` makes), the plain state_dict it was built from (``<stem>.pt``, the record's "original"
source for a new release), a Hugging Face model folder (``huggingface/``: the same
``model.safetensors``, ``config.json`` and a model card), the entry for ``tiniest/release.json``
and ``PUBLISH.md`` with one command per destination. Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiniest.artifact import is_safetensors, sha256_hex
from tiniest.release import CLASSES, Release, TiniestWeights
from tiniest.store import save_atomically
from tiniest.weights import build_artifact

HELP = "build the release asset, the Hugging Face model folder and the release record from a run or checkpoint"

HF_FOLDER = "huggingface"
RECORD_NAME = "release.json"
INSTRUCTIONS_NAME = "PUBLISH.md"


@dataclass(frozen=True)
class Source:
    """The state_dict bytes to publish, where they came from, and the training run behind them if known."""

    checkpoint: bytes
    origin: str
    run: dict[str, Any] | None


def _training_checkpoint(data: bytes) -> dict[str, Any] | None:
    from tiniest.trainer import CHECKPOINT_FORMAT

    if is_safetensors(data):  # a state_dict, never a training checkpoint
        return None
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all: build_artifact reports it properly
        return None
    return loaded if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT else None


def read_source(path: Path) -> Source:
    """A run folder (its ``model.pt``), a training ``checkpoint.pt`` or a state_dict file."""
    from tiniest.trainer import CHECKPOINT_NAME, MODEL_NAME, averaged_state_dict, load_checkpoint

    if path.is_dir():
        model_path, checkpoint_path = path / MODEL_NAME, path / CHECKPOINT_NAME
        run = load_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
        if model_path.is_file():
            return Source(model_path.read_bytes(), str(model_path), run)
        if run is not None:
            raise ValueError(
                f"{path}: the run stopped after epoch {run['epoch']} of {run['recipe']['epochs']} and has no "
                f"{MODEL_NAME} yet; finish it with `tiniest train --resume`, or release {checkpoint_path} "
                "to publish its current averaged weights"
            )
        raise FileNotFoundError(f"{path}: expected a training run folder holding {MODEL_NAME} and {CHECKPOINT_NAME}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a run folder, a checkpoint.pt or a state_dict file)")
    data = path.read_bytes()
    run = _training_checkpoint(data)
    if run is None:
        return Source(data, str(path), None)
    buffer = io.BytesIO()
    torch.save(averaged_state_dict(run), buffer)
    return Source(buffer.getvalue(), f"{path} (averaged weights of epoch {run['epoch']})", run)


def _recipe_text(recipe: dict[str, Any]) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in recipe.items() if value is not None)
    return f"tiniest train, the recipe of https://github.com/xvel/cifar10-tiniest ({settings})"


def run_meta(run: dict[str, Any], pinned: dict[str, Any], license_name: str) -> dict[str, Any]:
    """Metadata of a trained run: the pinned release's facts, this run's data, recipe and accuracy."""
    classes = list(run["classes"])
    last = run["history"][-1] if run["history"] else None
    label = "CIFAR-10" if tuple(classes) == CLASSES else Path(str(run["data"]).rstrip("/")).name
    metrics: dict[str, Any] = {"note": "not measured"}
    if last is not None:
        metrics = {f"{label} test": {
            "accuracy": round(last["test_correct"] / last["test_total"], 4),
            "correct": last["test_correct"],
            "total": last["test_total"],
            "epoch": last["epoch"],
        }}
    return {
        "architecture": pinned["architecture"],
        "categories": classes,
        "num_params": pinned["num_params"],
        "dataset": f"train split of {run['data']} ({run.get('train_images', 'all')} images)",
        "recipe": _recipe_text(run["recipe"]),
        "preprocessing": pinned["preprocessing"],
        "metrics": metrics,
        "license": license_name,
        "credit": "Architecture and training recipe by github.com/xvel/cifar10-tiniest; trained with `tiniest train`",
    }


def release_record(
    *, name: str, filename: str, artifact: bytes, github: tuple[str, str], huggingface: tuple[str, str],
    source: dict[str, Any], meta: dict[str, Any],
) -> dict[str, Any]:
    """The entry of ``tiniest/release.json`` (same layout, same key order)."""
    return {
        "name": name,
        "filename": filename,
        "sha256": sha256_hex(artifact),
        "size": len(artifact),
        "github": {"repo": github[0], "tag": github[1]},
        "huggingface": {"repo_id": huggingface[0], "revision": huggingface[1], "filename": "model.safetensors"},
        "source": source,
        "meta": meta,
    }


def publish_commands(record: dict[str, Any], output: Path, files: list[Path]) -> str:
    """PUBLISH.md: one command per destination, then how the pinned record and the hub branch move."""
    repo, tag = record["github"]["repo"], record["github"]["tag"]
    hf_repo, hf_revision = record["huggingface"]["repo_id"], record["huggingface"]["revision"]
    quoted = " ".join(shlex.quote(str(f)) for f in files)
    notes = shlex.quote(f"Tiniest weights {record['name']}: {record['filename']}, sha256 {record['sha256']}")
    hf_folder = shlex.quote(str(output / HF_FOLDER))
    tag_hf = (f"hf repos tag create {hf_repo} {shlex.quote(hf_revision)}   # pins the revision in the record\n"
              if hf_revision != "main" else "")
    return f"""# Publishing {record["name"]} ({record["filename"]}, sha256 {record["sha256"]})

GitHub release asset (token: `gh auth login` or GH_TOKEN):

```bash
gh release create {shlex.quote(tag)} {quoted} --repo {repo} --title {shlex.quote(tag)} --notes {notes}
```

Hugging Face model repo (token: `hf auth login` or HF_TOKEN):

```bash
hf upload {hf_repo} {hf_folder} . --commit-message {shlex.quote("Tiniest " + record["name"])}
{tag_hf}```

(or, in Python: `huggingface_hub.upload_folder(repo_id="{hf_repo}", folder_path="{output / HF_FOLDER}")`.)

Then make it the pinned release: replace `tiniest/release.json` with `{output / RECORD_NAME}`, run the
tests, commit to `main`, and move the `hub` branch that torch.hub users name to that commit:

```bash
git push origin main && git push origin main:hub
```
"""


def _defaults(args: argparse.Namespace, release: Release, pinned: bool, sha8: str) -> dict[str, str]:
    """Names and places: the pinned release's for the pinned checkpoint, fresh ones otherwise."""
    return {
        "name": args.name or (release.name if pinned else f"CIFAR10_{sha8.upper()}"),
        "github_repo": args.github_repo or release.github_repo,
        "tag": args.tag or (release.github_tag if pinned else f"weights-{sha8}"),
        "hf_repo_id": args.hf_repo_id or release.hf_repo_id,
    }


def make_release(args: argparse.Namespace) -> dict[str, Any]:
    """Write every file of the release into ``args.output``; return the record."""
    from tiniest.pretrained import write_model_folder

    release = TiniestWeights.DEFAULT.release
    source = read_source(args.source)
    source_sha256 = sha256_hex(source.checkpoint)
    pinned = source_sha256 in {release.source_sha256, release.sha256}
    if pinned:
        meta = dict(release.meta)
        if args.metrics:
            raise ValueError("--metrics is for new weights; the published ones carry their pinned metrics")
    elif source.run is not None:
        meta = run_meta(source.run, release.meta, args.license)
    else:
        meta = {**release.meta, "metrics": {"note": "not measured"}, "license": args.license}
        meta["credit"] = "Architecture and training recipe by github.com/xvel/cifar10-tiniest"
        for key in ("dataset", "recipe", "copyright"):
            meta.pop(key, None)
    if args.metrics and not pinned:
        meta["metrics"] = json.loads(args.metrics.read_text(encoding="utf-8"))
    if source_sha256 == release.sha256:
        artifact = source.checkpoint  # already the release file
    else:
        artifact = build_artifact(source.checkpoint, meta, origin=source.origin)
    sha8 = sha256_hex(artifact)[:8]
    names = _defaults(args, release, pinned, sha8)
    output: Path = args.output
    if pinned:
        filename = release.filename
        origin = {"path": release.source_path, "sha256": release.source_sha256, "size": release.source_size}
        files = [output / filename]
    else:
        filename = f"tiniest-{sha8}.safetensors"
        original = output / f"tiniest-{sha8}.pt"
        save_atomically(original, source.checkpoint)
        path = f"{names['github_repo']}/releases/download/{names['tag']}/{original.name}"
        origin = {"path": path, "sha256": source_sha256, "size": len(source.checkpoint)}
        files = [output / filename, original]
    hf_revision = args.hf_revision or (release.hf_revision if pinned else names["tag"])
    record = release_record(
        name=names["name"], filename=filename, artifact=artifact, github=(names["github_repo"], names["tag"]),
        huggingface=(names["hf_repo_id"], hf_revision), source=origin, meta=meta,
    )
    save_atomically(output / filename, artifact)
    write_model_folder(output / HF_FOLDER, artifact, meta, repo_id=names["hf_repo_id"])
    save_atomically(output / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())
    save_atomically(output / INSTRUCTIONS_NAME, publish_commands(record, output, files).encode())
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a finished `tiniest train` folder, its checkpoint.pt, or a state_dict .pt/.safetensors")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write the release into")
    parser.add_argument("--name", help="release name, the TiniestWeights member (default: CIFAR10_<sha8>)")
    parser.add_argument("--github-repo", help="GitHub owner/name hosting the asset (default: the pinned one)")
    parser.add_argument("--tag", help="GitHub release tag (default: weights-<sha8>)")
    parser.add_argument("--hf-repo-id", help="Hugging Face model repo (default: the pinned one)")
    parser.add_argument("--hf-revision", help="Hub revision to pin in the record (default: the tag, created on upload)")
    parser.add_argument("--license", default="MIT", help="licence of new weights (default: MIT)")
    parser.add_argument("--metrics", type=Path, help="JSON file of measured metrics for weights without a run")


def run(args: argparse.Namespace) -> int:
    record = make_release(args)
    output: Path = args.output
    print(f"{output / record['filename']}\nsha256 {record['sha256']}\nsize {record['size']} bytes")
    print(f"Hugging Face folder: {output / HF_FOLDER}")
    print(f"release record: {output / RECORD_NAME}  (paste into tiniest/release.json)")
    print(f"how to publish: {output / INSTRUCTIONS_NAME}")
    return 0
