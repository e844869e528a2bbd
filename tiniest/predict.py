"""``tiniest predict``: class names and probabilities for your own pictures.

``tiniest.predict(x)`` takes everything :func:`tiniest.preprocess` does (paths, PIL images, numpy
arrays, tensors, lists of them) and returns one :class:`Prediction` per image.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tiniest.callable_module import make_module_callable
from tiniest.release import CLASSES

__all__ = ["Prediction", "predict"]

HELP = "classify image files: class names with probabilities"


@dataclass(frozen=True)
class Prediction:
    """The ``top`` classes of one image, most probable first, as ``(name, probability)`` pairs."""

    top: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]


@functools.lru_cache(maxsize=4)
def _default_model(weights: str | None, eager: bool) -> nn.Module:
    """The published (or ``weights``) model, optimized unless ``eager``; loaded once per process."""
    from tiniest.hub import tiniest

    model: nn.Module = tiniest(weights=weights, progress=False)
    if not eager:
        from tiniest.optimize import optimize

        model = optimize(model)
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
) -> list[Prediction]:
    """Classify ``images`` (any input :func:`tiniest.preprocess` accepts); one :class:`Prediction` per image.

    ``model`` defaults to the published weights (or ``weights``, or ``$TINIEST_WEIGHTS``), made
    faster by :func:`tiniest.optimize.optimize` unless ``eager``; it is loaded once and reused.
    ``classes`` name the outputs; default: the model's ``labels`` (the weights' own class names).
    """
    if top_k < 1 or (classes is not None and top_k > len(classes)):
        raise ValueError(f"expected top_k between 1 and {len(classes or CLASSES)}, got {top_k}")
    from tiniest.transforms import preprocess

    batch = preprocess(images)
    if model is None:
        chosen = os.fspath(weights) if weights is not None else os.environ.get("TINIEST_WEIGHTS") or None
        model = _default_model(chosen, eager)
    names = classes if classes is not None else getattr(model, "labels", CLASSES)
    if top_k > len(names):
        raise ValueError(f"expected top_k between 1 and {len(names)} (the model's classes), got {top_k}")
    device = next(iter(model.parameters()), torch.empty(0)).device
    probabilities = torch.softmax(model(batch.to(device)).float(), dim=1).cpu()
    values, indices = probabilities.topk(top_k, dim=1)
    return [
        Prediction(tuple((names[i], float(p)) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)))
        for row_p, row_i in zip(values, indices, strict=True)
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (any size; see the README's input policy)"
    )
    parser.add_argument(
        "--top-k", type=int, default=1, metavar="K", help="show the K most probable classes (default: 1)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--weights", help="weights file or URL (default: the pinned release, or $TINIEST_WEIGHTS)")
    parser.add_argument("--eager", action="store_true", help="run the plain model instead of tiniest.optimize's")
    parser.add_argument(
        "--plot", metavar="FILE", help="also draw the images, as the model sees them, with their top classes to FILE"
    )


def run(args: argparse.Namespace) -> int:
    from tiniest import plots

    if args.plot is not None:
        plots.require_matplotlib()  # before any work
    results = predict(list(args.images), top_k=args.top_k, weights=args.weights, eager=args.eager)
    if args.plot is not None:
        plots.save_predictions(args.plot, args.images, results)
    if args.json:
        records = [
            {"image": image, "predictions": [{"label": name, "probability": p} for name, p in result.top]}
            for image, result in zip(args.images, results, strict=True)
        ]
        print(json.dumps(records, indent=2))
        return 0
    width = max((len(name) for result in results for name, _ in result.top), default=0)
    for image, result in zip(args.images, results, strict=True):
        if args.top_k == 1:
            print(f"{image}: {result.label} {result.probability:.3f}")
        else:
            print(f"{image}:")
            for name, p in result.top:
                print(f"  {name:<{width}} {p:.3f}")
    return 0


make_module_callable(__name__, predict)
