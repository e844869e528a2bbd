"""``tiniest release``: from a finished run (or a checkpoint) to everything a publication needs.

Into ``--output`` it writes the release asset (the deterministic safetensors that ``tiniest
export`` makes), the plain state_dict it was built from (``<stem>.pt``, the record's "original"
source for a new release), a Hugging Face model folder (``huggingface/``: the same
``model.safetensors``, ``config.json`` and a model card), the entry for ``tiniest/weights/release.json``
and ``PUBLISH.md`` with one command per destination. Nothing here touches the network.
:func:`make_release` does it with keyword arguments; :func:`run` converts the command line's.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiniest import names
from tiniest.commands._common import read_metrics
from tiniest.errors import UsageError
from tiniest.export import artifact_bytes
from tiniest.storage import check_output_folder, save_atomically
from tiniest.weights import TiniestWeights
from tiniest.weights.artifact import read_state_dict, sha256_hex
from tiniest.weights.hub_folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, write_model_folder
from tiniest.weights.metadata import checkpoint_meta, dataset_name, is_cifar10, is_published
from tiniest.weights.run_files import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    averaged_state_dict,
    load_checkpoint,
    state_dict_bytes,
    training_checkpoint,
)

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


def read_source(path: Path) -> Source:
    """A run folder (its ``model.pt``), a training ``checkpoint.pt`` or a state_dict file."""
    if path.is_dir():
        model_path, checkpoint_path = path / MODEL_NAME, path / CHECKPOINT_NAME
        run = load_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
        if model_path.is_file():
            return Source(model_path.read_bytes(), str(model_path), run)
        if run is not None:
            raise UsageError(
                f"{path}: the run stopped after epoch {run['epoch']} of {run['recipe']['epochs']} and has no "
                f"{MODEL_NAME} yet; finish it with `tiniest train --resume`, or release {checkpoint_path} "
                "to publish its current averaged weights"
            )
        raise FileNotFoundError(f"{path}: expected a training run folder holding {MODEL_NAME} and {CHECKPOINT_NAME}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a run folder, a checkpoint.pt or a state_dict file)")
    data = path.read_bytes()
    run = training_checkpoint(data)
    if run is None:
        return Source(data, str(path), None)
    return Source(state_dict_bytes(averaged_state_dict(run)), f"{path} (averaged weights of epoch {run['epoch']})", run)


def release_record(
    *, name: str, filename: str, artifact: bytes, github: tuple[str, str], huggingface: tuple[str, str],
    source: dict[str, Any], meta: dict[str, Any],
) -> dict[str, Any]:
    """The entry of ``tiniest/weights/release.json`` (same layout, same key order)."""
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
    """PUBLISH.md: one command per destination, then how the pinned record and the hub branch move.

    Every name and path in a command is shell-quoted: pasting the commands runs them and nothing else.
    """
    repo, tag = shlex.quote(record["github"]["repo"]), shlex.quote(record["github"]["tag"])
    hf_repo, hf_revision = record["huggingface"]["repo_id"], record["huggingface"]["revision"]
    quoted = " ".join(shlex.quote(str(f)) for f in files)
    notes = shlex.quote(f"Tiniest weights {record['name']}: {record['filename']}, sha256 {record['sha256']}")
    hf_folder = shlex.quote(str(output / HF_FOLDER))
    pin = f"hf repos tag create {shlex.quote(hf_repo)} {shlex.quote(hf_revision)}   # pins the revision in the record"
    tag_hf = f"{pin}\n" if hf_revision != "main" else ""
    return f"""# Publishing {record["name"]} ({record["filename"]}, sha256 {record["sha256"]})

GitHub release asset (token: `gh auth login` or GH_TOKEN):

```bash
gh release create {tag} {quoted} --repo {repo} --title {tag} --notes {notes}
```

Hugging Face model repo (token: `hf auth login` or HF_TOKEN):

```bash
hf upload {shlex.quote(hf_repo)} {hf_folder} . --commit-message {shlex.quote("Tiniest " + record["name"])}
{tag_hf}```

(or, in Python: `huggingface_hub.upload_folder(repo_id={hf_repo!r}, folder_path={str(output / HF_FOLDER)!r})`.)

