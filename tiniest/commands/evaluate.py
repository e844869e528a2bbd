"""``tiniest evaluate``: accuracy, a scikit-learn style report and the confusion matrix on a dataset split.

Data come from ``tiniest.data.load_split`` (decoded once, then cached) and the model from
``tiniest.tiniest`` made faster by ``tiniest.optimize`` unless ``--eager``; the numbers
from ``tiniest.evaluation.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiniest.commands._common import (
    add_device_argument,
    add_model_arguments,
    check_output_file,
    check_plot_file,
    chosen_weights,
)
from tiniest.errors import PreprocessError, UsageError
from tiniest.names import printable
from tiniest.storage import save_atomically

if TYPE_CHECKING:  # (imported where used, the command running: --help imports no torch)
    import torch
    from torch import nn

    from tiniest.data import LabeledImages
    from tiniest.evaluation import Evaluation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="dataset root: an image folder with split subfolders, a cifar-10-batches-py folder, or hf://owner/name",
    )
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every number to FILE as JSON")
    parser.add_argument("--batch-size", type=int, default=500, help="images per batch (default: 500)")
    add_model_arguments(parser)
    add_device_argument(parser, "cpu; the fast path runs on the CPU only")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
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


@dataclass(frozen=True)
class _Seconds:
    """Where the time went: decoding the data, loading (and optimizing) the model, inference, all of it."""

    data: float
    model: float
    inference: float
    total: float
    threads: int  # torch's intra-op threads, which inference ran on


def run(args: argparse.Namespace) -> int:
    import torch

    from tiniest import plots
    from tiniest.devices import resolve_device
    from tiniest.evaluation import evaluate

    _check_early(args)
    device = resolve_device(args.device)  # before decoding the data
    began = time.perf_counter()
    data = _load_data(args)
    decoded = time.perf_counter()
    model = _load_model(args, data, device)
    loaded = time.perf_counter()
    result = evaluate(model, data, batch_size=args.batch_size, progress=args.progress)
    total = time.perf_counter() - began
    seconds = _Seconds(decoded - began, loaded - decoded, result.inference_seconds, total, torch.get_num_threads())
    kind = _model_kind(model)
    _print_report(args, data, result, kind, seconds)
    if args.json is not None:
        record = _json_record(args, data, result, kind, device, seconds)
        save_atomically(args.json, (json.dumps(record, indent=2) + "\n").encode())  # whole, or the old one kept
    if args.plot is not None:
        plots.save_confusion_matrix(args.plot, result.confusion, result.classes)
    return 0


def _check_early(args: argparse.Namespace) -> None:
    """Refuse what would fail only after the data are decoded: a bad batch size, a missing extra, a report file
    that cannot be written."""
    if args.batch_size < 1:
        raise UsageError(f"expected a positive batch size, got {args.batch_size}")
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.plot is not None:
        check_plot_file(args.plot)
    from tiniest.transforms import require_images_extra

    require_images_extra(*(("tqdm",) if args.progress else ()))  # one line naming the extra, not a traceback


def _load_data(args: argparse.Namespace) -> LabeledImages:
    from tiniest.data import load_split

    try:
        return load_split(args.data, args.split, progress=args.progress, skip_unreadable=args.skip_unreadable)
    except PreprocessError as error:
        raise PreprocessError(f"{error}; --skip-unreadable leaves such files out") from None


def _load_model(args: argparse.Namespace, data: LabeledImages, device: torch.device) -> nn.Module:
    """The weights' model, checked against the data, optimized unless ``--eager`` (on the CPU only)."""
    from tiniest.evaluation import align_labels
    from tiniest.hub import tiniest

    model = tiniest(weights=chosen_weights(args), progress=args.progress, device=device)
    align_labels(data, model.labels)  # refuse a dataset foreign to the weights before building the fast model
    if args.eager:
        return model
    if device.type != "cpu":
        print(f"tiniest evaluate: the fast path (tiniest.optimize) is CPU-only; on {device} the plain model runs",
              file=sys.stderr)
        return model
    from tiniest.fast import optimize, worth_building

    return optimize(model, mode="compiled" if worth_building(len(data)) else "cached")  # a few images: no build


def _absent_classes(result: Evaluation) -> list[str]:
    return [name for name in result.classes if name not in result.report]


def _images_per_second(n: int, seconds: _Seconds) -> float:
    """Images per second of decoding and inference (model loading left out: it is paid once)."""
    return n / (seconds.data + seconds.inference)


def _print_report(
    args: argparse.Namespace, data: LabeledImages, result: Evaluation, kind: str, seconds: _Seconds
) -> None:
    from tiniest.metrics import format_confusion_matrix

    n = len(data)
    print(f"{printable(args.data)} ({printable(args.split)}): {n} images, {_MODEL_KINDS[kind]}")
    if data.skipped:
        print(f"skipped {len(data.skipped)} unreadable image file{'' if len(data.skipped) == 1 else 's'}:")
        for _, reason in data.skipped:
            print(f"  {printable(reason)}")
    print(f"accuracy {result.accuracy:.4f} ({result.correct}/{n})\n")
    absent = _absent_classes(result)
    if absent:
        print(f"not in the report (in neither the labels nor the predictions): {printable(', '.join(absent))}\n")
    print(result.text())
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(format_confusion_matrix(result.confusion, result.classes))
    print(  # one rate, the model's: decoding and loading are said in seconds
        f"inference {n / seconds.inference:.0f} images/s on {seconds.threads} threads ({seconds.inference:.2f} s); "
        f"decoding the data {seconds.data:.2f} s, loading the model {seconds.model:.2f} s, {seconds.total:.2f} s in all"
    )


def _json_record(
    args: argparse.Namespace,
    data: LabeledImages,
    result: Evaluation,
    kind: str,
    device: torch.device,
    seconds: _Seconds,
) -> dict[str, Any]:
    n = len(data)
    return {
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
        "absent_classes": _absent_classes(result),
        "seconds": {"data": seconds.data, "model": seconds.model, "inference": seconds.inference},
        "images_per_second": _images_per_second(n, seconds),
        "inference_images_per_second": n / seconds.inference,
        "threads": seconds.threads,
    }
