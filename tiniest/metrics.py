"""Confusion matrix and a classification report laid out like scikit-learn's, without scikit-learn.

The model card's report was made with ``sklearn.metrics.classification_report(digits=3)``; printing
the same layout lets anyone diff ``tiniest evaluate`` against the card line by line. Precision,
recall or F1 with a zero denominator count as 0.0, as scikit-learn's default does. Like
scikit-learn without ``labels=``, the report has a row only for the classes present in the labels
or the predictions, and its averages are over those: a folder of cats is not averaged with nine
classes it never contained (pass ``labels`` to report others too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tiniest.names import printable

__all__ = [
    "classification_report",
    "confusion_matrix",
    "format_confusion_matrix",
    "format_report",
    "present_classes",
    "report_dict",
]

_HEADERS = ("precision", "recall", "f1-score", "support")


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 counts: rows are true classes, columns predicted ones."""
    y_true, y_pred = torch.as_tensor(y_true).reshape(-1).long(), torch.as_tensor(y_pred).reshape(-1).long()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"expected as many predictions as labels, got {y_pred.numel()} and {y_true.numel()}")
    for name, values in (("labels", y_true), ("predictions", y_pred)):
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(
                f"expected {name} in 0..{num_classes - 1}, got values in {int(values.min())}..{int(values.max())}"
            )
    flat = torch.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def present_classes(confusion: torch.Tensor) -> list[int]:
    """Indices of the classes that occur among the labels or the predictions (scikit-learn's default ``labels``)."""
    present = (confusion.sum(dim=1) + confusion.sum(dim=0)) > 0
    return present.nonzero().flatten().tolist()


def report_dict(confusion: torch.Tensor, classes: Sequence[str], labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Every number of the report, keyed like ``classification_report(output_dict=True)``.

    ``labels``: indices of the classes to report and average over; by default those present in the
    labels or the predictions (``present_classes``), as scikit-learn does.
    """
    counts = confusion.tolist()
    n = len(classes)
    if len(counts) != n:
        raise ValueError(f"expected a {n}x{n} confusion matrix for {n} classes, got {len(counts)} rows")
    chosen = present_classes(confusion) if labels is None else list(labels)
    if not chosen:
        raise ValueError("expected at least one label or prediction, got an empty confusion matrix")
    report: dict[str, Any] = {}
    total = sum(map(sum, counts))
    correct = sum(counts[i][i] for i in range(n))
    for i in chosen:
        name = classes[i]
        tp = counts[i][i]
        support = sum(counts[i])
        predicted = sum(row[i] for row in counts)
        report[name] = {
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, support),
            "f1-score": _ratio(2 * tp, support + predicted),
            "support": support,
        }
    rows = [report[classes[i]] for i in chosen]
    support = sum(r["support"] for r in rows)
    report["accuracy"] = _ratio(correct, total)
    report["macro avg"] = {key: sum(r[key] for r in rows) / len(rows) for key in _HEADERS[:3]} | {"support": support}
    report["weighted avg"] = {
        key: _ratio(sum(r[key] * r["support"] for r in rows), support) for key in _HEADERS[:3]
    } | {"support": support}
    return report


def format_report(report: dict[str, Any], classes: Sequence[str], digits: int = 3) -> str:
    """The text layout of scikit-learn's report: right-aligned columns nine wide, blank lines between blocks.

    Rows follow ``classes``, for those the report has; names are shown with control characters escaped.
    """
    classes = [name for name in classes if name in report]
    width = max(len(printable(name)) for name in [*classes, "weighted avg"])

    def line(name: str, cells: Sequence[str]) -> str:
        return f"{printable(name):>{width}} " + "".join(f" {cell:>9}" for cell in cells)

    def numbers(row: dict[str, Any]) -> list[str]:
        return [f"{row[key]:.{digits}f}" for key in _HEADERS[:3]] + [str(row["support"])]

    lines = [line("", _HEADERS), ""]
    lines += [line(name, numbers(report[name])) for name in classes]
    lines.append("")
    total = report["macro avg"]["support"]
    lines.append(line("accuracy", ["", "", f"{report['accuracy']:.{digits}f}", str(total)]))
    lines += [line(name, numbers(report[name])) for name in ("macro avg", "weighted avg")]
    return "\n".join(lines) + "\n"


def classification_report(
    y_true: torch.Tensor,
    y_pred: torch.Tensor,
    classes: Sequence[str],
    digits: int = 3,
    labels: Sequence[int] | None = None,
) -> str:
    """Text report for integer labels and predictions into ``classes`` (rows: ``labels``, default the present ones)."""
    confusion = confusion_matrix(y_true, y_pred, len(classes))
    return format_report(report_dict(confusion, classes, labels), classes, digits)


def format_confusion_matrix(confusion: torch.Tensor, classes: Sequence[str]) -> str:
    """The matrix with class names: rows are true classes, columns predicted ones.

    Column headers are cut to one character less than a cell, which is 6 wide or one more than the
    widest count; row names are shown whole.
    """
    counts = confusion.tolist()
    cell = max(6, len(str(max(max(row) for row in counts))) + 1)
    classes = [printable(name) for name in classes]  # a name cannot move the cursor or add a row
    width = max(len(name) for name in classes)
    head = " " * width + " " + "".join(f"{name[: cell - 1]:>{cell}}" for name in classes)
    body = [
        f"{name:>{width}} " + "".join(f"{v:>{cell}}" for v in row) for name, row in zip(classes, counts, strict=True)
    ]
    return "\n".join([head, *body]) + "\n"
