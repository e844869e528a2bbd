"""Evaluation: accuracy, a scikit-learn style report and the confusion matrix of a model on labelled images.

``tiniest.evaluate(weights_or_model, data, split=...)`` takes weights (anything ``tiniest.tiniest``
takes) or a model, and a dataset folder (anything ``tiniest.data.load_split`` reads) or decoded
images; the ``tiniest evaluate`` command (``tiniest.commands.evaluate``) prints its result.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tiniest.data import LabeledImages, load_split
from tiniest.devices import resolve_device
from tiniest.errors import DatasetError, UsageError
from tiniest.hub import Weights, tiniest
from tiniest.metrics import confusion_matrix, format_report, report_dict
from tiniest.transforms import preprocess_for
from tiniest.weights import CLASSES

__all__ = ["Evaluation", "align_labels", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """The outcome of ``evaluate``: predictions, counts, every number of the report and the timing.

    ``skipped``: ``(file, reason)`` for each unreadable image file the dataset left out.
    """

    classes: tuple[str, ...]
    labels: torch.Tensor
    predictions: torch.Tensor
    confusion: torch.Tensor
    report: dict[str, Any]
    inference_seconds: float
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def correct(self) -> int:
        return int((self.labels == self.predictions).sum())

    @property
    def accuracy(self) -> float:
        return float(self.report["accuracy"])

    def text(self) -> str:
        """The report in scikit-learn's layout (3 decimals), as on the model card."""
        return format_report(self.report, self.classes, digits=3)


def align_labels(data: LabeledImages, classes: Sequence[str]) -> torch.Tensor:
    """``data.labels`` as indices into the model's ``classes``; the dataset's class names must all be among them."""
    if tuple(data.classes) == tuple(classes):
        return data.labels
    missing = [name for name in data.classes if name not in classes]
    if missing:
        raise DatasetError(f"dataset classes {list(data.classes)} do not match the model's {list(classes)}: {missing}")
    mapping = torch.tensor([list(classes).index(name) for name in data.classes], dtype=torch.int64)
    return mapping[data.labels]


def _model(weights_or_model: nn.Module | Weights | None, progress: bool) -> nn.Module:
    """The model given, or the one ``tiniest.tiniest`` builds from the weights given (``None``: random)."""
    if isinstance(weights_or_model, nn.Module):
        return weights_or_model
    return tiniest(weights=weights_or_model, progress=progress)


def _data(
    data: LabeledImages | str | os.PathLike[str], split: str | None, progress: bool, skip_unreadable: bool
) -> LabeledImages:
    """The images given, or split ``split`` (default ``"test"``) of the dataset at ``data``."""
    if isinstance(data, LabeledImages):
        if split is not None or skip_unreadable:
            given = f"split={split!r}" if split is not None else "skip_unreadable=True"
            raise UsageError(f"{given} is about reading a dataset folder; data= was already decoded images")
        return data
    return load_split(data, split or "test", progress=progress, skip_unreadable=skip_unreadable)


@torch.inference_mode()
def evaluate(
    weights_or_model: nn.Module | Weights | None,
    data: LabeledImages | str | os.PathLike[str],
    *,
    split: str | None = None,
    skip_unreadable: bool = False,
    classes: Sequence[str] | None = None,
    batch_size: int = 500,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Score a model's top-1 predictions on labelled images: what ``tiniest evaluate`` prints.

    Args:
        weights_or_model: a model (``tiniest.tiniest()``, ``tiniest.optimize(model)``...), or weights
            as ``tiniest.tiniest`` takes them (``TiniestWeights.DEFAULT``, a name, a path or URL;
            ``None``: a random initialisation).
        data: a dataset as ``tiniest.data.load_split`` reads it (an image folder with split
            subfolders, a ``cifar-10-batches-py`` folder, ``hf://owner/name``), or decoded
            ``tiniest.data.LabeledImages``.
        split: the split of a dataset folder to evaluate (default: ``"test"``).
        skip_unreadable: leave out the dataset folder's image files that cannot be read (listed in
            the result's ``skipped``) instead of raising a ``PreprocessError`` at the first.
        classes: the model's class names, in output order (default: its ``labels``).
        batch_size: images per batch.
        progress: progress bars (decoding the data, evaluating).
        device: where the model runs (``"cuda"``, ``"cuda:1"``, ``"mps"``...); a model given is moved
            there (``model.to``, in place). Default: wherever the model is.
    """
    if batch_size < 1:
        raise UsageError(f"expected a positive batch size, got {batch_size}")
    target = resolve_device(device) if device is not None else None  # refused before any work
    images = _data(data, split, progress, skip_unreadable)
    if len(images) == 0:
        raise DatasetError("expected at least one image to evaluate, got an empty dataset")
    model = _model(weights_or_model, progress)
    if target is not None:
        model.to(target)
    classes = classes if classes is not None else getattr(model, "labels", CLASSES)
    labels = align_labels(images, classes)
    runs_on = next(iter(model.parameters()), torch.empty(0)).device
    transform = preprocess_for(getattr(model, "meta", None))  # the weights' own contract, not the default
    starts: Sequence[int] = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        # disable=None: none on a stderr that is no terminal (a log file), which would get a line per update
        starts = tqdm(starts, desc="evaluating", unit="batch", leave=False, disable=None)
    predictions = []
    began = time.perf_counter()
    for start in starts:
        batch = transform(images.images[start : start + batch_size]).to(runs_on)
        predictions.append(model(batch).argmax(dim=1).cpu())
    elapsed = time.perf_counter() - began
    predicted = torch.cat(predictions)
    confusion = confusion_matrix(labels, predicted, len(classes))
    return Evaluation(
        tuple(classes), labels, predicted, confusion, report_dict(confusion, classes), elapsed, images.skipped
    )
