"""A model for other classes: the trunk of loaded weights under a new head, randomly initialised.

The builder's ``num_classes`` (``tiniest.tiniest``) and ``tiniest train --init`` share this; a load
whose classes match runs none of it. The model class is passed in: this package never imports the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
from torch import nn

from tiniest.weights.loading import LoadedWeights, load_strictly, num_outputs

__all__ = ["HEAD", "head_fits", "model_with_new_head", "with_new_head"]

M = TypeVar("M", bound=nn.Module)
HEAD = "fc"  # the layer that maps features to classes: new when the classes differ


def head_fits(weights: LoadedWeights, classes: Sequence[str] | int, origin: str = "weights") -> bool:
    """Whether the weights' head answers for ``classes``: the same names in the same order, or, where either
    side names none (a bare file, or ``classes`` a count), as many outputs."""
    count = num_outputs(weights.state_dict, origin)
    names = weights.meta.get("categories")
    if isinstance(classes, int) or names is None:
        return count == (classes if isinstance(classes, int) else len(classes))
    return list(names) == list(classes)


def with_new_head(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk of ``state_dict`` (every layer but ``HEAD``) with ``model``'s own head, as initialised."""
    own = model.state_dict()
    state = {key: value for key, value in state_dict.items() if not key.startswith(f"{HEAD}.")}
    state.update({key: value for key, value in own.items() if key.startswith(f"{HEAD}.")})
    return state


def model_with_new_head(cls: Callable[..., M], weights: LoadedWeights, num_classes: int) -> M:
    """``cls(num_classes, ...)`` holding the trunk of ``weights``; its ``meta`` keeps what still holds.

    The new outputs are called ``class_0``...; ``meta["head"]`` says the head is new and where the trunk is from.
    """
    had = num_outputs(weights.state_dict, weights.location)
    kept = {key: value for key, value in weights.meta.items() if key not in ("categories", "metrics", "sha256")}
    note = f"new: {num_classes} outputs, randomly initialised; the trunk is from {weights.location} ({had} classes)"
    model = cls(num_classes, labels=[f"class_{i}" for i in range(num_classes)], meta={**kept, "head": note})
    with torch.no_grad():
        load_strictly(model, with_new_head(weights.state_dict, model), weights.location)
    return model
