"""Loaded weights, and what a model needs of them: class count, class names, strictly checked tensors.

The model class is passed in (``model_from_weights``): this package never imports the model.
A model takes its class count from the weights' ``fc`` layer and its ``labels`` from the metadata's
``categories``; weights that name none get ``class_0``, ``class_1``... and one
``NoClassNamesWarning``. A model for other classes takes the weights' trunk and a new head
(``tiniest.weights.heads``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from tiniest.errors import IncompatibleWeightsError, TiniestWarning, warn
from tiniest.weights.formats import is_safetensors, read_weights, sha256_hex
from tiniest.weights.releases import TiniestWeights

__all__ = [
    "LoadedWeights",
    "NoClassNamesWarning",
    "decode_metadata",
    "decode_weights",
    "load_strictly",
    "model_from_weights",
    "num_outputs",
]

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class LoadedWeights:
    """A verified (or caller-chosen) state_dict, where it came from, and what is known of it (``meta``)."""

    state_dict: dict[str, torch.Tensor]
    source: str
    location: str
    sha256: str
    verified: bool
    meta: dict[str, Any] = field(default_factory=dict)


class NoClassNamesWarning(TiniestWarning):
    """Weights whose file, and whatever lies beside it, name none of their classes: outputs are ``class_<i>``."""


def decode_metadata(header: Mapping[str, str]) -> dict[str, Any]:
    """safetensors metadata (strings) as values: JSON decoded where encoding it again gives the same text.

    ``format`` (safetensors' own key) is dropped; so the metadata written back is byte-identical.
    """
    meta: dict[str, Any] = {}
    for key, text in header.items():
        if key == "format":
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = text
        exact = not isinstance(value, str) and json.dumps(value, sort_keys=True) == text
        meta[key] = value if exact else text
    return meta


def decode_weights(data: bytes, *, source: str, location: str, verified: bool) -> LoadedWeights:
    """The tensors of ``data`` and what is known of them: the file's own metadata, else the pinned record
    (the publisher's ``.pt``), else what lies beside a bare file. ``verified``: the bytes are the pinned release."""
    state_dict, metadata = read_weights(data, origin=location, pinned=verified)
    pinned = TiniestWeights.DEFAULT.release
    known = pinned.sha256 if is_safetensors(data) else pinned.source_sha256  # verified: the caller hashed it
    digest = known if verified else sha256_hex(data)  # once: the metadata beside a bare file is found by it too
    if metadata:
        meta = {**decode_metadata(metadata), "sha256": digest}
    elif digest == pinned.source_sha256:
        meta = {**pinned.meta, "sha256": pinned.sha256}
    elif "://" in location:
        meta = {}
    else:
        from tiniest.weights.beside import meta_beside  # a record or a training run beside it may name its classes

        meta = meta_beside(Path(location), digest, state_dict)
    return LoadedWeights(state_dict, source, location, pinned.sha256 if verified else digest, verified, meta)


def num_outputs(state_dict: Mapping[str, torch.Tensor], origin: str = "weights") -> int:
    """The class count of Tiniest weights: the rows of their ``fc.weight``."""
    fc = state_dict.get("fc.weight")
    if not isinstance(fc, torch.Tensor) or fc.dim() != 2 or fc.shape[0] < 1:
        found = f"of shape {tuple(fc.shape)}" if isinstance(fc, torch.Tensor) else "absent"
        names = ", ".join(list(state_dict)[:3]) + (", ..." if len(state_dict) > 3 else "")
        raise IncompatibleWeightsError(
            f"{origin}: expected Tiniest weights, whose fc.weight has shape (classes, 80); got {len(state_dict)} "
            f"tensors ({names or 'none'}) and fc.weight {found}"
        )
    return int(fc.shape[0])


def _labels(meta: Mapping[str, Any], num_classes: int, origin: str) -> list[str] | None:
    names = meta.get("categories")
    if names is None:
        return None
    if (
        not isinstance(names, list)
        or not all(isinstance(name, str) for name in names)
        or len(names) != num_classes
        or len(set(names)) != len(names)
    ):
        shown = repr(names) if len(repr(names)) < 300 else f"{type(names).__name__} {repr(names)[:200]}..."
        raise IncompatibleWeightsError(
            f"{origin}: expected {num_classes} distinct class names in the metadata's categories "
            f"(one per output of the weights), got {shown}"
        )
    return names


def model_from_weights(
    cls: Callable[..., M], state_dict: dict[str, torch.Tensor], meta: Mapping[str, Any], *, origin: str = "weights"
) -> M:
    """An eval-mode ``cls(num_classes, labels=..., meta=...)`` holding the weights, loaded strictly."""
    num_classes = num_outputs(state_dict, origin)
    labels = _labels(meta, num_classes, origin)
    if labels is None:
        warn(
            f"{origin} carries no class names (a bare state_dict, with no release.json or run checkpoint.pt beside "
            f"it that names it): its {num_classes} outputs are called class_0 ... class_{num_classes - 1}. Keep a "
            "release's .pt beside its release.json (a run's model.pt in its run folder), or use a release's "
            ".safetensors, which carries its names",
            NoClassNamesWarning,
        )
    model = cls(num_classes, labels=labels, meta=meta)
    load_strictly(model, state_dict, origin)
    return model.eval()


def load_strictly(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str = "weights") -> None:
    """``model.load_state_dict(state_dict, strict=True)``, refusing a mismatch in a few lines.

    torch lists every missing or unexpected name (all 88 for a foreign file); this says how many,
    with a few examples, and which shapes differ. Integers where the model holds floats (which
    ``load_state_dict`` would cast silently) and NaN or infinite values are refused too.
    """
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    reshaped = [
        f"{name} {tuple(state_dict[name].shape)} instead of {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    problems = [
        f"{len(found)} {kind} ({_examples(found)})"
        for kind, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if found
    ]
    if problems:
        raise IncompatibleWeightsError(
            f"{origin} does not fit {type(model).__name__}: expected its {len(expected)} tensors, got "
            f"{len(state_dict)}; {', '.join(problems)}"
        )
    for name, tensor in expected.items():
        given = state_dict[name]
        if not tensor.is_floating_point():
            continue
        if not given.is_floating_point():
            raise IncompatibleWeightsError(
                f"{origin}: tensor {name} is {str(given.dtype).removeprefix('torch.')}; expected floating point weights"
            )
        if given.dtype.itemsize == 1:  # float8: torch cannot test or cast it everywhere; no Tiniest is stored so
            raise IncompatibleWeightsError(
                f"{origin}: tensor {name} is {str(given.dtype).removeprefix('torch.')}; expected float16, bfloat16, "
                "float32 or float64 weights"
            )
        bad = int((~torch.isfinite(given)).sum())
        if bad:
            raise IncompatibleWeightsError(
                f"{origin}: tensor {name} holds {bad} NaN or infinite value(s) out of {given.numel()}; "
                "expected finite weights"
            )
    model.load_state_dict(state_dict, strict=True)


def _examples(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
