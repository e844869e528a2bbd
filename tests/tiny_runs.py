"""Small real datasets and training runs for the train/release tests (random pixels, CIFAR-10's or any classes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tiniest.commands import main
from tiniest.weights import CLASSES


def make_dataset(
    root: Path,
    train_per_class: int = 16,
    test_per_class: int = 2,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
) -> Path:
    """``root/{train,test}/<class>/<n>.png`` for ``classes`` (CIFAR-10's ten by default); returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def train(data: Path, output: Path, *flags: str) -> int:
    """``tiniest train`` in this process, quiet, on ``data`` into ``output``."""
    return main(["train", "--data", str(data), "--output", str(output), "--no-progress", *flags])
