"""What weights say about themselves: read from their file, and built for new weights in one place.

The published checkpoint carries the pinned record's metadata: its publisher's copyright, credit,
licence and measured accuracy. Any other weights carry only what is known of them: their class
names, the training run they came from (which data, which recipe, what accuracy was measured on
which split and how many images) and what their maker passes (licence, metrics). Export, release
and ``save_pretrained`` all get their metadata from :func:`weights_meta`.

A model built from weights (:func:`model_from_weights`, given the model class) takes its class
count from the weights' ``fc`` layer and its ``labels`` from the metadata's ``categories``; a plain
state_dict ``model.pt`` of a ``tiniest train`` run takes them from the run's ``checkpoint.pt`` beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from tiniest.classes import CIFAR10_CLASSES, default_labels
from tiniest.errors import IncompatibleWeightsError, UsageError
from tiniest.storage import HF_PREFIX
from tiniest.weights._record import TiniestWeights
from tiniest.weights.artifact import is_safetensors, read_metadata, sha256_hex
from tiniest.weights.run_files import run_beside
from tiniest.weights.sources import LoadedWeights, load_strictly

__all__ = [
    "ARCHITECTURE_CREDIT",
    "UNKNOWN_LICENSE",
    "checkpoint_meta",
    "dataset_name",
    "decode_metadata",
    "is_cifar10",
    "is_published",
    "loaded_meta",
    "model_from_weights",
    "num_outputs",
    "weights_meta",
]

ARCHITECTURE_CREDIT = "Architecture and training recipe by github.com/xvel/cifar10-tiniest"
UNKNOWN_LICENSE = "unknown"  # the Hub's name for a licence nobody stated
M = TypeVar("M", bound=nn.Module)


def decode_metadata(header: Mapping[str, str]) -> dict[str, Any]:
    """The inverse of :func:`tiniest.weights.artifact.artifact_metadata`: JSON values decoded, ``format`` dropped.

    A value is decoded only where encoding it again gives the same text, so the metadata written
    back is byte-identical.
    """
    meta: dict[str, Any] = {}
    for key, text in header.items():
        if key == "format":
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        exact = not isinstance(value, str) and json.dumps(value, sort_keys=True) == text
        meta[key] = value if exact else text
    return meta


def is_cifar10(categories: Sequence[str]) -> bool:
    return tuple(categories) == CIFAR10_CLASSES


def num_outputs(state_dict: Mapping[str, torch.Tensor], origin: str = "weights") -> int:
    """The class count of Tiniest weights: the rows of their ``fc.weight``."""
    fc = state_dict.get("fc.weight")
    if not isinstance(fc, torch.Tensor) or fc.dim() != 2 or fc.shape[0] < 1:
        found = f"of shape {tuple(fc.shape)}" if isinstance(fc, torch.Tensor) else "absent"
        names = ", ".join(list(state_dict)[:3]) + (", ..." if len(state_dict) > 3 else "")
        raise IncompatibleWeightsError(
            f"{origin}: expected Tiniest weights, whose fc.weight has shape (classes, 80); got {len(state_dict)} "
            f"tensors ({names or 'none'}) and fc.weight {found}"
        )
    return int(fc.shape[0])


def _labels(meta: Mapping[str, Any], num_classes: int, origin: str) -> list[str] | None:
    names = meta.get("categories")
    if names is None:
        return None
    if (
        not isinstance(names, list)
        or not all(isinstance(name, str) for name in names)
        or len(names) != num_classes
        or len(set(names)) != len(names)
    ):
        raise IncompatibleWeightsError(
            f"{origin}: expected {num_classes} distinct class names in the metadata's categories "
            f"(one per output of the weights), got {names!r}"
        )
    return names


def model_from_weights(
    cls: Callable[..., M], state_dict: dict[str, torch.Tensor], meta: Mapping[str, Any], *, origin: str = "weights"
) -> M:
    """An eval-mode ``cls`` with as many outputs as the weights, their labels, and ``meta`` kept on it.

    ``cls`` is the model class (called as ``cls(num_classes, labels=..., meta=...)``); loading is
    strict, so weights that do not fit its architecture are refused.
    """
    num_classes = num_outputs(state_dict, origin)
    model = cls(num_classes, labels=_labels(meta, num_classes, origin), meta=meta)
    load_strictly(model, state_dict, origin)
    return model.eval()


def loaded_meta(loaded: LoadedWeights) -> dict[str, Any]:
    """What a loaded file says of its weights, plus its ``sha256``; for a run's ``model.pt``, the run's classes."""
    if loaded.metadata:
        return {**decode_metadata(loaded.metadata), "sha256": loaded.sha256}
    run = run_beside(Path(loaded.location), loaded.state_dict) if "://" not in loaded.location else None
    return {"categories": list(run["classes"])} if run is not None else {}


def _recipe_text(recipe: Mapping[str, Any]) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in recipe.items() if value is not None)
    return f"tiniest train, the recipe of https://github.com/xvel/cifar10-tiniest ({settings})"


def dataset_name(data: str) -> str:
    """A name for a run's ``--data`` that exposes no local path: the Hub repo id, else the folder's name."""
    if data.startswith(HF_PREFIX):
        return data[len(HF_PREFIX) :].split("@")[0]
    return Path(data.rstrip("/\\")).name or data


def _run_facts(run: Mapping[str, Any]) -> dict[str, Any]:
    """Data, recipe and measured accuracy of a training run, saying which split and how many images."""
    data, classes = str(run["data"]), list(run["classes"])
    name = dataset_name(data)
    hub = data.startswith(HF_PREFIX)
    where = f"huggingface.co/datasets/{name}" if hub else f"a local dataset folder named {name!r}"
    sizes = run.get("split_sizes") or {}
    used = int(run.get("train_images") or sizes.get("train") or 0)
    train_total = sizes.get("train")
    count = f"{used:,} images"
    if train_total is not None and used < train_total:
        count = f"a seeded random {used:,} of its {train_total:,} images"
    facts: dict[str, Any] = {
        "dataset": f"train split of {where} ({count}), {len(classes)} classes",
        "recipe": _recipe_text(run["recipe"]),
        "metrics": {"note": "not measured"},
    }
    if run["history"]:
        last = run["history"][-1]
        label = "CIFAR-10" if is_cifar10(classes) else name
        score: dict[str, Any] = {
            "accuracy": round(last["test_correct"] / last["test_total"], 4),
            "correct": last["test_correct"],
            "total": last["test_total"],
            "split": "test",
            "epoch": last["epoch"],
        }
        test_total = sizes.get("test")
        subset = last["test_total"] < test_total if test_total is not None else run.get("limit_test") is not None
        if subset:
            score["subset_of"] = test_total
        facts["metrics"] = {f"{label} test{' subset' if subset else ''}": score}
    return facts


def weights_meta(
    state_dict: Mapping[str, torch.Tensor],
    *,
    run: Mapping[str, Any] | None = None,
    inherited: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    origin: str = "weights",
) -> dict[str, Any]:
    """The metadata of new weights: only their own facts (the published ones keep the pinned record:
    :func:`checkpoint_meta` tells them apart).

    Args:
        state_dict: the weights (their class count and parameter count are read from it).
        run: the training checkpoint they came from: classes, data, recipe, measured accuracy.
        inherited: the metadata of the file they were read from (its claims are kept, except the
            publisher's copyright and credit, and any claim copied from the published record).
        labels: class names, overriding the run's and the inherited ones.
        metrics: measured metrics, as given by the weights' maker.
        license: their licence, as given by the maker (default: the inherited one, else unknown).
        origin: where the weights come from, for messages.
    """
    from tiniest.transforms import PREPROCESSING  # the input contract (not loaded with the package)

    release = TiniestWeights.DEFAULT.release
    inherited = inherited or {}
    num_classes = num_outputs(state_dict, origin)
    categories = list(labels or (run["classes"] if run else None) or inherited.get("categories") or [])
    if not categories:
        categories = list(default_labels(num_classes))
    if len(categories) != num_classes:
        raise IncompatibleWeightsError(
            f"the weights have {num_classes} outputs but {len(categories)} class names: {categories}"
        )
    claims = {
        key: inherited[key]
        for key in ("dataset", "recipe", "metrics")
        if key in inherited and inherited[key] != release.meta.get(key)
    }
    if run is not None:
        claims = _run_facts(run)
    return {
        "architecture": release.meta["architecture"],
        "categories": categories,
        "num_params": sum(tensor.numel() for tensor in state_dict.values()),
        **{key: claims[key] for key in ("dataset", "recipe") if key in claims},
        "preprocessing": dict(PREPROCESSING),
        "metrics": dict(metrics) if metrics is not None else claims.get("metrics", {"note": "not measured"}),
        "license": license or inherited.get("license") or UNKNOWN_LICENSE,
        "credit": ARCHITECTURE_CREDIT + ("; trained with `tiniest train`" if run is not None else ""),
    }


def is_published(checkpoint: bytes) -> bool:
    """Whether ``checkpoint`` is the published checkpoint or its release file (compared by sha256)."""
    release = TiniestWeights.DEFAULT.release
    return sha256_hex(checkpoint) in {release.source_sha256, release.sha256}


def checkpoint_meta(
    checkpoint: bytes,
    state_dict: Mapping[str, torch.Tensor],
    *,
    run: Mapping[str, Any] | None = None,
    path: Path | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    """The metadata of a checkpoint file's weights (see :func:`weights_meta`).

    The published checkpoint (or release file) gets the pinned record; any other gets what its own
    file says (a safetensors' metadata; ``run``, or for a run's ``model.pt`` at ``path`` the run
    beside it) and what its maker passes.
    """
    if is_published(checkpoint):
        if metrics is not None or license is not None:
            raise UsageError("metrics and license are for new weights; the published ones keep their pinned record")
        return dict(TiniestWeights.DEFAULT.release.meta)
    inherited = decode_metadata(read_metadata(checkpoint)) if is_safetensors(checkpoint) else {}
    if run is None and path is not None and not inherited:
        run = run_beside(path, state_dict)
    where = origin or (str(path) if path is not None else "checkpoint")
    return weights_meta(state_dict, run=run, inherited=inherited, metrics=metrics, license=license, origin=where)
