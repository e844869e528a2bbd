"""Tiniest: a 97,530-parameter CIFAR-10 classifier, pretrained, verified and one line away.

``tiniest.tiniest()`` returns the published model; everything heavier (image decoding,
datasets, training, exports) is imported only when first used, so that loading the model
costs little beyond ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

from tiniest.errors import UnverifiedWeightsWarning, WeightsNotFoundError
from tiniest.hub import tiniest
from tiniest.layers import layer
from tiniest.model import Block, LayerNorm2d, Tiniest
from tiniest.weights import CLASSES, TiniestWeights, load_weights

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
