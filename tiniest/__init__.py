"""Tiniest: a 97,530-parameter CIFAR-10 classifier, pretrained, verified and one line away.

The API, all of it here at the top level:

* ``tiniest(weights=TiniestWeights.DEFAULT, ...)``: the model (a ``Tiniest``) with its weights;
  ``weights=None`` is a random initialisation. ``load_weights``: the verified tensors alone.
* ``predict(images, top_k=1, ...)``: class names and probabilities for paths, bytes, open files,
  PIL images, arrays or tensors. ``preprocess`` / ``Preprocess``: the same inputs as the model's tensor.
* ``evaluate(weights_or_model, data, split=...)``: accuracy, report and confusion matrix on a dataset.
* ``optimize(model)``: the same model, faster on the CPU. ``layer(model, "2-4")``: a module by the
  model card's layer index. ``TiniestWeights``, ``CLASSES``: the published release and its classes.

``import tiniest`` imports no torch (``tiniest --help`` answers at once): every public name is loaded
on first access, its module then, yet listed by ``dir()`` and seen by type checkers.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import TYPE_CHECKING, Any

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


# First, before any submodule: on an older torch they would fail with some AttributeError deep inside. The
# version is read from torch's installed metadata, not by importing torch (none: a torch built without it).
_torch = next(iter(importlib.metadata.distributions(name="torch")), None)
if _torch is not None and (_problem := _torch_too_old(_torch.version)) is not None:
    raise UnsupportedTorchError(_problem)

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from tiniest.evaluation import evaluate
    from tiniest.fast import optimize
    from tiniest.hub import tiniest
    from tiniest.inference import predict
    from tiniest.layers import layer
    from tiniest.model import Block, LayerNorm2d, Tiniest
    from tiniest.transforms import Preprocess, preprocess
    from tiniest.weights import CLASSES, TiniestWeights, load_weights

__version__ = "1.0.0"

# Public names loaded on first access (their modules import torch, Pillow or numpy): name -> module.
_LAZY = {
    "Block": "tiniest.model",
    "CLASSES": "tiniest.weights",
    "LayerNorm2d": "tiniest.model",
    "Preprocess": "tiniest.transforms",
    "Tiniest": "tiniest.model",
    "TiniestWeights": "tiniest.weights",
    "evaluate": "tiniest.evaluation",
    "layer": "tiniest.layers",
    "load_weights": "tiniest.weights",
    "optimize": "tiniest.fast",
    "predict": "tiniest.inference",
    "preprocess": "tiniest.transforms",
    "tiniest": "tiniest.hub",
}

__all__ = [
    "CLASSES",
    "Block",
    "LayerNorm2d",
    "Preprocess",
    "Tiniest",
    "TiniestWeights",
    "UnverifiedWeightsWarning",
    "WeightsNotFoundError",
    "evaluate",
    "layer",
    "load_weights",
    "optimize",
    "predict",
    "preprocess",
    "tiniest",
]

if not TYPE_CHECKING:  # hidden from type checkers, which would take any misspelt name for Any otherwise

    def __getattr__(name: str) -> Any:
        if name not in _LAZY:
            raise AttributeError(f"module 'tiniest' has no attribute {name!r}")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly from now on
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
