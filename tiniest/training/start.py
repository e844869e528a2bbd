"""Where a run's weights start: a random initialisation, or published or compatible weights (fine-tuning).

The trunk (every layer but ``fc``) is loaded strictly from the weights: a tensor missing, extra, of
another shape or not finite is refused. The head ``fc`` is kept when it answers for the run's
classes (the weights name the same classes in the same order, or name none and have as many
outputs); otherwise it starts from the run's seeded random initialisation. Nothing is frozen.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tiniest.errors import UnverifiedWeightsWarning, UsageError, WeightsNotFoundError
from tiniest.weights import TiniestWeights, load_strictly, load_weights
from tiniest.weights.heads import HEAD, head_fits, with_new_head
from tiniest.weights.loading import LoadedWeights, num_outputs
from tiniest.weights.metadata import run_dataset
from tiniest.weights.run_files import MODEL_NAME, run_beside

__all__ = ["HEAD", "load_start"]

_FOLDER_FILES = (MODEL_NAME, "model.safetensors")  # a run folder's averaged weights, a Hub model folder's file
logger = logging.getLogger(__name__)


def _weights_spec(init: str | os.PathLike[str] | TiniestWeights) -> str | TiniestWeights:
    """``init`` as ``tiniest.weights.load_weights`` takes it; a folder stands for the weights file inside it."""
    if isinstance(init, TiniestWeights):
        return init
    path = Path(os.fspath(init)).expanduser()
    if not path.is_dir():
        return os.fspath(init)
    for name in _FOLDER_FILES:
        if (path / name).is_file():
            return os.fspath(path / name)
    raise WeightsNotFoundError(
        f"init {os.fspath(init)!r} is a folder without {' or '.join(_FOLDER_FILES)}: expected a finished run's "
        "folder, a Hugging Face model folder, a .safetensors or .pt file, or a TiniestWeights name such as 'DEFAULT'"
    )


def _name(spec: str | TiniestWeights, location: str, verified: bool) -> str:
    """A name for the starting weights that exposes no local path: the release's, else the file's."""
    member = _member(spec)
    if member is not None or verified:  # a file holding the pinned bytes is the default release
        return (member or TiniestWeights.DEFAULT).release.name
    return location.rstrip("/").rsplit("/", 1)[-1]


def _member(spec: str | TiniestWeights) -> TiniestWeights | None:
    """The published weights ``spec`` names, or None for a file or URL."""
    if isinstance(spec, TiniestWeights):
        return spec
    try:
        return TiniestWeights.from_name(spec)
    except UsageError:  # not a member's name
        return None


def _trained_on(spec: str | TiniestWeights, loaded: LoadedWeights) -> str | None:
    """The data the weights were trained on: as their metadata says, else as the run beside a run's model.pt says."""
    if isinstance(loaded.meta.get("dataset"), str):
        return str(loaded.meta["dataset"])
    if isinstance(spec, str) and "://" not in spec:
        run = run_beside(Path(spec), loaded.state_dict)
        return run_dataset(run) if run is not None else None
    return None


def load_start(
    model: nn.Module,
    init: str | os.PathLike[str] | TiniestWeights,
    classes: Sequence[str],
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Load the weights ``init`` names into ``model`` (built for ``classes``, seeded); return their record.

    ``init``: ``"DEFAULT"`` or another ``TiniestWeights`` name, a ``.safetensors`` or state_dict
    ``.pt`` file (path or URL), or a folder holding one (a finished run's ``model.pt``). The record
    (stored in the checkpoint as ``init``) says which weights (``name``, ``sha256``, whether they were
    verified as the published release, its Hub repo, the data they were trained on where their metadata says),
    and whether the head was kept or started anew.
    """
    spec = _weights_spec(init)
    with warnings.catch_warnings():  # the caller named this file on purpose: its hash is recorded instead
        warnings.simplefilter("ignore", UnverifiedWeightsWarning)
        loaded = load_weights(spec, progress=progress)
    origin = f"init {loaded.location}"
    source_classes = num_outputs(loaded.state_dict, origin)
    names = loaded.meta.get("categories")
    same = head_fits(loaded, classes, origin)
    # the trunk from the weights, the head from the model's own seeded initialisation where the classes differ
    state = dict(loaded.state_dict) if same else with_new_head(loaded.state_dict, model)
    with torch.no_grad():
        load_strictly(model, state, origin)
    record: dict[str, Any] = {
        "name": _name(spec, loaded.location, loaded.verified),
        "sha256": loaded.sha256,
        "verified": loaded.verified,
        "head": "kept" if same else "new",
        "classes": list(names) if names is not None else None,
    }
    dataset = _trained_on(spec, loaded)
    if dataset is not None:  # a card warns when the held-out pictures may be among them
        record["dataset"] = dataset
    if loaded.verified:
        record["hf_repo_id"] = (_member(spec) or TiniestWeights.DEFAULT).release.where["huggingface"]["repo_id"]
    where = "its head kept" if same else f"a new {HEAD} for {len(classes)} classes (the weights had {source_classes})"
    logger.info("starting from %s (sha256 %s...): trunk loaded, %s", record["name"], loaded.sha256[:12], where)
    return record
