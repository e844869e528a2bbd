"""Tiniest: a 97,530-parameter CIFAR-10 classifier, pretrained, verified and one line away.

``tiniest.tiniest()`` returns the published model; everything heavier (image decoding,
datasets, training, exports) is imported only when first used, so that loading the model
costs little beyond ``import torch``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import torch

from tiniest.errors import UnsupportedTorchError, UnverifiedWeightsWarning, WeightsNotFoundError

# The oldest torch tiniest runs on, as in pyproject.toml (a test holds the two equal) and as CI tests it.
TORCH_FLOOR = (2, 3)


def _torch_too_old(version: str) -> str | None:
    """Why ``version`` of torch will not do, in one line, or None; a version that is not "X.Y..." is let be."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) >= TORCH_FLOOR:
        return None
    floor = ".".join(map(str, TORCH_FLOOR))
    return f"tiniest needs torch >= {floor} (installed: {version}); upgrade it: pip install 'torch>={floor}'"


# First, before any submodule: on an older torch they would fail with some AttributeError deep inside.
if (_problem := _torch_too_old(str(torch.__version__))) is not None:
    raise UnsupportedTorchError(_problem)

from tiniest.hub import tiniest  # noqa: E402
from tiniest.layers import layer  # noqa: E402
from tiniest.model import Block, LayerNorm2d, Tiniest  # noqa: E402
from tiniest.weights import CLASSES, TiniestWeights, load_weights  # noqa: E402

__version__ = "1.0.0"

# Public names served lazily: name -> module that defines it.
_LAZY = {
    "Preprocess": "tiniest.transforms",
    "preprocess": "tiniest.transforms",
    "predict": "tiniest.inference",
    "optimize": "tiniest.fast",
}

__all__ = [
    "CLASSES",
    "Block",
    "LayerNorm2d",
    "Tiniest",
    "TiniestWeights",
    "UnverifiedWeightsWarning",
    "WeightsNotFoundError",
    "layer",
    "load_weights",
    "tiniest",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiniest' has no attribute {name!r}")
