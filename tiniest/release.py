"""A release: from a finished run (or a checkpoint) to everything a publication needs.

Into ``output`` it writes the release asset (the deterministic safetensors that ``tiniest
export`` makes), the plain state_dict it was built from (``<stem>.pt``, the record's "original"
source for a new release), a Hugging Face model folder (``huggingface/``: the same
``model.safetensors``, ``config.json`` and a model card), the record for ``tiniest/weights/release.json``
(``release.json``) and ``PUBLISH.md`` with one command per destination. Nothing here touches the network.

The ``.pt`` is a bare state_dict, so that any torch program loads it with ``weights_only=True``:
its class names are in the record beside it, where every loader of tiniest looks for them
(``tiniest.weights.beside.release_beside``); ``PUBLISH.md`` uploads the record with it.
``make_release`` is the library function; ``tiniest release`` converts the command line to it.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiniest import names
from tiniest.errors import TiniestWarning, UsageError, first_line, warn
from tiniest.export import artifact_bytes
from tiniest.files import read_regular
from tiniest.storage import check_output_folder, save_atomically
from tiniest.weights import TiniestWeights
from tiniest.weights.fetch import max_download_bytes
from tiniest.weights.formats import read_state_dict, sha256_hex
from tiniest.weights.hub_folder import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, hub_license, write_model_folder
from tiniest.weights.metadata import checkpoint_meta, dataset_name, is_cifar10, is_published
from tiniest.weights.releases import MAX_RECORD_BYTES, RECORD_NAME, Release
from tiniest.weights.run_files import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    averaged_state_dict,
    load_checkpoint,
    state_dict_bytes,
    training_checkpoint,
)

__all__ = [
    "HF_FOLDER", "INSTRUCTIONS_NAME", "RECORD_NAME", "KeptFileWarning", "SeenScoreWarning", "Source", "make_release",
    "publish_commands", "read_source",
]

HF_FOLDER = "huggingface"
HF_CLI_VERSION = "1.5"  # the first huggingface_hub whose hf command has `hf repos` (0.34 to 1.4: `hf repo`)
INSTRUCTIONS_NAME = "PUBLISH.md"


@dataclass(frozen=True)
class Source:
    """The state_dict bytes to publish, where they came from, and the training run behind them if known."""

    checkpoint: bytes
    origin: str
    run: dict[str, Any] | None


@dataclass(frozen=True)
class _Built:
    """What is published of a source: its metadata and release file, and whether it is the pinned release."""

    source: Source
    meta: dict[str, Any]
    artifact: bytes
    pinned: bool


def _read_capped(path: Path) -> bytes:
    """The bytes of a source file: a regular file of at most TINIEST_MAX_DOWNLOAD_MB, as ``export`` reads it."""
    cap = max_download_bytes()
    try:
        return read_regular(path, cap)
    except OSError as error:
        raise OSError(
            f"{error.strerror or error} (expected a state_dict or checkpoint file of at most {cap:,} bytes, "
            "TINIEST_MAX_DOWNLOAD_MB)"
        ) from None


def read_source(path: Path) -> Source:
    """A run folder (its ``model.pt``), a training ``checkpoint.pt`` or a state_dict file.

    Read as ``export`` reads them: regular files only, at most ``TINIEST_MAX_DOWNLOAD_MB``
    (``tiniest.weights.fetch.max_download_bytes``), refused unread beyond.
    """
    if path.is_dir():
        model_path, checkpoint_path = path / MODEL_NAME, path / CHECKPOINT_NAME
        run = load_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
        if model_path.is_file():
            return Source(_read_capped(model_path), str(model_path), run)
        if run is not None:
            raise UsageError(
                f"{path}: the run stopped after epoch {run['epoch']} of {run['recipe']['epochs']} and has no "
                f"{MODEL_NAME} yet; finish it with `tiniest train --resume`, or release {checkpoint_path} "
                "to publish its current averaged weights"
            )
        raise FileNotFoundError(f"{path}: expected a training run folder holding {MODEL_NAME} and {CHECKPOINT_NAME}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a run folder, a checkpoint.pt or a state_dict file)")
    data = _read_capped(path)  # a FIFO says so; a file past the cap is refused unread
    run = training_checkpoint(data)
    if run is None:
        return Source(data, str(path), None)
    return Source(state_dict_bytes(averaged_state_dict(run)), f"{path} (averaged weights of epoch {run['epoch']})", run)


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

A plain `.pt` holds no class names: they are in `{RECORD_NAME}`, uploaded beside it. Whoever downloads
the `.pt` keeps it beside that file, and tiniest finds its names there.

Hugging Face model repo (the `hf` command of huggingface_hub {HF_CLI_VERSION} or later, which names `hf repos`:
`pip install -U "huggingface_hub>={HF_CLI_VERSION}"`; token: `hf auth login` or HF_TOKEN):

```bash
hf upload {shlex.quote(hf_repo)} {hf_folder} . --commit-message {shlex.quote("Tiniest " + record["name"])}
{tag_hf}```

(or, in Python: `huggingface_hub.upload_folder(repo_id={hf_repo!r}, folder_path={str(output / HF_FOLDER)!r})`.)

Then make it the pinned release of your checkout: replace `tiniest/weights/release.json` with
`{output / RECORD_NAME}`, declare its member in `tiniest/weights/releases.py` (`{record["name"]} = _PINNED` in
place of the member it replaces, so that type checkers see it), run the tests, commit to `main`, and
move the `hub` branch that torch.hub users name to that commit. Your checkout then loads it verified
by default and by its name, `weights="{record["name"]}"`; the name of the release it replaces is refused
there, never rebound.

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


def _check_license(license: str | None, license_link: str | None) -> None:
    """A licence named otherwise than by an id needs a link to its text (the card's ``license_link``)."""
    if license_link is not None:
        parts = urllib.parse.urlsplit(license_link)
        if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in license_link):
            raise UsageError(f"--license-link: expected an http(s) URL of the licence text, got {license_link!r}")
    if license is not None and hub_license(license) is None and license_link is None:
        raise UsageError(
            f"--license {license!r} is no licence id (letters, digits, '.', '-', '+', such as mit, apache-2.0, "
            "cc-by-4.0): pass --license-link URL of its text too, for the card's license: other"
        )


