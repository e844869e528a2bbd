"""``tiniest train``: the published recipe on a dataset root, resumable, one or many processes.

``tiniest train --nproc-per-node N ...`` uses N GPUs (or N CPU processes with gloo) of this
machine: it starts the N workers itself, through torch's launcher (what ``torchrun`` runs), so that
Ctrl-C or a failed worker ends the run with one line (the command that continues it), not the
launcher's traceback. The batch is split between the processes, and only rank 0 writes files and
reports; the other ranks' output is kept back, and a failure of theirs is told in that one line.
``torchrun --nproc-per-node N -m tiniest train ...`` (for several machines, say) still works.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiniest.commands import INTERRUPTED
from tiniest.commands._common import add_device_argument
from tiniest.env import env_text
from tiniest.errors import UsageError
from tiniest.extras import require_extra
from tiniest.names import printable

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError



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
    recipe.add_argument("--limit-train", type=int, metavar="N",
                        help="train on a seeded random N-image subset, the only training images decoded; the held-out "
                        "images are then limited to the same fraction of theirs (unless --limit-test)")
    recipe.add_argument("--val-fraction", type=float, metavar="F",
                        help="hold out a seeded fraction F of each class of train/ and score on it instead of test/ "
                        "(for a dataset without a test split)")
    parser.add_argument("--init", metavar="DEFAULT|NAME|PATH",
                        help="start from these weights (fine-tuning): DEFAULT or another published name, a "
                        ".safetensors/.pt file or a finished run's folder; other classes get a new fc head "
                        "(default: random initialisation)")
    parser.add_argument("--limit-test", type=int, metavar="N",
                        help="score each epoch on a fixed random N-image subset of the held-out images, the only ones "
                        "decoded (default: all, or with --limit-train the fraction it takes of the training images)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out image files that cannot be decoded (counted once) instead of stopping")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its checkpoint (every flag given must agree with it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --output that holds a run, replacing its files (default: refuse)")
    parser.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation")
    add_device_argument(parser, "cuda if available; several processes: the rank's GPU")
    parser.add_argument("--nproc-per-node", type=int, metavar="N",
                        help="start N processes on this machine, one per GPU (or CPU processes with gloo), as "
                        "torchrun --nproc-per-node N does; Ctrl-C ends them all with one line (default: 1)")
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

    names = [field.name for field in fields(Recipe)]  # each has the flag of its name (--batch-size)
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run(args: argparse.Namespace) -> int:
    # before any work: a minimal install ends in one line naming the extra
    require_extra("train", "PIL", "kornia", "tqdm", *(("matplotlib",) if args.plot else ()), purpose="training")
    from tiniest.training.loop import RunOptions, last_saved, launched_by_tiniest, train, world  # torch: only now

    options = RunOptions(  # refuses a bad flag before any process starts
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
    processes = args.nproc_per_node
    if processes is not None:
        if processes < 1:
            raise UsageError(f"--nproc-per-node: expected a positive number of processes, got {processes}")
        if env_text("LOCAL_RANK") or env_text("TORCHELASTIC_RUN_ID"):
            raise UsageError("--nproc-per-node starts the processes itself, and this one is already a worker of "
                             "torchrun: give the count to one of the two")
        if processes > 1:
            return _launch(args, processes)
    main_process = world()[0] == 0  # under torchrun every process runs this: one report in all
    try:
        with _printed_log(main_process):
            train(options, recipe_overrides(args))
    except KeyboardInterrupt:
        if main_process and not launched_by_tiniest():  # tiniest's launcher says it once for all
            print(f"\ninterrupted. {last_saved(args.output)}", file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0


def _worker_arguments(args: argparse.Namespace) -> list[str]:
    """The command line of each worker: the flags this command was given, but ``--nproc-per-node``."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    words = []
    for action in parser._actions:  # argparse lists its actions under no public name
        value = getattr(args, action.dest)
        if action.dest != "nproc_per_node" and value != action.default:
            flag = action.option_strings[0]
            words.append(flag if action.nargs == 0 else f"{flag}={value}")  # --data=-x stays one value
    return words


@contextmanager
def _launcher_quiet() -> Iterator[None]:
    """Silence torch's launcher and agent logs (banners, 'closing signal' notes): this command reports for them."""
    loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.distributed.launcher")]
    mute = logging.NullHandler()
    for log in loggers:
        log.addHandler(mute)
        log.propagate = False
    try:
        yield
    finally:
        for log in loggers:
            log.removeHandler(mute)
            log.propagate = True


def _launch(args: argparse.Namespace, processes: int) -> int:
    """Run ``python -m tiniest train`` in ``processes`` workers through torch's launcher; one line if it ends early."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from tiniest.training.loop import WORKER_ROLE, last_saved

    omp = {} if env_text("OMP_NUM_THREADS") else {"OMP_NUM_THREADS": "1"}  # as torchrun: no core oversubscribed
    with tempfile.TemporaryDirectory(prefix="tiniest-train-") as logs, _launcher_quiet():
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=processes,
            run_id=uuid.uuid4().hex,
            role=WORKER_ROLE,  # the workers' resume hints name this command, not torchrun
            rdzv_backend="c10d",  # torchrun --standalone's rendezvous, on a free port of the loopback
            rdzv_endpoint="127.0.0.1:0",
            max_restarts=0,
            logs_specs=DefaultLogsSpecs(log_dir=logs, redirects={rank: Std.ALL for rank in range(1, processes)}),
        )
        os.environ.update(omp)
        try:
            elastic_launch(config, sys.executable)("-u", "-m", "tiniest", "train", *_worker_arguments(args))
        except (SignalException, KeyboardInterrupt) as stop:
            number = stop.sigval if isinstance(stop, SignalException) else signal.SIGINT
            said = "interrupted" if number == signal.SIGINT else f"stopped by {signal.Signals(number).name}"
            print(f"\n{said}. {last_saved(args.output, processes)}", file=sys.stderr, flush=True)
            return 128 + number  # 130 for Ctrl-C, as the shell says it
        except ChildFailedError as error:
            print(f"tiniest train: error: {_failure(error, processes, Path(logs))}", file=sys.stderr, flush=True)
            return 1
        finally:
            for name in omp:
                os.environ.pop(name, None)
    return 0


def _failure(error: ChildFailedError, processes: int, logs: Path) -> str:
    """The worker that failed first (torch lists them as it saw them, then stops the rest): its rank, how it ended
    and, for another rank than 0 (whose output is on the console already) that exited, the last line it wrote.

    Its output is in ``logs``, as torch's launcher lays it out: ``<run>/attempt_<n>/<rank>/stderr.log``. (The
    failure's ``error_file`` says where only when the worker wrote torch's error file, which tiniest's don't.)
    """
    rank, failure = next(iter(error.failures.items()))
    ended = f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    said = f"process {rank} of {processes} failed ({ended})"
    if rank == 0:
        return f"{said}; its output is above"
    if failure.exitcode < 0:  # a signal ended it: whatever it wrote last is not why
        return said
    found = sorted(logs.glob(f"*/attempt_*/{rank}/stderr.log"))
    try:
        lines = found[-1].read_text(errors="replace").splitlines() if found else []
    except OSError:
        lines = []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"{said}: {printable(last.removeprefix('tiniest train: error: '))}" if last else said
