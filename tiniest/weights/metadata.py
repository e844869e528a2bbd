"""What weights say about themselves: read from their file, and built for new weights in one place.

The published checkpoint carries the pinned record's metadata: its publisher's copyright, credit,
licence and measured accuracy. Any other weights carry only what is known of them: their class
names, the training run they came from (which data, which recipe, what accuracy was measured on
which split and how many images) and what their maker passes (licence, metrics). Export, release
and ``save_pretrained`` all get their metadata from ``weights_meta``.

A model built from weights (``model_from_weights``, given the model class) takes its class
count from the weights' ``fc`` layer and its ``labels`` from the metadata's ``categories``. A plain
state_dict carries no names: a run's ``model.pt`` takes them from the run's ``checkpoint.pt`` beside
it, a release's ``.pt`` from the ``release.json`` beside it (each matched by content, not by name).
Weights that have none anywhere get ``class_0``, ``class_1``... and one ``NoClassNamesWarning``.

Keys a training checkpoint may hold for the card (written by ``tiniest.training``):
``init`` = ``{"name": ..., "sha256": ...}``, the weights training started from (the card's
``base_model``); ``held_out`` = ``{"split": "test" | "validation", "images": N, "made_by": ...}``,
the held-out images the recorded scores were measured on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import torch
from torch import nn

from tiniest import names
from tiniest.classes import CIFAR10_CLASSES, default_labels
from tiniest.errors import ArtifactError, IncompatibleWeightsError, TiniestError, UsageError, warn
from tiniest.storage import HF_PREFIX
from tiniest.weights.beside import release_beside
from tiniest.weights.formats import is_safetensors, read_weights, sha256_hex
from tiniest.weights.loading import NoClassNamesWarning, decode_metadata, num_outputs
from tiniest.weights.releases import TiniestWeights
from tiniest.weights.run_files import run_beside

__all__ = [
    "ARCHITECTURE_CREDIT",
    "UNKNOWN_LICENSE",
    "check_base_model",
    "check_categories",
    "check_metrics",
    "checkpoint_meta",
    "dataset_name",
    "is_cifar10",
    "is_published",
    "overlap_caveat",
    "run_dataset",
    "weights_meta",
]

ARCHITECTURE_CREDIT = "Architecture and training recipe by github.com/xvel/cifar10-tiniest"
UNKNOWN_LICENSE = "unknown"  # the Hub's name for a licence nobody stated
M = TypeVar("M", bound=nn.Module)


def _metrics_problem(metrics: object) -> str | None:
    """What is wrong with ``metrics`` for the model card (labels to scores, or a note), else None."""
    if not isinstance(metrics, Mapping):
        return f"expected a JSON object of named scores, got {type(metrics).__name__}"
    for label, score in metrics.items():
        if not isinstance(score, Mapping):
            continue  # a note: shown as text
        for key in ("total", "subset_of"):
            value = score.get(key)
            if key in score and (key != "subset_of" or value) and not _is_count(value):
                return f"{label!r} {key}: expected a positive whole number, got {value!r}"
        accuracy = score.get("accuracy")
        if "accuracy" in score and not (_is_number(accuracy) and 0 <= accuracy <= 1):
            return f"{label!r} accuracy: expected a finite number in [0, 1], got {accuracy!r}"
    return None


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_metrics(metrics: object, where: str, error: type[TiniestError] = UsageError) -> dict[str, Any]:
    """``metrics`` as a dict, or one ``error`` naming ``where`` and the score that the model card cannot show.

    Checked where metrics come in (a maker's ``--metrics``, a file's metadata), before anything is written.
    """
    problem = _metrics_problem(metrics)
    if problem is not None:
        raise error(f"{where}: {problem}")
    assert isinstance(metrics, Mapping)  # (checked above)
    return dict(metrics)


def check_base_model(base: object, where: str) -> dict[str, Any] | None:
    """``base_model`` as a dict whose ``hf_repo_id`` is a Hub repo id (huggingface_hub's rules), else an ArtifactError.

    Its repo id becomes a link of the model card and its ``base_model``: anything else (markup, a
    ``javascript:`` address) is refused, never written into a card.
    """
    if base is None:
        return None
    if not isinstance(base, Mapping):
        raise ArtifactError(f"{where}: expected an object with name, sha256 and hf_repo_id, got {str(base)[:200]!r}")
    repo = base.get("hf_repo_id")
    if repo is not None:
        try:
            names.hf_repo_id(repo if isinstance(repo, str) else repr(repo), f"{where}: hf_repo_id")
        except UsageError as error:
            raise ArtifactError(str(error)) from None
    return dict(base)


def check_categories(categories: object, where: str) -> list[str]:
    """A file's class names: a list of strings (none: ``[]``), else one ArtifactError (a string gave one per letter)."""
    if categories is None:
        return []
    if not isinstance(categories, list) or not all(isinstance(name, str) for name in categories):
        raise ArtifactError(f"{where}: categories: expected a list of class names, got {str(categories)[:200]!r}")
    return categories


def is_cifar10(categories: Sequence[str]) -> bool:
    return tuple(categories) == CIFAR10_CLASSES


def overlap_caveat(base_data: object, data: str, classes: Sequence[str], split: str) -> str | None:
    """Why the held-out ``split`` of ``data`` may hold pictures that the base weights were trained on (``base_data``:
    their metadata's ``dataset``), in one line; None where nothing says so.

    They may when both name the same dataset (one Hub dataset id, one folder name, or CIFAR-10's classes and name),
    and either the held-out pictures come from the train split (a validation split) or the base's data name no
    split: a score on pictures the base has seen says little of pictures it has not.
    """
    if not isinstance(base_data, str) or not base_data.strip():
        return None
    told, name = base_data.lower(), dataset_name(data)
    same = (
        f"huggingface.co/datasets/{name.lower()}" in told
        if data.startswith(HF_PREFIX)
        else f"named {name!r}".lower() in told
    ) or (is_cifar10(classes) and re.search(r"cifar[- ]?10\b", told) is not None)
    if not same or (split != "validation" and "train split" in told):
        return None
    where = "the train split" if split == "validation" else "the data"
    return (
        f"the base weights were trained on {base_data}, and the {split} pictures come from {where} of the same "
        "dataset: they may have seen them, so this score may not be a held-out score"
    )


def _recipe_text(recipe: Mapping[str, Any], reached: int | None = None) -> str:
    """The recipe's settings; ``epochs`` as reached, with the planned count when the run stopped before it."""
    planned = recipe.get("epochs")
    settings = [
        f"{key}={reached} of {value} planned" if key == "epochs" and reached is not None and reached != value
        else f"{key}={value}"
        for key, value in recipe.items()
        if value is not None
    ]
    stopped = f"; stopped after epoch {reached} of {planned}" if reached is not None and reached != planned else ""
    return f"tiniest train, the recipe of https://github.com/xvel/cifar10-tiniest ({', '.join(settings)}{stopped})"


def dataset_name(data: str) -> str:
    """A name for a run's ``--data`` that exposes no local path: the Hub repo id, else the folder's name."""
    if data.startswith(HF_PREFIX):
        return data[len(HF_PREFIX) :].split("@")[0]
    return Path(data.rstrip("/\\")).name or data


def _base_model(init: Mapping[str, Any]) -> dict[str, Any]:
    """The weights a run started from, as published: a release's name and Hub repo, or a file's name only.

    A local path is cut to its file name (no path of the maker's machine is published); the Hub
    repo id is known for the pinned release (by sha256) and for a weights name ``hf://owner/name``.
    """
    release = TiniestWeights.DEFAULT.release
    name, sha256 = str(init.get("name") or "unknown"), str(init.get("sha256") or "")
    base: dict[str, Any] = {"name": name, "sha256": sha256}
    if isinstance(init.get("dataset"), str):  # what the base weights were trained on, as their metadata says
        base["dataset"] = init["dataset"]
    if sha256 in (release.sha256, release.source_sha256):
        hub = release.where["huggingface"]
        base.update(name=release.name, hf_repo_id=hub["repo_id"], dataset=release.meta.get("dataset"))
    elif name.startswith(HF_PREFIX):
        base["hf_repo_id"] = base["name"] = name[len(HF_PREFIX) :].split("@")[0]
    elif "://" in name:
        base["name"] = name.split("?")[0]
    elif name not in TiniestWeights.__members__:
        base["name"] = Path(name.rstrip("/\\")).name or name
    return base


def _score(run: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The last recorded score of a run, under a label that names its split, with how its images were chosen."""
    last, sizes = run["history"][-1], run.get("split_sizes") or {}
    score: dict[str, Any] = {
        "accuracy": round(last["test_correct"] / last["test_total"], 4),
        "correct": last["test_correct"],
        "total": last["test_total"],
        "split": "test",
        "epoch": last["epoch"],
    }
    scored = run.get("held_out")
    if isinstance(scored, Mapping):  # the held-out images, as training chose and checked them
        score["split"] = str(scored.get("split") or "test")
        if scored.get("made_by"):
            score["made_by"] = str(scored["made_by"])
        return {f"{label} {score['split']}": score}
    test_total = sizes.get("test")
    subset = last["test_total"] < test_total if test_total is not None else run.get("limit_test") is not None
    if subset:
        score["subset_of"] = test_total
    return {f"{label} test{' subset' if subset else ''}": score}


def run_dataset(run: Mapping[str, Any]) -> str:
    """What a run trained on, as its weights' ``dataset`` says it: the split, the data's name (no local path), how
    many images, how many classes."""
    data = str(run["data"])
    name = dataset_name(data)
    hub = data.startswith(HF_PREFIX)
    where = f"huggingface.co/datasets/{name}" if hub else f"a local dataset folder named {name!r}"
    sizes = run.get("split_sizes") or {}
    used = int(run.get("train_images") or sizes.get("train") or 0)
    train_total = sizes.get("train")
    count = f"{used:,} images"
    if train_total is not None and used < train_total:
        count = f"a seeded random {used:,} of its {train_total:,} images"
    return f"train split of {where} ({count}), {len(run['classes'])} classes"


def _run_facts(run: Mapping[str, Any]) -> dict[str, Any]:
    """Data, recipe, starting weights and measured accuracy of a run, saying which split and how many images."""
    data, classes = str(run["data"]), list(run["classes"])
    name = dataset_name(data)
    reached = int(run["epoch"]) if run.get("epoch") is not None else None
    facts: dict[str, Any] = {
        "dataset": run_dataset(run),
        "recipe": _recipe_text(run["recipe"], reached),
        "metrics": {"note": "not measured"},
    }
    if isinstance(run.get("init"), Mapping):
        facts["base_model"] = _base_model(run["init"])
    if run["history"]:
        facts["metrics"] = _score(run, "CIFAR-10" if is_cifar10(classes) else name)
        base_data = facts.get("base_model", {}).get("dataset")
        for score in facts["metrics"].values():
            caveat = overlap_caveat(base_data, data, classes, score["split"])
            if caveat is not None:
                score["caveat"] = caveat
    return facts


def weights_meta(
    state_dict: Mapping[str, torch.Tensor],
    *,
    run: Mapping[str, Any] | None = None,
    inherited: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    license: str | None = None,
    license_link: str | None = None,
    origin: str = "weights",
) -> dict[str, Any]:
    """The metadata of new weights: only their own facts (the published ones keep the pinned record:
    ``checkpoint_meta`` tells them apart).

    Args:
        state_dict: the weights (their class count and parameter count are read from it).
        run: the training checkpoint they came from: classes, data, recipe, measured accuracy.
        inherited: the metadata of the file they were read from (its claims are kept, except the
            publisher's copyright and credit, and any claim copied from the published record).
        labels: class names, overriding the run's and the inherited ones.
        metrics: measured metrics, as given by the weights' maker.
        license: their licence, as given by the maker (default: the inherited one, else unknown).
        license_link: where the text of a licence outside the Hub's list is (default: the inherited one).
        origin: where the weights come from, for messages.
    """
    from tiniest.transforms import PREPROCESSING  # the input contract (not loaded with the package)

    release = TiniestWeights.DEFAULT.release
    inherited = inherited or {}
    num_classes = num_outputs(state_dict, origin)
    inherited_categories = check_categories(inherited.get("categories"), origin)
    categories = list(labels or (run["classes"] if run else None) or inherited_categories)
    if not categories:
        warn(f"{origin} carries no class names: its {num_classes} outputs are called class_0 ... "
             f"class_{num_classes - 1}", NoClassNamesWarning)
        categories = list(default_labels(num_classes))
    if len(categories) != num_classes:
        raise IncompatibleWeightsError(
            f"the weights have {num_classes} outputs but {len(categories)} class names: {categories}"
        )
    claims = {
        key: inherited[key]
        for key in ("dataset", "recipe", "base_model", "metrics")
        if key in inherited and inherited[key] != release.meta.get(key)
    }
    if "base_model" in claims:
        claims["base_model"] = check_base_model(claims["base_model"], f"{origin}: base_model")
    if "metrics" in claims:
        claims["metrics"] = check_metrics(claims["metrics"], f"{origin}: metrics", ArtifactError)
    if metrics is not None:
        metrics = check_metrics(metrics, "metrics")
    if run is not None:
        claims = _run_facts(run)
    license = license or inherited.get("license") or UNKNOWN_LICENSE
    license_link = license_link or (inherited.get("license_link") if license == inherited.get("license") else None)
    return {
        "architecture": release.meta["architecture"],
        "categories": categories,
        "num_params": sum(tensor.numel() for tensor in state_dict.values()),
        **{key: claims[key] for key in ("dataset", "recipe", "base_model") if key in claims},
        "preprocessing": dict(PREPROCESSING),
        "metrics": metrics if metrics is not None else claims.get("metrics", {"note": "not measured"}),
        "license": license,
        **({"license_link": license_link} if license_link else {}),
        "credit": ARCHITECTURE_CREDIT + ("; trained with tiniest's train command" if run is not None else ""),
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
    license_link: str | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    """The metadata of a checkpoint file's weights (see ``weights_meta``).

    The published checkpoint (or release file) gets the pinned record; any other gets what its own
    file says (a safetensors' metadata; ``run``; for a bare ``.pt`` at ``path``, the release record
    or the run beside it) and what its maker passes.
    """
    if is_published(checkpoint):
        if metrics is not None or license is not None or license_link is not None:
            raise UsageError("metrics and license are for new weights; the published ones keep their pinned record")
        return dict(TiniestWeights.DEFAULT.release.meta)
    inherited = decode_metadata(read_weights(checkpoint)[1]) if is_safetensors(checkpoint) else {}
    if run is None and path is not None and not inherited:
        release = release_beside(path, sha256_hex(checkpoint))
        if release is not None:
            inherited = dict(release.meta)
        else:
            run = run_beside(path, state_dict)
    where = origin or (str(path) if path is not None else "checkpoint")
    return weights_meta(
        state_dict, run=run, inherited=inherited, metrics=metrics, license=license, license_link=license_link,
        origin=where,
    )
