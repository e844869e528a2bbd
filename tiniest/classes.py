"""CIFAR-10's class names, and the names a model gets when its weights bring none.

A leaf of the package: the architecture, the datasets and the weights' metadata all read it. The
published weights' own ``categories`` (``tiniest.CLASSES``, from ``release.json``) are these; a
test checks that they agree.
"""

from __future__ import annotations

__all__ = ["CIFAR10_CLASSES", "default_labels"]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def default_labels(num_classes: int) -> tuple[str, ...]:
    """CIFAR-10's names for 10 outputs, else ``class_0``, ``class_1``..."""
    if num_classes == len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))