def _check_names(name: str | None, github_repo: str | None, tag: str | None, hf_repo_id: str | None,
                 hf_revision: str | None) -> None:
    """Refuse, before any work, a name that GitHub, the Hub or git would not take as it is."""
    if name is not None:
        names.release_name(name, "--name")
    if github_repo is not None:
        names.github_repo(github_repo, "--github-repo")
    if hf_repo_id is not None:
        names.hf_repo_id(hf_repo_id, "--hf-repo-id")
    for value, flag in ((tag, "--tag"), (hf_revision, "--hf-revision")):
        if value is not None:
            names.git_ref(value, flag)


class KeptFileWarning(TiniestWarning):
    """``--overwrite`` left a file that the earlier record names: not the bytes it recorded, or outside ``--output``."""


class SeenScoreWarning(TiniestWarning):
    """A released score's held-out pictures may be among those the base weights were trained on (the card says so)."""


def _recorded(record: dict[str, Any]) -> list[tuple[object, object, object]]:
    """``(name, sha256, size)`` of each file the record says its release wrote: the asset, and an original beside it."""
    listed = [(record["filename"], record["sha256"], record["size"])]
    downloads = f"{record['github']['repo']}/releases/download/{record['github']['tag']}/"
    source = record["source"]
    if source["path"].startswith(downloads):  # an original published beside the asset
        listed.append((source["path"].removeprefix(downloads), source["sha256"], source["size"]))
    return listed


def _is_recorded_file(path: Path, output: Path, sha256: object, size: object) -> str:
    """Why ``path`` is not the file its record describes (``""`` when it is): outside ``output``, or other bytes."""
    if not path.resolve().is_relative_to(output.resolve()) or path.is_symlink():
        return "is a link or lies outside the folder"
    if not isinstance(size, int) or isinstance(size, bool) or not isinstance(sha256, str):
        return "has no recorded sha256 and size"
    try:
        data = read_regular(path, size)
    except OSError as error:
        return f"is not the recorded {size:,} bytes ({first_line(error)})"
    if len(data) != size or sha256_hex(data) != sha256:
        return f"is not the recorded file ({len(data):,} bytes, sha256 {sha256_hex(data)[:16]}...)"
    return ""


def _previous_release(output: Path) -> list[Path]:
    """The files of the release recorded in ``output`` (its asset and original), to be replaced.

    Only those, and only while each holds the bytes the record gives (size and sha256) and lies
    inside ``output``: a record copied from elsewhere deletes nothing else; a file it names that
    differs stays, with a ``KeptFileWarning``.
    """
    path = output / RECORD_NAME
    if not path.is_file():
        return []
    try:
        record = json.loads(read_regular(path, MAX_RECORD_BYTES))
        listed = _recorded(record)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as error:
        raise UsageError(
            f"--overwrite: {path} is not a release record ({first_line(error, 120)}); "
            "remove it or choose another --output"
        ) from None
    replaced = []
    for name, sha256, size in listed:
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise UsageError(f"--overwrite: {path} lists {name!r}; expected a file name in {output}")
        old = output / name
        if not (old.is_file() or old.is_symlink()):
            continue
        problem = _is_recorded_file(old, output, sha256, size)
        if problem:
            warn(f"--overwrite: kept {names.printable(str(old))}, named by {path}: it {problem}", KeptFileWarning)
        else:
            replaced.append(old)
    return replaced


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


