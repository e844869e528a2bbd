"""``tiniest train``: the published recipe on a dataset root, resumable, one or many processes.

Run it under ``torchrun --nproc-per-node N -m tiniest train ...`` to use N GPUs (or CPU
processes with gloo): the batch is split between them, and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from tiniest.commands._common import add_device_argument
from tiniest.env import env_int
from tiniest.extras import require_extra
from tiniest.names import printable

HELP = "train Tiniest with the published recipe (resumable; multi-process through torchrun)"
# Recipe fields that no flag sets: the rest each have the flag of their name (--batch-size for batch_size).
FIXED_RECIPE_FIELDS = frozenset({"shift"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data",
                        help="dataset root holding train/ and test/ (image folders, cifar-10-batches-py, hf://...); "
                        "required to start a run, read from the checkpoint with --resume")
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="run folder: checkpoint.pt, log.jsonl, model.pt (averaged weights) and curves.png")
    recipe = parser.add_argument_group("recipe (defaults: the published one; with --resume: the checkpoint's)")
    recipe.add_argument("--epochs", type=int, help="epochs (300)")
    recipe.add_argument("--batch-size", type=int, help="global batch, split between processes (256)")
    recipe.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (0.02)")
    recipe.add_argument("--warmup", type=float, help="fraction of the steps spent warming up (0.01)")
    recipe.add_argument("--final-div-factor", type=float, help="OneCycleLR final_div_factor (0.4)")
    recipe.add_argument("--ema-decay", type=float, help="decay of the weights' moving average (0.999)")
    recipe.add_argument("--mixup", type=float, help="cap of the mix-up strength, which grows with the epoch (0.5)")
    recipe.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="skip the flip/crop/rotation/sharpness/colour augmentation")
    recipe.add_argument("--seed", type=int, help="seed of initialisation, shuffling, augmentation (0)")
    recipe.add_argument("--limit-train", type=int, metavar="N", help="train on a seeded random N-image subset")
    recipe.add_argument("--val-fraction", type=float, metavar="F",
                        help="hold out a seeded fraction F of each class of train/ and score on it instead of test/ "
                        "(for a dataset without a test split)")
    parser.add_argument("--init", metavar="DEFAULT|NAME|PATH",
                        help="start from these weights (fine-tuning): DEFAULT or another published name, a "
                        ".safetensors/.pt file or a finished run's folder; other classes get a new fc head "
                        "(default: random initialisation)")
    parser.add_argument("--limit-test", type=int, metavar="N",
                        help="score each epoch on a fixed random N-image subset of the held-out images (default: all)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out image files that cannot be decoded (counted once) instead of stopping")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its checkpoint (every flag given must agree with it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --output that holds a run, replacing its files (default: refuse)")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation")
    add_device_argument(parser, "cuda if available; torchrun: the rank's GPU")
    parser.add_argument("--plot", action="store_true", help="write curves.png (loss, lr, accuracy, speed) at the end")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


class _Console(logging.Handler):
    """The training loop's log as the command's output: news on stdout, warnings as ``tiniest train: warning:``."""

    def emit(self, record: logging.LogRecord) -> None:
        text = printable(record.getMessage())
        if record.levelno >= logging.WARNING:
            print(f"tiniest train: warning: {text}", file=sys.stderr, flush=True)
        else:
            print(text, flush=True)


@contextmanager
def _printed_log(main: bool) -> Iterator[None]:
    """Print the training log while the command runs (in the first process only: one report per run)."""
    log = logging.getLogger("tiniest.training")
    handler, level = _Console(), log.level
    if main:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields given on the command line (unset ones keep the recipe's, or the checkpoint's, value)."""
    from tiniest.training import Recipe

    names = [field.name for field in fields(Recipe) if field.name not in FIXED_RECIPE_FIELDS]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run(args: argparse.Namespace) -> int:
    # before any work: a minimal install ends in one line naming the extra
    require_extra("train", "PIL", "kornia", "tqdm", *(("matplotlib",) if args.plot else ()), purpose="training")
    from tiniest.training.loop import RunOptions, last_saved, train  # torch.distributed, kornia: only when training

    options = RunOptions(
        data=args.data,
        output=args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_after=args.stop_after,
        limit_test=args.limit_test,
        device=args.device,
        progress=args.progress,
        plot=args.plot,
        init=args.init,
        skip_unreadable=args.skip_unreadable,
    )
    main_process = env_int("RANK", 0, low=0) == 0  # under torchrun every process runs this: one report in all
    try:
        with _printed_log(main_process):
            train(options, recipe_overrides(args))
    except KeyboardInterrupt:
        if main_process:
            print(f"\ninterrupted. {last_saved(args.output)}", file=sys.stderr, flush=True)
        return 130  # the shell's code for a run ended by Ctrl-C
    return 0
