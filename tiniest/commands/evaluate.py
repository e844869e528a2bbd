"""``tiniest evaluate``: accuracy, a scikit-learn style report and the confusion matrix on a dataset split.

Data come from :func:`tiniest.data.load_split` (decoded once, then cached) and the model from
:func:`tiniest.tiniest` made faster by :func:`tiniest.optimize` unless ``--eager``; the numbers
from :func:`tiniest.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tiniest import plots
from tiniest.commands._common import add_device_argument
from tiniest.data import load_split
from tiniest.devices import resolve_device
from tiniest.errors import PreprocessError, UsageError
from tiniest.evaluation import align_labels, evaluate
from tiniest.hub import tiniest
from tiniest.metrics import format_confusion_matrix
from tiniest.names import printable
from tiniest.transforms import require_images_extra
from tiniest.weights import TiniestWeights

HELP = "accuracy, classification report and confusion matrix on a dataset split"


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
    add_device_argument(parser, "cpu; the fast path runs on the CPU only")
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
    if args.batch_size < 1:
        raise UsageError(f"expected a positive batch size, got {args.batch_size}")
    if args.plot is not None:
        plots.require_matplotlib()  # before decoding the data
    require_images_extra(*(() if args.quiet else ("tqdm",)))  # one line naming the extra, not a traceback
    device = resolve_device(args.device)  # before decoding the data
    began = time.perf_counter()
    try:
        data = load_split(args.data, args.split, progress=not args.quiet, skip_unreadable=args.skip_unreadable)
    except PreprocessError as error:
        raise PreprocessError(f"{error}; --skip-unreadable leaves such files out") from None
    decoded = time.perf_counter()
    weights = TiniestWeights.DEFAULT if args.weights is None else args.weights  # the default: $TINIEST_WEIGHTS too
    plain = tiniest(weights=weights, progress=not args.quiet, device=device)
    align_labels(data, plain.labels)  # refuse a dataset foreign to the weights before building the fast model
    model: nn.Module = plain
    if not args.eager and device.type != "cpu":
        print(f"tiniest evaluate: the fast path (tiniest.optimize) is CPU-only; on {device} the plain model runs",
              file=sys.stderr)
    elif not args.eager:
        from tiniest.fast import optimize, worth_building

        model = optimize(model, build=worth_building(len(data)))  # a few images: no wait for a build
    loaded = time.perf_counter()
    result = evaluate(model, data, batch_size=args.batch_size, progress=not args.quiet)
    total = time.perf_counter() - began
    n = len(data)
    kind = _model_kind(model)
    print(f"{printable(args.data)} ({printable(args.split)}): {n} images, {_MODEL_KINDS[kind]}")
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable image file{'' if len(data.skipped) == 1 else 's'}:")
        for _, reason in data.skipped:
            print(f"  {printable(reason)}")
    print(f"accuracy {result.accuracy:.4f} ({result.correct}/{n})\n")
    absent = [name for name in result.classes if name not in result.report]
    if absent:
        print(f"not in the report (in neither the labels nor the predictions): {printable(', '.join(absent))}\n")
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
            "device": str(device),
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
