"""The model card's layer indices as modules: ``(2, 4)``, ``"2-4"`` or ``"l1.pool"`` -> ``model.l1.pool``.

The card's table is torchinfo's: a layer is ``depth-index``, its depth below the model (children
are depth 1) and its running index among the modules of that depth, counted in the order forward
calls them. Tiniest registers its modules in that order (``tests/test_layers.py`` checks every
row against the card and against torchinfo), so the index is counted here over ``named_modules()``,
without running the model. That is what lets forward hooks go where the card points::

    pool = tiniest.layer(model, (2, 4))          # the first block's AvgPool2d, model.l1.pool
    handle = pool.register_forward_hook(hook)
"""

from __future__ import annotations

import re
from typing import TypeAlias

from torch import nn

from tiniest.errors import UsageError

__all__ = ["LayerIndex", "layer", "layer_name", "layer_names"]

LayerIndex: TypeAlias = tuple[int, int] | str  # (depth, index), "depth-index", or a module name such as "l1.pool"
_DEPTH_INDEX = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


def layer_names(model: nn.Module) -> dict[tuple[int, int], str]:
    """Every module below ``model`` by its ``(depth, index)``, in the table's order: ``{(1, 1): "conv1", ...}``."""
    counts: dict[int, int] = {}
    names: dict[tuple[int, int], str] = {}
    for name, _ in model.named_modules():
        if not name:  # the model itself: the table's first row, which has no index
            continue
        depth = name.count(".") + 1
        counts[depth] = counts.get(depth, 0) + 1
        names[depth, counts[depth]] = name
    return names


def layer_name(model: nn.Module, index: LayerIndex) -> str:
    """The module name (``"l1.pool"``) of a card index ``(2, 4)`` or ``"2-4"``; a module name is checked and kept."""
    if isinstance(index, str):
        match = _DEPTH_INDEX.fullmatch(index)
        if match is None:
            if index and index in dict(model.named_modules()):
                return index
            raise UsageError(f"layer {index!r}: expected {_forms(model)}, got no such module name")
        index = (int(match.group(1)), int(match.group(2)))
    names = layer_names(model)
    if not (isinstance(index, tuple) and len(index) == 2 and all(type(part) is int for part in index)):
        raise UsageError(f"layer index: expected {_forms(model)}, got {index!r}")
    if index not in names:
        raise UsageError(f"layer {index}: expected {_forms(model)}, got no such index")
    return names[index]


def layer(model: nn.Module, index: LayerIndex) -> nn.Module:
    """The module at the model card's layer index ``(2, 4)`` / ``"2-4"``, or of a name such as ``"l1.pool"``."""
    return model.get_submodule(layer_name(model, index))


def _forms(model: nn.Module) -> str:
    """The accepted forms and ranges, for messages: ``(depth, index) with depth 1 (index 1-12), 2 (1-44)...``."""
    counts: dict[int, int] = {}
    for depth, _ in layer_names(model):
        counts[depth] = counts.get(depth, 0) + 1
    ranges = ", ".join(f"{depth} (index 1-{count})" for depth, count in sorted(counts.items()))
    return f"(depth, index) or 'depth-index' of the model card with depth {ranges}, or a module name such as 'l1.pool'"
