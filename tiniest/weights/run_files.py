"""The files a ``tiniest train`` run leaves, read as weights: ``checkpoint.pt`` and ``model.pt``.

The training loop (``tiniest.training.loop``) writes them; loading, export and release read
them here, so that the weights code never imports the training code.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tiniest.errors import ArtifactError, first_line
from tiniest.files import read_regular
from tiniest.weights.formats import is_safetensors
from tiniest.weights.torch_files import load_torch_file

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "MODEL_NAME",
    "averaged_state_dict",
    "load_checkpoint",
    "run_beside",
    "state_dict_bytes",
    "training_checkpoint",
]

CHECKPOINT_FORMAT = "tiniest-train-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
MAX_CHECKPOINT_BYTES = 2**30  # a Tiniest run's checkpoint is ~2 MB; with 200,000 classes, ~200 MB


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training checkpoint, read with ``weights_only=True`` and checked to be one."""
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: expected a tiniest training checkpoint, got an empty file (0 bytes)")
    try:  # read through the archive check: a deflated record could ask torch.load for gigabytes
        state = load_torch_file(read_regular(path, MAX_CHECKPOINT_BYTES), origin=str(path), map_location=device)
    except (ArtifactError, OSError) as error:
        raise ArtifactError(f"{path}: expected a tiniest training checkpoint ({first_line(error)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ArtifactError(f"{path}: expected a checkpoint of format {CHECKPOINT_FORMAT!r}, got {found!r}")
    return state


def training_checkpoint(data: bytes) -> dict[str, Any] | None:
    """``data`` as a training checkpoint if it is one, else None (a state_dict, or bytes of another kind)."""
    if is_safetensors(data):  # a state_dict, never a training checkpoint
        return None
    try:
        loaded = load_torch_file(data)
    except ArtifactError:  # not a torch file at all: reading it as weights reports it properly
        return None
    return loaded if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT else None


def averaged_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The averaged weights (the final model) of a training checkpoint, as a plain Tiniest state_dict."""
    prefix = "module."
    return {k[len(prefix) :]: v.cpu() for k, v in checkpoint["ema"].items() if k.startswith(prefix)}


def state_dict_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """A plain state_dict of CPU tensors as ``torch.save`` bytes: a run's ``model.pt``, or what a release reads."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    return buffer.getvalue()


def run_beside(path: Path, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """The training checkpoint beside a run's ``model.pt``, if its averaged weights are ``state_dict``."""
    checkpoint = path.parent / CHECKPOINT_NAME
    if path.name != MODEL_NAME or not checkpoint.is_file():
        return None
    try:
        run = load_checkpoint(checkpoint)
    except (OSError, ValueError):
        return None
    averaged = averaged_state_dict(run)
    same = averaged.keys() == state_dict.keys() and all(torch.equal(averaged[k], state_dict[k]) for k in averaged)
    return run if same else None
