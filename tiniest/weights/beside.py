"""What lies beside a bare weights file and names its classes: a release record, or the training run it ends.

A release's plain ``.pt`` (its "original") and a run's ``model.pt`` are bare state_dicts, holding no
class names. ``tiniest release`` writes its record (``release.json``) beside the ``.pt`` it
publishes, naming it by sha256; a run keeps its classes in the ``checkpoint.pt`` beside its
``model.pt``. Imported only for such a bare file: the published files carry their own metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tiniest.files import read_regular
from tiniest.weights.releases import MAX_RECORD_BYTES, RECORD_NAME, Release

__all__ = ["meta_beside", "release_beside"]

def release_beside(path: Path, sha256: str) -> Release | None:
    """The release whose record (``release.json``) lies beside ``path`` and names its bytes, else None.

    ``tiniest release`` writes the record beside the plain ``.pt`` it publishes; the record names
    that file by its sha256 (its ``source``) and the release file by the artifact's. A record
    that is missing, too large, unreadable or about other bytes is no record of this file.
    """
    try:
        record = json.loads(read_regular(path.parent / RECORD_NAME, MAX_RECORD_BYTES))
        release = Release.from_record(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return release if sha256 in (release.source_sha256, release.sha256) and isinstance(release.meta, dict) else None


def meta_beside(path: Path, sha256: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The metadata of the release whose record lies beside ``path``, else the class names of its run, else ``{}``."""
    release = release_beside(path, sha256)
    if release is not None:
        return dict(release.meta)
    from tiniest.weights.run_files import run_beside

    run = run_beside(path, state_dict)
    return {"categories": list(run["classes"])} if run is not None else {}
