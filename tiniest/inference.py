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
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tiniest.errors import PreprocessError, UsageError
from tiniest.hub import tiniest
from tiniest.weights import CLASSES

__all__ = ["Prediction", "predict"]

CHUNK = 64  # inputs read, reduced to the model's size and classified at a time (bounds activation memory)


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


# Threads that ask for the default model at once wait for one load (lru_cache alone would load it in each).
_DEFAULT_MODEL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _default_model(weights: str | None, eager: bool, build: bool) -> nn.Module:
    """The published (or ``weights``) model, optimized unless ``eager``; loaded once per process.

    ``build``: worth waiting for the compiled package if this machine has none (many images).
    """
    model: nn.Module = tiniest(weights=weights, progress=False)
    if not eager:
        from tiniest.fast import optimize

        model = optimize(model, build=build)
    return model


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
) -> list[Prediction]:
    """Classify ``images`` (any input :func:`tiniest.preprocess` accepts); one :class:`Prediction` per image.

    ``model`` defaults to the published weights (or ``weights``, or ``$TINIEST_WEIGHTS``), made
    faster by :func:`tiniest.optimize` unless ``eager``; it is loaded once and reused.
    ``classes`` name the outputs; default: the model's ``labels`` (the weights' own class names).
    ``errors``: ``"raise"`` stops at the first input that cannot be read (a
    :class:`tiniest.errors.PreprocessError`); ``"report"`` gives that input (a file, or one
    item of a list) a :class:`Prediction` with ``error`` set instead, in its place, and goes on.
    """
    if top_k < 1 or (classes is not None and top_k > len(classes)):
        raise UsageError(f"expected top_k between 1 and {len(classes or CLASSES)}, got {top_k}")
    if errors not in ("raise", "report"):
        raise UsageError(f"expected errors='raise' or 'report', got {errors!r}")
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

            with _DEFAULT_MODEL_LOCK:
                model = _default_model(chosen, eager, worth_building(len(items)))
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