def _build(source: Source, **given: Any) -> _Built:
    """The metadata and release file of ``source``; ``given``: the maker's metrics, licence and its link."""
    state_dict = read_state_dict(source.checkpoint, origin=source.origin)
    meta = checkpoint_meta(source.checkpoint, state_dict, run=source.run, origin=source.origin, **given)
    artifact = artifact_bytes(source.checkpoint, state_dict, meta, origin=source.origin)
    for label, score in (meta.get("metrics") or {}).items():
        if isinstance(score, dict) and score.get("caveat"):
            warn(f"{label}: {score['caveat']}", SeenScoreWarning)
    return _Built(source, meta, artifact, is_published(source.checkpoint))


def _new_destinations(github_repo: str | None, hf_repo_id: str | None) -> tuple[str, str]:
    """New weights go to their maker's repositories: both must be named."""
    pinned = TiniestWeights.DEFAULT.release
    if github_repo and hf_repo_id:
        return github_repo, hf_repo_id
    missing = " and ".join(flag for flag, value in (("--github-repo OWNER/NAME", github_repo),
                                                     ("--hf-repo-id OWNER/NAME", hf_repo_id)) if not value)
    raise UsageError(
        f"new weights are published to your own repositories: pass {missing} "
        f"(the pinned {pinned.where['github']['repo']} and {pinned.where['huggingface']['repo_id']} are for the "
        "published checkpoint only)"
    )


def _plan(built: _Built, *, name: str | None, github_repo: str | None, tag: str | None, hf_repo_id: str | None,
          hf_revision: str | None) -> Release:
    """The release of ``built``: the pinned record for the published checkpoint, else new names and addresses."""
    pinned = TiniestWeights.DEFAULT.release
    if built.pinned:
        github_repo = github_repo or pinned.where["github"]["repo"]
        hf_repo_id = hf_repo_id or pinned.where["huggingface"]["repo_id"]
    else:
        github_repo, hf_repo_id = _new_destinations(github_repo, hf_repo_id)
    sha8 = sha256_hex(built.artifact)[:8]
    tag = tag or (pinned.where["github"]["tag"] if built.pinned else f"weights-{sha8}")
    checkpoint = built.source.checkpoint
    original = f"tiniest-{sha8}.pt"
    source = (
        (pinned.source_path, pinned.source_sha256, pinned.source_size) if built.pinned
        else (f"{github_repo}/releases/download/{tag}/{original}", sha256_hex(checkpoint), len(checkpoint))
    )
    return Release(
        name=name or (pinned.name if built.pinned else _release_name(built.meta["categories"], built.source.run, sha8)),
        filename=pinned.filename if built.pinned else f"tiniest-{sha8}.safetensors",
        sha256=sha256_hex(built.artifact),
        size=len(built.artifact),
        source_path=source[0],
        source_sha256=source[1],
        source_size=source[2],
        where={
            "github": {"repo": github_repo, "tag": tag},
            "huggingface": {
                "repo_id": hf_repo_id,
                "revision": hf_revision or (pinned.where["huggingface"]["revision"] if built.pinned else tag),
                "filename": WEIGHTS_NAME,
            },
        },
        meta=built.meta,
    )


def _write(output: Path, release: Release, built: _Built, replaced: list[Path]) -> None:
    """Every file of the release, after the files of the earlier one that it replaces are removed."""
    asset = output / release.filename
    original = None if built.pinned else output / Path(release.source_path).name
    _refuse_links([asset, *([original] if original else [])])
    for old in replaced:
        old.unlink()
    record = release.to_record()
    if original is not None:
        save_atomically(original, built.source.checkpoint)
    save_atomically(asset, built.artifact)
    write_model_folder(output / HF_FOLDER, built.artifact, built.meta, repo_id=release.where["huggingface"]["repo_id"])
    save_atomically(output / RECORD_NAME, (json.dumps(record, indent=2) + "\n").encode())
    files = [asset] if original is None else [asset, original, output / RECORD_NAME]
    save_atomically(output / INSTRUCTIONS_NAME, publish_commands(record, output, files).encode())


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
    license_link: str | None = None,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write every file of the release of ``source_path`` (a run folder, checkpoint or state_dict) into ``output``.

    Returns the record. New weights need their own destinations (``github_repo``, ``hf_repo_id``):
    only the published checkpoint defaults to the pinned release's names and carries its record.
    A licence outside the Hub's list needs ``license_link``, the address of its text.
    """
    _check_names(name, github_repo, tag, hf_repo_id, hf_revision)
    _check_license(license, license_link)
    replaced = _check_output(output, overwrite)
    built = _build(read_source(source_path), metrics=metrics, license=license, license_link=license_link)
    release = _plan(built, name=name, github_repo=github_repo, tag=tag, hf_repo_id=hf_repo_id, hf_revision=hf_revision)
    _write(output, release, built, replaced)
    return release.to_record()
