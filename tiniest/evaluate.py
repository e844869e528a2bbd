"""``tiniest evaluate``: accuracy, a scikit-learn style report and the confusion matrix on a dataset split.

Data come from :func:`tiniest.data.load_split` (decoded once, then cached) and the model from
:func:`tiniest.tiniest` made faster by :func:`tiniest.optimize.optimize` unless ``--eager``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tiniest.data import LabeledImages
from tiniest.metrics import confusion_matrix, format_confusion_matrix, format_report, report_dict
from tiniest.release import CLASSES
from tiniest.transforms import preprocess

__all__ = ["Evaluation", "align_labels", "evaluate"]

HELP = "accuracy, classification report and confusion matrix on a dataset split"


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate`: predictions, counts, every number of the report and the timing."""

    classes: tuple[str, ...]
    labels: torch.Tensor
    predictions: torch.Tensor
    confusion: torch.Tensor
    report: dict[str, Any]
    inference_seconds: float

    @property
    def correct(self) -> int:
        return int((self.labels == self.predictions).sum())

    @property
    def accuracy(self) -> float:
        return float(self.report["accuracy"])

    def text(self) -> str:
        """The report in scikit-learn's layout (3 decimals), as on the model card."""
        return format_report(self.report, self.classes, digits=3)


def align_labels(data: LabeledImages, classes: Sequence[str]) -> torch.Tensor:
    """``data.labels`` as indices into the model's ``classes``; the dataset's class names must all be among them."""
    if tuple(data.classes) == tuple(classes):
        return data.labels
    missing = [name for name in data.classes if name not in classes]
    if missing:
        raise ValueError(f"dataset classes {list(data.classes)} do not match the model's {list(classes)}: {missing}")
    mapping = torch.tensor([list(classes).index(name) for name in data.classes], dtype=torch.int64)
    return mapping[data.labels]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: LabeledImages,
    *,
    classes: Sequence[str] | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> Evaluation:
    """Run ``model`` over ``data`` in batches and score its top-1 predictions."""
    if len(data) == 0:
        raise ValueError("expected at least one image to evaluate, got an empty dataset")
    if batch_size < 1:
        raise ValueError(f"expected a positive batch size, got {batch_size}")
    classes = classes if classes is not None else getattr(model, "labels", CLASSES)
    labels = align_labels(data, classes)
    device = next(iter(model.parameters()), torch.empty(0)).device
    starts: Sequence[int] = range(0, len(data), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluating", unit="batch", leave=False)
    predictions = []
    began = time.perf_counter()
    for start in starts:
        batch = preprocess(data.images[start : start + batch_size]).to(device)
        predictions.append(model(batch).argmax(dim=1).cpu())
    elapsed = time.perf_counter() - began
    predicted = torch.cat(predictions)
    confusion = confusion_matrix(labels, predicted, len(classes))
    return Evaluation(tuple(classes), labels, predicted, confusion, report_dict(confusion, classes), elapsed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="dataset root: an image folder with split subfolders, a cifar-10-batches-py folder, or hf://owner/name",
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every number to FILE as JSON")
    parser.add_argument("--weights", help="weights file or URL (default: the pinned release, or $TINIEST_WEIGHTS)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per batch (default: 500)")
    parser.add_argument("--eager", action="store_true", help="run the plain model instead of tiniest.optimize's")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out image files that cannot be read, listing them (default: the first one is an error)",
    )
    parser.add_argument("--plot", type=Path, metavar="FILE", help="also draw the confusion matrix to FILE (e.g. .png)")


_MODEL_KINDS = {
    "eager": "eager model",
    "optimized": "optimized model (compiled)",
    "optimized-uncompiled": "tiniest.optimize's module run eagerly (not compiled)",
}


def _model_kind(model: nn.Module) -> str:
    """What actually ran: the plain model, the compiled optimized one, or the optimized one's eager fallback."""
    compiled = getattr(model, "compiled", None)
    if compiled is None:
        return "eager"
    return "optimized" if compiled else "optimized-uncompiled"


def run(args: argparse.Namespace) -> int:
    from tiniest import plots
    from tiniest.data import load_split
    from tiniest.hub import tiniest

    if args.batch_size < 1:
        raise ValueError(f"expected a positive batch size, got {args.batch_size}")
    if args.plot is not None:
        plots.require_matplotlib()  # before decoding the data
    from tiniest.transforms import PreprocessError, require_images_extra

    require_images_extra(*(() if args.quiet else ("tqdm",)))  # one line naming the extra, not a traceback
    began = time.perf_counter()
    try:
        data = load_split(args.data, args.split, progress=not args.quiet, skip_unreadable=args.skip_unreadable)
    except PreprocessError as error:
        raise PreprocessError(f"{error}; --skip-unreadable leaves such files out") from None
    decoded = time.perf_counter()
    plain = tiniest(weights=args.weights, progress=not args.quiet)
    align_labels(data, plain.labels)  # refuse a dataset foreign to the weights before building the fast model
    model: nn.Module = plain
    if not args.eager:
        from tiniest.optimize import optimize, worth_building

        model = optimize(model, build=worth_building(len(data)))  # a few images: no wait for a build
    loaded = time.perf_counter()
    result = evaluate(model, data, batch_size=args.batch_size, progress=not args.quiet)
    total = time.perf_counter() - began
    n = len(data)
    kind = _model_kind(model)
    print(f"{args.data} ({args.split}): {n} images, {_MODEL_KINDS[kind]}")
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable image files:")
        for _, reason in data.skipped:
            print(f"  {reason}")
    print(f"accuracy {result.accuracy:.4f} ({result.correct}/{n})\n")
    absent = [name for name in result.classes if name not in result.report]
    if absent:
        print(f"not in the report (in neither the labels nor the predictions): {', '.join(absent)}\n")
    print(result.text())
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(format_confusion_matrix(result.confusion, result.classes))
    images_per_second = n / (decoded - began + result.inference_seconds)
    print(
        f"{images_per_second:.0f} images/s (data {decoded - began:.2f} s, inference {result.inference_seconds:.2f} s, "
        f"{n / result.inference_seconds:.0f} images/s; total with model loading {total:.2f} s, "
        f"{torch.get_num_threads()} threads)"
    )
    if args.json is not None:
        record = {
            "data": os.fspath(args.data),
            "split": args.split,
            "images": n,
            "correct": result.correct,
            "accuracy": result.accuracy,
            "classes": list(result.classes),
            "report": result.report,
            "confusion_matrix": result.confusion.tolist(),
            "model": kind,
            "skipped": [{"file": file, "error": reason} for file, reason in data.skipped],
            "absent_classes": absent,
            "seconds": {"data": decoded - began, "model": loaded - decoded, "inference": result.inference_seconds},
            "images_per_second": images_per_second,
            "inference_images_per_second": n / result.inference_seconds,
            "threads": torch.get_num_threads(),
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        plots.save_confusion_matrix(args.plot, result.confusion, result.classes)
    return 0
