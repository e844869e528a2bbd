"""``tiniest predict``: class names and probabilities for image files (``tiniest.inference.predict``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tiniest.commands._common import add_device_argument, add_model_arguments, check_plot_file, chosen_weights
from tiniest.names import printable

if TYPE_CHECKING:
    from tiniest.fast import OptimizeMode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ... of any size)")
    # what the model sees, said here: a pip install has no docs/ folder to point to
    parser.epilog = (
        "Each image is turned upright by its EXIF orientation, made RGB (transparency onto white) and resized "
        "straight to 32x32, without keeping its aspect ratio: CIFAR-10 pictures are square crops centred on the "
        "object, so crop yours to the subject first."
    )
    parser.add_argument(
        "--top-k", type=int, default=1, metavar="K", help="show the K most probable classes (default: 1)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_model_arguments(parser)
    add_device_argument(parser, "cpu; the fast path runs on the CPU only")
    parser.add_argument(
        "--plot", metavar="FILE", help="also draw the images, as the model sees them, with their top classes to FILE"
    )


def run(args: argparse.Namespace) -> int:
    from tiniest import plots  # (torch: imported when the command runs, not for --help)
    from tiniest.fast import worth_building
    from tiniest.inference import predict
    from tiniest.transforms import require_images_extra

    if args.plot is not None:  # before any work
        check_plot_file(Path(args.plot))
    require_images_extra()  # one line naming the extra, not a traceback
    # the command owns its process: a run worth it builds the compiled model (the build says so on stderr)
    fast: OptimizeMode = "eager" if args.eager else "compiled" if worth_building(len(args.images)) else "cached"
    results = predict(
        list(args.images), top_k=args.top_k, weights=chosen_weights(args), fast=fast, errors="report",
        device=args.device,
    )
    failed = [result.error for result in results if result.error is not None]
    for error in failed:  # every readable file still gets its answer on stdout
        print(f"tiniest predict: error: {printable(error)}", file=sys.stderr)
    if args.plot is not None:
        plots.save_predictions(args.plot, args.images, results)
    if args.json:
        records = [
            {"image": image, "error": result.error}
            if result.error is not None
            else {"image": image, "predictions": [{"label": name, "probability": p} for name, p in result.top]}
            for image, result in zip(args.images, results, strict=True)
        ]
        print(json.dumps(records, indent=2))
        return 1 if failed else 0
    width = max((len(printable(name)) for result in results for name, _ in result.top), default=0)
    for image, result in zip(args.images, results, strict=True):
        if result.error is not None:
            continue
        if args.top_k == 1:
            print(f"{printable(image)}: {printable(result.label)} {result.probability:.3f}")
        else:
            print(f"{printable(image)}:")
            for name, p in result.top:
                print(f"  {printable(name):<{width}} {p:.3f}")
    return 1 if failed else 0

