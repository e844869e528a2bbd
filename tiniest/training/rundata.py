"""The images of a run: those it trains on, and the held-out ones it scores after each epoch.

The held-out images are the dataset's test split, or (``val_fraction``) a seeded, stratified part
of its train split for a dataset without one. Only the images a run uses are decoded: ``limit_train``
bounds the training images and, unless ``limit_test`` says otherwise, the held-out ones to the same
fraction of their split (a 1,000-image run on CIFAR-10 decodes 1,200 pictures, not 60,000).

A score is a test or validation score only if its images are not training images: the two sets are
compared by file identity (device and inode, and the row of a CIFAR batch), never by folder name, so a
split folder given as the root (whose "test" split is its train split) or a test folder of links into
train/ is refused (among the images the run reads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiniest.data import LabeledImages, Select, hold_out, load_split
from tiniest.errors import DatasetError
from tiniest.storage import HF_PREFIX

__all__ = ["RunData", "data_key", "load_run_data", "subset"]


@dataclass(frozen=True)
class RunData:
    location: str  # the dataset as recorded in the checkpoint (see data_key)
    train: LabeledImages
    held_out: LabeledImages
    sizes: dict[str, int]  # images in the whole train and held-out splits, before any limit
    held_out_record: dict[str, Any]  # which split is scored, how many images, how it was made
    content: dict[str, str] = field(default_factory=dict)  # per split read: hash of its file names and sizes


def data_key(data: str) -> str:
    """The dataset as recorded in the checkpoint: an absolute path (or the ``hf://`` id), so resume can compare it."""
    return data if data.startswith(HF_PREFIX) else str(Path(data).expanduser().resolve())


def subset(count: int, limit: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of ``limit`` items (all of them when ``limit`` is None)."""
    if limit is None or limit >= count:
        return torch.arange(count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:limit].sort().values


def _same_classes(data: str, train: LabeledImages, test: LabeledImages) -> None:
    if train.classes == test.classes:
        return
    def listed(names: list[str], empty: tuple[str, ...], folder: str) -> str:
        said = [f"{name} ({folder}/{name} holds no images)" if name in empty else name for name in names]
        return ", ".join(said) or "none"

    only_train = [name for name in train.classes if name not in test.classes]
    only_test = [name for name in test.classes if name not in train.classes]
    raise DatasetError(
        f"{data}: expected the same class folders in train/ and test/; only in train/: "
        f"{listed(only_train, test.empty_classes, 'test')}; only in test/: "
        f"{listed(only_test, train.empty_classes, 'train')}"
    )


def _check_disjoint(data: str, trained: LabeledImages, scored: LabeledImages, split: str) -> None:
    """Refuse to score images that are also trained on (the same files, whatever their folders)."""
    if not trained.identities or not scored.identities:
        return
    shared = len(set(scored.identities) & set(trained.identities))
    if shared:
        raise DatasetError(
            f"{data}: {shared} of the {len(scored)} {split} images are training images too (the same files), so "
            "their score would not be a held-out score; hold out part of the training images with val_fraction "
            "(--val-fraction), or give a dataset whose test/ holds other images"
        )


def _test_split(data: str, progress: bool, skip_unreadable: bool, select: Select) -> LabeledImages:
    try:
        return load_split(data, "test", progress=progress, skip_unreadable=skip_unreadable, select=select)
    except DatasetError as error:
        raise DatasetError(
            f"{error} (a dataset without a test split: hold out part of train with val_fraction, --val-fraction)"
        ) from None


def held_out_limit(limit_train: int | None, limit_test: int | None, train: int, held_out: int) -> int | None:
    """How many held-out images are scored: ``limit_test``, else the fraction of its split that ``limit_train``
    takes of the training images (a quick run is scored quickly too), else all (None)."""
    if limit_test is not None or limit_train is None or limit_train >= train:
        return limit_test
    return min(held_out, math.ceil(held_out * limit_train / train))


def load_run_data(
    data: str,
    *,
    limit_train: int | None,
    seed: int,
    val_fraction: float | None,
    limit_test: int | None,
    progress: bool,
    skip_unreadable: bool = False,
) -> RunData:
    """The training images (a seeded subset with ``limit_train``) and the held-out ones (a fixed subset: see
    ``held_out_limit``), checked to share classes and no file; only these images are decoded."""
    sizes: dict[str, int] = {}  # each split's images, before any limit, as the selections see them
    if val_fraction is not None:
        fraction = val_fraction

        def trained_of_train(labels: torch.Tensor) -> torch.Tensor:
            kept, held = hold_out(labels, fraction, seed)
            sizes.update(train=len(kept), validation=len(held))
            return kept[subset(len(kept), limit_train, seed)]

        def scored_of_train(labels: torch.Tensor) -> torch.Tensor:
            kept, held = hold_out(labels, fraction, seed)
            return held[subset(len(held), held_out_limit(limit_train, limit_test, len(kept), len(held)), 0)]

        trained = load_split(data, "train", progress=progress, skip_unreadable=skip_unreadable,
                             select=trained_of_train, part="trained")
        scored = load_split(data, "train", progress=progress, skip_unreadable=skip_unreadable,
                            select=scored_of_train, part="validation")
        split = "validation"
        made_by = f"val_fraction {val_fraction} of the train split, stratified by class, seed {seed}"
        content = {"train": trained.content}
    else:

        def trained_of_train(labels: torch.Tensor) -> torch.Tensor:
            sizes["train"] = len(labels)
            return subset(len(labels), limit_train, seed)

        def scored_of_test(labels: torch.Tensor) -> torch.Tensor:
            sizes["test"] = len(labels)
            return subset(len(labels), held_out_limit(limit_train, limit_test, sizes["train"], len(labels)), 0)

        trained = load_split(data, "train", progress=progress, skip_unreadable=skip_unreadable,
                             select=trained_of_train, part="trained")
        scored = _test_split(data, progress, skip_unreadable, scored_of_test)
        _same_classes(data, trained, scored)
        split, made_by = "test", "the dataset's test split"
        content = {"train": trained.content, "test": scored.content}
    if len(trained.classes) < 2:
        raise DatasetError(f"{data}: expected at least 2 classes (one folder each), got {list(trained.classes)}")
    _check_disjoint(data, trained, scored, split)
    if len(scored) < sizes[split]:
        made_by += f", a fixed random {len(scored)} of its {sizes[split]} images"
    return RunData(
        data_key(data),
        trained,
        scored,
        sizes,
        {"split": split, "images": len(scored), "made_by": made_by},
        content,
    )
