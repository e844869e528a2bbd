"""``tiniest train``: the published recipe on a dataset root, resumable, one or many processes.

Run it under ``torchrun --nproc-per-node N -m tiniest train ...`` to use N GPUs (or CPU
processes with gloo): the batch is split between them, and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tiniest.commands._common import add_device_argument
from tiniest.errors import UsageError
from tiniest.extras import require_extra

HELP = "train Tiniest with the published recipe (resumable; multi-process through torchrun)"

# Flags that set the recipe (tiniest.training.Recipe): unset ones keep the recipe's (or checkpoint's) value.
_RECIPE_FLAGS = ("epochs", "batch_size", "lr", "warmup", "final_div_factor", "ema_decay", "mixup", "seed",
                 "limit_train", "augment")


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
    parser.add_argument("--limit-test", type=int, metavar="N",
                        help="score each epoch on a fixed random N-image subset of test/ (default: all of it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its checkpoint (every flag given must agree with it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --output that holds a run, replacing its files (default: refuse)")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation")
    add_device_argument(parser, "cuda if available; torchrun: the rank's GPU")
    parser.add_argument("--plot", action="store_true", help="write curves.png (loss, lr, accuracy, speed) at the end")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    # before any work: a minimal install ends in one line naming the extra
    require_extra("train", "PIL", "kornia", "tqdm", *(("matplotlib",) if args.plot else ()), purpose="training")
    from tiniest.training.loop import RunOptions, last_saved, train  # torch.distributed, kornia: only when training

    if args.limit_test is not None and args.limit_test <= 0:
        raise UsageError(f"--limit-test: expected a positive number of images, got {args.limit_test}")
    overrides: dict[str, Any] = {name: getattr(args, name) for name in _RECIPE_FLAGS if getattr(args, name) is not None}
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
    )
    try:
        train(options, overrides)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process is interrupted: one line in all
            print(f"\ninterrupted. {last_saved(args.output)}", file=sys.stderr, flush=True)
        return 130  # the shell's code for a run ended by Ctrl-C
    return 0
