"""Inference: class names and probabilities for your own pictures (``tiniest.predict``).

``tiniest.predict(x)`` takes everything :func:`tiniest.preprocess` does (paths, PIL images, numpy
arrays, tensors, lists of them) and returns one :class:`Prediction` per image. Inputs are read and
reduced to the model's size a chunk at a time (JPEGs decoded at reduced scale), so a folder of
large photos costs the memory of one photo, not of the folder. With ``errors="report"`` an input
that cannot be read gives a :class:`Prediction` whose ``error`` says why, and the others still
get their answer.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tiniest.devices import resolve_device
from tiniest.errors import PreprocessError, UsageError
from tiniest.hub import tiniest
from tiniest.weights import CLASSES

__all__ = ["Prediction", "predict"]

CHUNK = 64  # inputs read, reduced to the model's size and classified at a time (bounds activation memory)

logger = logging.getLogger(__name__)
_loading = threading.Lock()  # threads asking for the default model at once load it once


@dataclass(frozen=True)
class Prediction:
    """The ``top`` classes of one image, most probable first, as ``(name, probability)`` pairs.

    With ``predict(..., errors="report")``, an input that could not be read has ``error`` (the
    message) and an empty ``top``; ``label`` and ``probability`` then raise a ``ValueError``.
    """

    top: tuple[tuple[str, float], ...]
    error: str | None = None

    @property
    def label(self) -> str:
        return self._best()[0]

    @property
    def probability(self) -> float:
        return self._best()[1]

    def _best(self) -> tuple[str, float]:
        if self.error is not None:
            raise ValueError(f"no prediction: {self.error}")
        return self.top[0]


@functools.lru_cache(maxsize=4)
def _default_model(weights: str | None, eager: bool, build: bool, device: torch.device) -> nn.Module:
    """The published (or ``weights``) model on ``device``, optimized unless ``eager``; loaded once per process.

    ``build``: worth waiting for the compiled package if this machine has none (many images).
    The fast path is CPU code: on another device the plain model runs (said once per model).
    """
    model: nn.Module = tiniest(weights=weights, progress=False, device=device)
    if not eager and device.type != "cpu":
        logger.warning("tiniest.predict: the fast path (tiniest.optimize) is CPU-only; on %s the plain model runs",
                       device)
    elif not eager:
        from tiniest.fast import optimize

        model = optimize(model, build=build)
    return model


def _shared_model(weights: str | None, eager: bool, build: bool, device: torch.device) -> nn.Module:
    """:func:`_default_model`, loaded by the first thread that asks while the others wait for it."""
    with _loading:
        return _default_model(weights, eager, build, device)


@torch.inference_mode()
def predict(
    images: Any,
    *,
    top_k: int = 1,
    model: nn.Module | None = None,
    weights: str | os.PathLike[str] | None = None,
    eager: bool = False,
    classes: Sequence[str] | None = None,
    errors: Literal["raise", "report"] = "raise",
    device: str | torch.device | None = None,
) -> list[Prediction]:
    """Classify ``images`` (any input :func:`tiniest.preprocess` accepts); one :class:`Prediction` per image.

    ``model`` defaults to the published weights (or ``weights``, or ``$TINIEST_WEIGHTS``), made
    faster by :func:`tiniest.optimize` unless ``eager``; it is loaded once and reused.
    ``classes`` name the outputs; default: the model's ``labels`` (the weights' own class names).
    ``errors``: ``"raise"`` stops at the first input that cannot be read (a
    :class:`tiniest.errors.PreprocessError`); ``"report"`` gives that input (a file, or one
    item of a list) a :class:`Prediction` with ``error`` set instead, in its place, and goes on.
    ``device`` (``"cuda"``, ``"cuda:1"``, ``"mps"``...): where the model runs; a ``model`` given is
    moved there (``model.to``, in place). Default: the CPU, or the device of the ``model`` given.
    The fast path is CPU-only: elsewhere the plain model runs. Results are on the CPU.
    """
    if top_k < 1 or (classes is not None and top_k > len(classes)):
        raise UsageError(f"expected top_k between 1 and {len(classes or CLASSES)}, got {top_k}")
    if errors not in ("raise", "report"):
        raise UsageError(f"expected errors='raise' or 'report', got {errors!r}")
    target = resolve_device(device)  # a device this machine lacks is refused before any input is read
    if model is not None and device is not None:
        model.to(target)
    from tiniest.transforms import preprocess

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise PreprocessError("expected at least one image, got an empty list")
    results: list[Prediction] = []
    for start in range(0, len(items), CHUNK):
        batches: list[torch.Tensor] = []
        slots: list[int | str] = []  # per input: its number of images, or its error
        for item in items[start : start + CHUNK]:
            try:
                batches.append(preprocess(item))
            except PreprocessError as error:
                if errors == "raise":
                    raise
                slots.append(str(error))
            else:
                slots.append(batches[-1].shape[0])
        if batches and model is None:  # loaded only once some input could be read
            chosen = os.fspath(weights) if weights is not None else os.environ.get("TINIEST_WEIGHTS") or None
            from tiniest.fast import worth_building

            model = _shared_model(chosen, eager, worth_building(len(items)), target)
        names = classes if classes is not None else getattr(model, "labels", CLASSES)
        if top_k > len(names):
            raise UsageError(f"expected top_k between 1 and {len(names)} (the model's classes), got {top_k}")
        answers = iter(_classify(model, torch.cat(batches), top_k, names) if model is not None and batches else [])
        for slot in slots:
            if isinstance(slot, str):
                results.append(Prediction((), error=slot))
            else:
                results.extend(next(answers) for _ in range(slot))
    return results


def _classify(model: nn.Module, batch: torch.Tensor, top_k: int, classes: Sequence[str]) -> list[Prediction]:
    device = next(iter(model.parameters()), torch.empty(0)).device
    probabilities = torch.softmax(model(batch.to(device)).float(), dim=1).cpu()
    values, indices = probabilities.topk(top_k, dim=1)
    return [
        Prediction(tuple((classes[i], float(p)) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)))
        for row_p, row_i in zip(values, indices, strict=True)
    ]
