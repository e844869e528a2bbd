"""Evaluation: accuracy, a scikit-learn style report and the confusion matrix of a model on labelled images.

The ``tiniest evaluate`` command (:mod:`tiniest.commands.evaluate`) runs it on a dataset split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tiniest.data import LabeledImages
from tiniest.devices import resolve_device
from tiniest.errors import DatasetError, UsageError
from tiniest.metrics import confusion_matrix, format_report, report_dict
from tiniest.transforms import preprocess
from tiniest.weights import CLASSES

__all__ = ["Evaluation", "align_labels", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate`: predictions, counts, every number of the report and the timing."""

    classes: tuple[str, ...]
    labels: torch.Tensor
    predictions: torch.Tensor
    confusion: torch.Tensor
    report: dict[str, Any]
    inference_seconds: float

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


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: LabeledImages,
    *,
    classes: Sequence[str] | None = None,
    batch_size: int = 500,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Run ``model`` over ``data`` in batches and score its top-1 predictions.

    ``device`` (``"cuda"``, ``"cuda:1"``, ``"mps"``...): where ``model`` runs; it is moved there
    (``model.to``, in place). Default: wherever ``model`` is.
    """
    if len(data) == 0:
        raise DatasetError("expected at least one image to evaluate, got an empty dataset")
    if batch_size < 1:
        raise UsageError(f"expected a positive batch size, got {batch_size}")
    if device is not None:
        model.to(resolve_device(device))
    classes = classes if classes is not None else getattr(model, "labels", CLASSES)
    labels = align_labels(data, classes)
    runs_on = next(iter(model.parameters()), torch.empty(0)).device
    starts: Sequence[int] = range(0, len(data), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluating", unit="batch", leave=False)
    predictions = []
    began = time.perf_counter()
    for start in starts:
        batch = preprocess(data.images[start : start + batch_size]).to(runs_on)
        predictions.append(model(batch).argmax(dim=1).cpu())
    elapsed = time.perf_counter() - began
    predicted = torch.cat(predictions)
    confusion = confusion_matrix(labels, predicted, len(classes))
    return Evaluation(tuple(classes), labels, predicted, confusion, report_dict(confusion, classes), elapsed)
