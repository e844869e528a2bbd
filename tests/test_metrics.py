"""The report's numbers and layout against scikit-learn's on random labels (scikit-learn is a test dependency only)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn import metrics as sk

from tiniest.metrics import classification_report, confusion_matrix, format_report, report_dict
from tiniest.weights import CLASSES


def random_labels(seed: int, n: int, absent: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random true labels and predictions, mostly right (like a classifier), optionally never predicting one class."""
    generator = torch.Generator().manual_seed(seed)
    y_true = torch.randint(0, 10, (n,), generator=generator)
    noise = torch.randint(0, 10, (n,), generator=generator)
    keep = torch.rand(n, generator=generator) < 0.7
    y_pred = torch.where(keep, y_true, noise)
    if absent is not None:
        y_pred[y_pred == absent] = (absent + 1) % 10
    return y_true, y_pred


@pytest.mark.parametrize(("seed", "n", "absent"), [(0, 1000, None), (1, 137, 4), (2, 10_000, None), (3, 25, 0)])
def test_report_matches_scikit_learn(seed: int, n: int, absent: int | None) -> None:
    y_true, y_pred = random_labels(seed, n, absent)
    labels = list(range(10))
    confusion = confusion_matrix(y_true, y_pred, 10)
    assert confusion.tolist() == sk.confusion_matrix(y_true.numpy(), y_pred.numpy(), labels=labels).tolist()

    ours = report_dict(confusion, CLASSES, labels)
    theirs = sk.classification_report(
        y_true.numpy(), y_pred.numpy(), labels=labels, target_names=CLASSES, output_dict=True, zero_division=0
    )
    assert set(ours) == set(theirs)
    assert math.isclose(ours["accuracy"], theirs["accuracy"], rel_tol=1e-12)
    for name in [*CLASSES, "macro avg", "weighted avg"]:
        for key in ("precision", "recall", "f1-score"):
            assert math.isclose(ours[name][key], theirs[name][key], rel_tol=1e-12, abs_tol=1e-15), (name, key)
        assert ours[name]["support"] == theirs[name]["support"]

    for digits in (3, 4):
        text = sk.classification_report(
            y_true.numpy(), y_pred.numpy(), labels=labels, target_names=CLASSES, digits=digits, zero_division=0
        )
        assert format_report(ours, CLASSES, digits) == text
    assert classification_report(y_true, y_pred, CLASSES, labels=labels) == format_report(ours, CLASSES, 3)


@pytest.mark.parametrize(("true", "predicted"), [([3] * 6, [3, 3, 5, 3, 1, 3]), ([3] * 4, [3] * 4), ([0, 9], [9, 9])])
def test_by_default_only_classes_present_are_reported_and_averaged_like_scikit_learn(
    true: list[int], predicted: list[int]
) -> None:
    """A one-class folder is not averaged with the nine classes it never held (scikit-learn without labels=)."""
    y_true, y_pred = torch.tensor(true), torch.tensor(predicted)
    present = sorted(set(true) | set(predicted))
    names = [CLASSES[i] for i in present]
    ours = report_dict(confusion_matrix(y_true, y_pred, 10), CLASSES)
    theirs = sk.classification_report(
        y_true.numpy(), y_pred.numpy(), target_names=names, output_dict=True, zero_division=0
    )
    assert set(ours) == set(theirs) == {*names, "accuracy", "macro avg", "weighted avg"}
    for name in [*names, "macro avg", "weighted avg"]:
        for key in ("precision", "recall", "f1-score", "support"):
            assert math.isclose(ours[name][key], theirs[name][key], rel_tol=1e-12), (name, key)
    text = sk.classification_report(y_true.numpy(), y_pred.numpy(), target_names=names, digits=3, zero_division=0)
    assert classification_report(y_true, y_pred, CLASSES) == format_report(ours, CLASSES) == text


def test_long_class_names_widen_the_first_column_like_scikit_learn() -> None:
    names = ("a", "a-much-longer-class-name")
    y_true, y_pred = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])
    expected = sk.classification_report(y_true.numpy(), y_pred.numpy(), target_names=names, digits=3)
    assert classification_report(y_true, y_pred, names) == expected


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="as many predictions as labels, got 2 and 3"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"predictions in 0\.\.2, got values in 0\.\.5"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="3x3 confusion matrix"):
        report_dict(torch.zeros(2, 2, dtype=torch.int64), ("a", "b", "c"))