Then make it the pinned release: replace `tiniest/weights/release.json` with `{output / RECORD_NAME}`, run the
tests, commit to `main`, and move the `hub` branch that torch.hub users name to that commit:

```bash
git push origin main && git push origin main:hub
```
"""


def _release_name(categories: list[str], run: dict[str, Any] | None, sha8: str) -> str:
    """``CIFAR10_<SHA8>`` for CIFAR-10's classes, else named after the run's data (a TiniestWeights member name)."""
    if is_cifar10(categories):
        prefix = "CIFAR10"
    else:
        prefix = re.sub(r"[^A-Z0-9]+", "_", dataset_name(str(run["data"])).upper()).strip("_") if run else ""
        prefix = prefix if prefix and not prefix[0].isdigit() else f"TINIEST{'_' + prefix if prefix else ''}"
    return f"{prefix}_{sha8.upper()}"


def _check_names(name: str | None, github_repo: str | None, tag: str | None, hf_repo_id: str | None,
                 hf_revision: str | None) -> None:
    """Refuse, before any work, a name that GitHub, the Hub or git would not take as it is."""
    if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise UsageError(
            f"--name: expected a Python identifier such as CIFAR10_V2 (a TiniestWeights member), got {name!r}"
        )
    if github_repo is not None:
        names.github_repo(github_repo, "--github-repo")
    if hf_repo_id is not None:
        names.hf_repo_id(hf_repo_id, "--hf-repo-id")
    for value, flag in ((tag, "--tag"), (hf_revision, "--hf-revision")):
        if value is not None:
            names.git_ref(value, flag)


def _previous_release(output: Path) -> list[Path]:
    """The files that the release record in ``output`` lists (its asset and original), to be replaced.

    Only those: a file the record does not name stays, whatever it is called.
    """
    path = output / RECORD_NAME
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        listed = [record["filename"]]
        downloads = f"{record['github']['repo']}/releases/download/{record['github']['tag']}/"
        if record["source"]["path"].startswith(downloads):  # an original published beside the asset
            listed.append(record["source"]["path"].removeprefix(downloads))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UsageError(
            f"--overwrite: {path} is not a release record ({type(error).__name__}: {error}); "
            "remove it or choose another --output"
        ) from None
    for name in listed:
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise UsageError(f"--overwrite: {path} lists {name!r}; expected a file name in {output}")
    return [output / name for name in listed if (output / name).is_file() or (output / name).is_symlink()]


def _refuse_links(paths: list[Path]) -> None:
    """Refuse outputs that are symbolic links: the release writes its own files, never through a link."""
    for path in paths:
        if path.is_symlink():
            raise UsageError(
                f"--output: {path} is a symbolic link; release writes only plain files and folders: "
                "remove the link or choose another --output"
            )


def _check_output(output: Path, overwrite: bool) -> list[Path]:
    """Refuse an ``--output`` that cannot take the release; return the files of an earlier release to replace."""
    check_output_folder(output)
    present = sorted(output.iterdir()) if output.is_dir() else []
    if present and not overwrite:
        listing = ", ".join(p.name for p in present[:5]) + (", ..." if len(present) > 5 else "")
        raise FileExistsError(
            f"--output {output} already holds {names.printable(listing)}: choose an empty or new folder, "
            "or pass --overwrite to replace the release in it"
        )
    hf = output / HF_FOLDER
    _refuse_links([output / RECORD_NAME, output / INSTRUCTIONS_NAME, hf,
                   *(hf / name for name in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME))])
    return _previous_release(output)


def make_release(
    source_path: Path,
    output: Path,
    *,
    name: str | None = None,
    github_repo: str | None = None,
    tag: str | None = None,
    hf_repo_id: str | None = None,
    hf_revision: str | None = None,
    license: str | None = None,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write every file of the release of ``source_path`` (a run folder, checkpoint or state_dict) into ``output``.

    Returns the record. New weights need their own destinations (``github_repo``, ``hf_repo_id``):
    only the published checkpoint defaults to the pinned release's names and carries its record.
    """
    release = TiniestWeights.DEFAULT.release
    _check_names(name, github_repo, tag, hf_repo_id, hf_revision)
    replaced = _check_output(output, overwrite)
    source = read_source(source_path)
    source_sha256 = sha256_hex(source.checkpoint)
    pinned = is_published(source.checkpoint)
    state_dict = read_state_dict(source.checkpoint, origin=source.origin)
    meta = checkpoint_meta(
        source.checkpoint, state_dict, run=source.run, metrics=metrics, license=license, origin=source.origin
    )
    artifact = artifact_bytes(source.checkpoint, state_dict, meta, origin=source.origin)
    if not pinned and not (github_repo and hf_repo_id):
        missing = " and ".join(flag for flag, value in (("--github-repo OWNER/NAME", github_repo),
                                                         ("--hf-repo-id OWNER/NAME", hf_repo_id)) if not value)
        raise UsageError(
            f"new weights are published to your own repositories: pass {missing} "
            f"(the pinned {release.github_repo} and {release.hf_repo_id} are for the published checkpoint only)"
        )
    sha8 = sha256_hex(artifact)[:8]
    github_repo = github_repo or release.github_repo
    hf_repo_id = hf_repo_id or release.hf_repo_id
    name = name or (release.name if pinned else _release_name(meta["categories"], source.run, sha8))
    tag = tag or (release.github_tag if pinned else f"weights-{sha8}")
    filename = release.filename if pinned else f"tiniest-{sha8}.safetensors"
    original = output / f"tiniest-{sha8}.pt"
    _refuse_links([output / filename, original])
    for old in replaced:
        old.unlink()
    if pinned:
        origin = {"path": release.source_path, "sha256": release.source_sha256, "size": release.source_size}
        files = [output / filename]
    else:
        save_atomically(original, source.checkpoint)
        path = f"{github_repo}/releases/download/{tag}/{original.name}"
        origin = {"path": path, "sha256": source_sha256, "size": len(source.checkpoint)}
        files = [output / filename, original]
    hf_revision = hf_revision or (release.hf_revision if pinned else tag)
    record = release_record(
        name=name, filename=filename, artifact=artifact, github=(github_repo, tag),
        huggingface=(hf_repo_id, hf_revision), source=origin, meta=meta,
    )
    save_atomically(output / filename, artifact)
    write_model_folder(output / HF_FOLDER, artifact, meta, repo_id=hf_repo_id)
    save_atomically(output / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())
    save_atomically(output / INSTRUCTIONS_NAME, publish_commands(record, output, files).encode())
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a finished `tiniest train` folder, its checkpoint.pt, or a state_dict .pt/.safetensors")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write the release into")
    parser.add_argument("--name", help="release name, the TiniestWeights member (default: <DATA>_<SHA8>, "
                        "CIFAR10_<SHA8> for CIFAR-10's classes)")
    parser.add_argument("--github-repo", metavar="OWNER/NAME",
                        help="your GitHub repo hosting the asset (required for new weights)")
    parser.add_argument("--tag", help="GitHub release tag (default: weights-<sha8>)")
    parser.add_argument("--hf-repo-id", metavar="OWNER/NAME",
                        help="your Hugging Face model repo (required for new weights)")
    parser.add_argument("--hf-revision", help="Hub revision to pin in the record (default: the tag, created on upload)")
    parser.add_argument("--license", help="licence of new weights, e.g. MIT (default: unknown, unstated)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier release in --output (default: refuse a non-empty folder)")
    parser.add_argument("--metrics", type=Path, help="JSON file of measured metrics for weights without a run")


def run(args: argparse.Namespace) -> int:
    record = make_release(
        args.source,
        args.output,
        name=args.name,
        github_repo=args.github_repo,
        tag=args.tag,
        hf_repo_id=args.hf_repo_id,
        hf_revision=args.hf_revision,
        license=args.license,
        metrics=read_metrics(args.metrics),
        overwrite=args.overwrite,
    )
    output: Path = args.output
    shown = names.printable(str(output))
    print(f"{shown}/{record['filename']}\nsha256 {record['sha256']}\nsize {record['size']} bytes")
    print(f"Hugging Face folder: {shown}/{HF_FOLDER}")
    print(f"release record: {shown}/{RECORD_NAME}  (paste into tiniest/weights/release.json)")
    print(f"how to publish: {shown}/{INSTRUCTIONS_NAME}")
    return 0
