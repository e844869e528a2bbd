"""The training loop: one process, or one of many (DistributedDataParallel) started by ``torchrun`` or by
``tiniest train --nproc-per-node``.

Reproducibility and exact resumption rest on one rule: all randomness of epoch ``e`` on rank
``r`` comes from generators seeded by ``(seed, e, r)`` at the start of the epoch (the shuffle:
``DistributedSampler`` seeded with ``seed + e``; augmentation and mix-up: torch's generator,
reseeded inside ``torch.random.fork_rng``). A checkpoint written at the end of an epoch
(model, averaged model, optimizer, schedule, epoch, history) therefore holds everything the
next epoch needs, and resuming from it gives the weights an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from tiniest.devices import resolve_device
from tiniest.env import env_text
from tiniest.env_numbers import env_int, env_number
from tiniest.errors import DatasetError, PeerLostError, TiniestWarning, UsageError, first_line, warn
from tiniest.fast.threads import on_free_cores, one_thread_each
from tiniest.model import Tiniest
from tiniest.storage import HF_PREFIX, check_output_folder, save_atomically
from tiniest.training.augment import batch_augmentation, mix_up, mixup_loss
from tiniest.training.recipe import Recipe, build_ema, build_optimizer, build_scheduler
from tiniest.training.rundata import RunData, data_key, load_run_data
from tiniest.training.runlog import LOG_NAME, PLOT_NAME, console_line, plot_curves, write_log
from tiniest.training.start import load_start
from tiniest.transforms import Preprocess, default_preprocess
from tiniest.weights import TiniestWeights
from tiniest.weights.metadata import overlap_caveat
from tiniest.weights.run_files import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    MODEL_NAME,
    averaged_state_dict,
    load_checkpoint,
    state_dict_bytes,
)

__all__ = [
    "WORKER_ROLE",
    "ProcessCountWarning",
    "RunOptions",
    "dist_timeout",
    "last_saved",
    "launched_by_tiniest",
    "state_sha256",
    "train",
    "world",
]

RUN_FILES = (CHECKPOINT_NAME, MODEL_NAME, LOG_NAME, PLOT_NAME)
EVAL_BATCH = 500
# Images per part of a step on the CPU (one process): the parts run side by side, one thread each (see _backward).
PART = 32
WORKER_ROLE = "tiniest-train"  # the role tiniest train --nproc-per-node gives its workers (torch's ROLE_NAME)
DIST_TIMEOUT = 600.0  # seconds a process waits for its peers (TINIEST_DIST_TIMEOUT), as NCCL's default
_PEER_LOST = re.compile(r"Timed out|timeout|Connection (closed|reset)", re.IGNORECASE)
logger = logging.getLogger(__name__)


class ProcessCountWarning(TiniestWarning):
    """A run resumed with another number of processes than it ran with: it continues, but its weights will
    differ from an uninterrupted run's (each process draws its own shuffle share and augmentation)."""


@dataclass(frozen=True)
class RunOptions:
    """How to run: where, on which data, from which weights (the recipe, ``Recipe``, is the rest)."""

    data: str | None  # None: the checkpoint's (with resume only)
    output: Path
    resume: bool = False
    overwrite: bool = False  # start afresh in a folder holding a run, replacing its files
    stop_after: int | None = None  # epochs to run in this invocation, then stop (resume later)
    limit_test: int | None = None  # score on a fixed random subset of the held-out images (resume: the checkpoint's)
    device: str | torch.device | None = None  # None: this process's GPU if there is one, else the CPU
    progress: bool = True
    plot: bool = False
    init: str | os.PathLike[str] | TiniestWeights | None = None  # starting weights (None: random, seeded)
    skip_unreadable: bool = False  # leave out image files that cannot be decoded (listed once)

    def __post_init__(self) -> None:  # refused here, before the run folder is made
        if self.data is None and not self.resume:
            raise UsageError("data (--data) is required to start a run; resume (--resume) reads it from the checkpoint")
        if self.resume and self.overwrite:
            raise UsageError("resume (--resume) continues the run in output and overwrite (--overwrite) replaces it: "
                             "choose one")
        if self.resume and self.init is not None:
            raise UsageError("init (--init) chooses the weights a new run starts from; a resumed run (--resume) "
                             "continues its checkpoint")
        if self.stop_after is not None and self.stop_after <= 0:
            raise UsageError(f"stop_after: expected a positive number of epochs, got {self.stop_after}")
        if self.limit_test is not None and self.limit_test <= 0:
            raise UsageError(f"limit_test: expected a positive number of images, got {self.limit_test}")
        if self.device is not None:
            resolve_device(self.device)  # a device this machine lacks: one line naming what it has


@dataclass(frozen=True)
class _Process:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _training_device(device: str | torch.device | None) -> torch.device:
    """Where this process trains: ``device``, else a GPU if any; a bare ``cuda`` is the GPU of the ``torchrun`` rank."""
    chosen = resolve_device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if chosen.type == "cuda" and chosen.index is None:
        chosen = resolve_device(torch.device("cuda", env_int("LOCAL_RANK", 0, low=0)))
    return chosen


def world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as ``torchrun`` sets them; ``(0, 1)`` for a process started alone."""
    world_size = env_int("WORLD_SIZE", 1, low=1)
    return env_int("RANK", 0, low=0, high=world_size - 1), world_size


@contextmanager
def _process_group(device: torch.device) -> Iterator[_Process]:
    """This process's place in a ``torchrun`` job (or a job of one) on ``device``, with the process group set up."""
    rank, world_size = world()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        timeout = timedelta(seconds=dist_timeout())
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield _Process(rank, world_size, device)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def dist_timeout() -> float:
    """How long a process of a multi-process run waits for a peer: ``TINIEST_DIST_TIMEOUT`` seconds (600)."""
    return env_number("TINIEST_DIST_TIMEOUT", DIST_TIMEOUT, low=0.0, inclusive_low=False)


def _prepare_output(path: Path) -> None:
    """Create the run folder and write a probe file in it: an unwritable place fails now, not after an epoch."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(f"output {path}: cannot write there ({error.strerror or error})") from None


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    digest = hashlib.sha256(f"tiniest/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def state_sha256(*modules: nn.Module) -> str:
    """A hash of the parameters and buffers: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _refuse_disagreement(conflicts: list[str]) -> None:
    if conflicts:
        raise UsageError("resume continues the checkpoint's run; these disagree with it: " + "; ".join(conflicts))


def _resolve_recipe(overrides: dict[str, Any], saved: dict[str, Any] | None, options: RunOptions) -> Recipe:
    """The recipe of a new run, or of the resumed one (where every setting given must agree)."""
    if saved is None:
        return Recipe(**overrides)
    recipe = Recipe.from_dict(saved["recipe"])
    conflicts = [f"{k}: checkpoint {getattr(recipe, k)!r}, asked {v!r}"
                 for k, v in overrides.items() if getattr(recipe, k) != v]
    if options.limit_test is not None and options.limit_test != saved.get("limit_test"):
        conflicts.append(f"limit_test: checkpoint {saved.get('limit_test')!r}, asked {options.limit_test!r}")
    _refuse_disagreement(conflicts)
    return recipe


def _data_location(saved: dict[str, Any] | None, options: RunOptions, checkpoint: Path) -> str:
    """Where the data is: ``options.data``, else the checkpoint's (which must still be there)."""
    if options.data is not None:
        return options.data
    assert saved is not None  # RunOptions refuses a new run without data
    recorded = str(saved["data"])
    if not recorded.startswith(HF_PREFIX) and not Path(recorded).is_dir():
        raise DatasetError(
            f"the data folder {recorded!r}, recorded in {checkpoint}, is gone: if the data moved, give its new "
            "place as data (the files are checked to be the same)"
        )
    return recorded


def _check_resumed_data(saved: dict[str, Any], data: RunData) -> None:
    """A resumed run reads the data it started with: the same classes and images, wherever the files now are."""
    found: dict[str, Any] = {"classes": list(data.train.classes), "train_images": len(data.train)}
    conflicts = [f"the data's {key}: checkpoint {saved[key]!r}, now {value!r}"
                 for key, value in found.items() if key in saved and saved[key] != value]
    recorded = saved.get("data_content")
    moved = data_key(str(saved["data"])) != data.location
    if not conflicts and recorded is not None:
        changed = [split for split, key in data.content.items() if recorded.get(split) not in (None, key)]
        if changed:
            where = f"{saved['data']!r} and {data.location!r} hold" if moved else f"{data.location!r} holds"
            conflicts.append(f"data: {where} different files in {', '.join(changed)} (names or sizes)")
    elif moved and recorded is None:  # an older checkpoint, without the data's content: only its path can tell
        conflicts.append(f"data: checkpoint {saved['data']!r}, asked {data.location!r}")
    _refuse_disagreement(conflicts)
    if moved:
        logger.info("the data moved from %s to %s; its files are the same", saved["data"], data.location)


def _check_process_count(saved: dict[str, Any], proc: _Process) -> None:
    before = int(saved["history"][-1].get("world_size", 1)) if saved.get("history") else proc.world_size
    if before != proc.world_size:
        warn(
            f"resuming a run of {before} process(es) with {proc.world_size}: it continues, but its weights will "
            f"differ from an uninterrupted run's (each process draws its own share and augmentation); resume with "
            f"{before} for the exact result",
            ProcessCountWarning)


@dataclass(frozen=True)
class _Batches:
    """How each epoch is cut: this process's shuffled share of the images, in steps of its part of the batch."""

    sampler: DistributedSampler[int]
    per_process: int  # images per step in this process: the global batch split evenly
    steps: int


def _batches(recipe: Recipe, images: int, proc: _Process) -> _Batches:
    per_process = recipe.batch_size // proc.world_size
    indices: Any = range(images)  # the sampler only needs len()
    sampler: DistributedSampler[int] = DistributedSampler(
        indices, num_replicas=proc.world_size, rank=proc.rank, shuffle=True, seed=recipe.seed, drop_last=True
    )
    steps = len(sampler) // per_process
    if steps == 0:
        raise UsageError(f"batch_size {recipe.batch_size} is larger than the {images} training images")
    return _Batches(sampler, per_process, steps)


@dataclass
class _State:
    model: Tiniest
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    epoch: int
    history: list[dict[str, Any]]
    init: dict[str, Any] | None  # the starting weights' record (None: random initialisation)


def _checkpoint_bytes(state: _State, recipe: Recipe, data: RunData, limit_test: int | None) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "recipe": recipe.to_dict(),
            "data": data.location,
            "data_content": dict(data.content),
            "classes": list(data.train.classes),
            "train_images": len(data.train),
            "split_sizes": dict(data.sizes),
            "held_out": dict(data.held_out_record),
            "limit_test": limit_test,
            "init": state.init,
            "epoch": state.epoch,
            "model": state.model.state_dict(),
            "ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "history": state.history,
        },
        buffer,
    )
    return buffer.getvalue()


def _evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, contract: Preprocess, proc: _Process
) -> int:
    """Correct predictions over the whole held-out subset (each process scores its share)."""
    model.eval()
    mine = torch.arange(proc.rank, len(labels), proc.world_size)
    correct = torch.zeros((), dtype=torch.int64, device=proc.device)

    def score(chunk: torch.Tensor) -> torch.Tensor:
        inputs = contract.normalize(images[chunk].to(proc.device).float().div_(255))
        right: torch.Tensor = model(inputs).argmax(1) == labels[chunk].to(proc.device)
        return right.sum()

    with torch.no_grad(), on_free_cores():
        chunks = list(mine.split(EVAL_BATCH))
        # On the CPU, chunks side by side on one thread each, as the steps' parts (_backward).
        for count in one_thread_each(score, chunks) if proc.device.type == "cpu" else map(score, chunks):
            correct += count
    if proc.world_size > 1:
        dist.all_reduce(correct)
    return int(correct)


def _replica_hashes(state: _State, proc: _Process) -> list[str]:
    mine = state_sha256(state.model, state.ema)
    if proc.world_size == 1:
        return [mine]
    gathered: list[Any] = [None] * proc.world_size
    dist.all_gather_object(gathered, mine)
    return [str(value) for value in gathered]


def _step(
    trained: nn.Module,
    state: _State,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    mixup: float,
    contract: Preprocess,
    *,
    by_parts: bool,
) -> torch.Tensor:
    """One optimisation step on an augmented batch: mix-up, loss, update, schedule, average."""
    inputs, targets = mix_up(inputs, labels, mixup)
    state.optimizer.zero_grad(set_to_none=True)
    if by_parts:
        loss = _backward(trained, contract.normalize(inputs), targets)
    else:
        loss = mixup_loss(trained(contract.normalize(inputs)), targets)
        loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update_parameters(state.model)
    return loss.detach()


def _backward(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch's loss, with its gradients in the parameters' ``.grad``, from parts of ``PART`` images.

    The parts run side by side, each on one thread (``tiniest.fast.threads.one_thread_each``):
    on a busy machine no thread waits at every layer for one that is descheduled (2 threads used
    several times the CPU of one), and the sums, taken in the parts' order, are the same bits
    whatever the thread count or the load, so that a resumed run still gives an uninterrupted one's weights.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def part(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        x, t = batch
        loss = mixup_loss(model(x), t) * (len(x) / len(inputs))
        return loss.detach(), torch.autograd.grad(loss, params)

    results = one_thread_each(part, list(zip(inputs.split(PART), targets.split(PART), strict=True)))
    for index, param in enumerate(params):
        param.grad = functools.reduce(torch.add, [grads[index] for _, grads in results])
    return functools.reduce(torch.add, [loss for loss, _ in results])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(options: RunOptions, overrides: dict[str, Any] | None = None) -> Path:
    """Train (or resume) the run in ``options.output``; return the path of its checkpoint.

    ``overrides``: ``Recipe`` fields to set (with ``resume``, they must agree with the checkpoint's).
    Every problem with the arguments is found before the first step: an ``output`` that is a file or
    cannot be written, a run already there (continue it with ``resume``, or replace it with
    ``overwrite``), a checkpoint that disagrees with the settings or the data. A run that fails
    before its first epoch leaves no folder it created.
    """
    overrides = dict(overrides or {})
    check_output_folder(options.output, "output")
    checkpoint_path = options.output / CHECKPOINT_NAME
    if options.resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"resume (--resume): no checkpoint at {checkpoint_path} (start without it)")
    existing = [name for name in RUN_FILES if (options.output / name).exists()]
    if not options.resume and existing and not options.overwrite:
        raise FileExistsError(
            f"{options.output} already holds a run ({', '.join(existing)}): continue it with resume (--resume), "
            "start it afresh with overwrite (--overwrite; its files are replaced), or choose another output"
        )
    dist_timeout()  # a bad TINIEST_DIST_TIMEOUT is refused now
    device = _training_device(options.device)  # as is a GPU this process cannot have
    created = not options.output.exists()
    _prepare_output(options.output)
    try:
        with _process_group(device) as proc:
            try:
                return _train(options, overrides, proc)
            except RuntimeError as error:  # gloo reports a silent peer as a plain RuntimeError
                if proc.world_size > 1 and (isinstance(error, dist.DistError) or _PEER_LOST.search(str(error))):
                    raise _peer_error(error, proc, options) from None
                raise
    except BaseException:
        if created:
            _remove_if_empty(options.output)
        raise


def _remove_if_empty(folder: Path) -> None:
    """Remove a run folder this call made, if the run failed before writing anything in it."""
    with contextlib.suppress(OSError):  # it holds a checkpoint (kept), or another process's file
        folder.rmdir()  # only an empty folder goes


def _peer_error(error: Exception, proc: _Process, options: RunOptions) -> PeerLostError:
    """A multi-process failure, said plainly: which process, the timeout, and how to continue."""
    return PeerLostError(
        f"process {proc.rank} of {proc.world_size}: a peer process stopped answering within "
        f"{dist_timeout():g} s (the process group's timeout, TINIEST_DIST_TIMEOUT) or failed ({first_line(error)}). "
        f"{last_saved(options.output)}"
    )


def last_saved(output: Path, processes: int | None = None) -> str:
    """Where the run in ``output`` stands, and the command that continues it (see ``resume_command``)."""
    path = output / CHECKPOINT_NAME
    try:
        checkpoint = load_checkpoint(path)
    except (OSError, ValueError):
        return "No epoch was saved: start the run again."
    epoch, epochs = int(checkpoint["epoch"]), int(checkpoint["recipe"]["epochs"])
    return f"Last saved: epoch {epoch} of {epochs} in {path}; continue with: {resume_command(output, processes)}"


def launched_by_tiniest() -> bool:
    """Whether this process is a worker that ``tiniest train --nproc-per-node`` started (torch sets ``ROLE_NAME``)."""
    return env_text("ROLE_NAME") == WORKER_ROLE


def resume_command(output: Path, processes: int | None = None) -> str:
    """The command that continues the run in ``output`` the way this one was started, with as many processes.

    ``processes``: the count of ``tiniest train --nproc-per-node``, given by the launcher itself;
    by default this process's own run (alone, a worker of that launcher, or one of ``torchrun``).
    """
    arguments = f"train --output {shlex.quote(str(output))} --resume"  # pasted into a shell: quoted
    if processes is None:
        processes = world()[1]
        if processes > 1 and not launched_by_tiniest():
            return f"torchrun --nproc-per-node {processes} -m tiniest {arguments}"
    return f"tiniest {arguments}" + (f" --nproc-per-node {processes}" if processes > 1 else "")


def _match_grad_strides(model: nn.Module) -> None:
    """Give each gradient its parameter's strides, as DDP's buckets expect.

    Convolution backward returns a depthwise kernel's gradient ``(C, 1, k, k)`` with another
    stride on its size-1 axis; autograd accepts that, DDP warns once per process ("Grad strides
    do not match bucket view strides") and copies it anyway. The copy is made here, contiguous.
    """
    def restride(strides: tuple[int, ...]) -> Any:
        return lambda grad: grad if grad.stride() == strides else grad.clone(memory_format=torch.contiguous_format)

    for param in model.parameters():
        if param.dim() > 1 and 1 in param.shape:
            param.register_hook(restride(param.stride()))


def _already_finished(saved: dict[str, Any], recipe: Recipe, options: RunOptions, proc: _Process) -> bool:
    """A resumed run that reached its last epoch: its averaged weights written if missing, nothing trained."""
    if int(saved["epoch"]) < recipe.epochs:
        return False
    if proc.main:
        if not (options.output / MODEL_NAME).is_file():
            save_atomically(options.output / MODEL_NAME, state_dict_bytes(averaged_state_dict(saved)))
        logger.info("%s: the run already finished its %d epochs (averaged weights in %s); nothing to do",
                    options.output, recipe.epochs, options.output / MODEL_NAME)
    return True


def _load_data(
    options: RunOptions, recipe: Recipe, saved: dict[str, Any] | None, proc: _Process, checkpoint: Path
) -> tuple[RunData, int | None]:
    """The run's images (checked against the checkpoint's when resuming) and its ``limit_test``."""
    location = _data_location(saved, options, checkpoint)
    limit_test = options.limit_test if options.limit_test is not None or saved is None else saved.get("limit_test")
    data = load_run_data(location, limit_train=recipe.limit_train, seed=recipe.seed, val_fraction=recipe.val_fraction,
                         limit_test=limit_test, progress=options.progress and proc.main,
                         skip_unreadable=options.skip_unreadable)
    if saved is not None:
        _check_resumed_data(saved, data)
    if proc.main and (data.train.skipped or data.held_out.skipped):
        skipped = [*data.train.skipped, *data.held_out.skipped]
        logger.warning("skipped %d unreadable image file(s), the first: %s", len(skipped), skipped[0][1])
    return data, limit_test


def _build_state(
    options: RunOptions, recipe: Recipe, data: RunData, saved: dict[str, Any] | None, proc: _Process, steps: int
) -> _State:
    """Model, averaged model, optimizer and schedule: seeded, from the starting weights, or the checkpoint's."""
    torch.manual_seed(recipe.seed)
    model = Tiniest(len(data.train.classes), labels=data.train.classes)
    init = None
    if options.init is not None:
        init = load_start(model, options.init, data.train.classes, progress=options.progress and proc.main)
    model = model.to(proc.device)
    optimizer = build_optimizer(model, recipe)
    state = _State(model, build_ema(model, recipe), optimizer, build_scheduler(optimizer, recipe, steps), 0, [], init)
    if saved is not None:
        state.model.load_state_dict(saved["model"])
        state.ema.load_state_dict(saved["ema"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.epoch, state.history, state.init = int(saved["epoch"]), list(saved["history"]), saved.get("init")
    return state


def _train(options: RunOptions, overrides: dict[str, Any], proc: _Process) -> Path:
    checkpoint_path = options.output / CHECKPOINT_NAME
    saved = load_checkpoint(checkpoint_path, proc.device) if options.resume else None
    recipe = _resolve_recipe(overrides, saved, options)
    if recipe.batch_size % proc.world_size:
        raise UsageError(f"batch_size {recipe.batch_size} does not split evenly over {proc.world_size} processes")
    if saved is not None and _already_finished(saved, recipe, options, proc):
        return checkpoint_path
    if saved is not None:
        _check_process_count(saved, proc)
    data, limit_test = _load_data(options, recipe, saved, proc, checkpoint_path)
    batches = _batches(recipe, len(data.train), proc)
    state = _build_state(options, recipe, data, saved, proc, batches.steps)
    if options.overwrite and proc.main:
        for name in RUN_FILES:  # the arguments and data are good: the old run goes now
            (options.output / name).unlink(missing_ok=True)

    last = recipe.epochs if options.stop_after is None else min(recipe.epochs, state.epoch + options.stop_after)
    if proc.main:
        logger.info(
            "training %d images of %s (%d classes): epochs %d..%d/%d (%d steps of %d per epoch, %d process(es) on "
            "%s); %s scored each epoch; run folder %s", len(data.train), data.location, len(data.train.classes),
            state.epoch + 1, last, recipe.epochs, batches.steps, recipe.batch_size, proc.world_size, proc.device,
            data.held_out_record["split"], options.output,
        )
        caveat = overlap_caveat((state.init or {}).get("dataset"), data.location, data.train.classes,
                                data.held_out_record["split"])
        if caveat is not None:  # said before the epochs, as the card will say it
            logger.warning("%s", caveat)
    _run_epochs(state, recipe, data, batches, last, options, proc, limit_test)
    if proc.main:
        _finish(state, recipe, options)
    if proc.world_size > 1:
        dist.barrier()
    return checkpoint_path


def _trained_module(model: Tiniest, proc: _Process) -> nn.Module:
    """What the steps run: the model itself, or for several processes its DistributedDataParallel wrapper."""
    if proc.world_size == 1:
        return model
    _match_grad_strides(model)
    device_ids = [proc.device.index] if proc.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


@dataclass(frozen=True)
class _Epoch:
    """What one epoch measured."""

    loss: float  # mean over the steps of every process
    mixup: float
    correct: int  # held-out images the averaged weights classify right
    train_seconds: float
    eval_seconds: float  # scoring and the replicas' hashes
    replicas: list[str]  # each process's hash of its weights


def _epoch_record(
    state: _State, recipe: Recipe, data: RunData, proc: _Process, steps: int, measured: _Epoch
) -> dict[str, Any]:
    """The epoch's line of the log (and of the checkpoint's history)."""
    return {
        "epoch": state.epoch,
        "epochs": recipe.epochs,
        "loss": measured.loss,
        "lr": float(state.scheduler.get_last_lr()[0]),
        "mixup": measured.mixup,
        "split": data.held_out_record["split"],  # the scored images: "test" or "validation"
        "test_accuracy": measured.correct / len(data.held_out),
        "test_correct": measured.correct,
        "test_total": len(data.held_out),
        "images_per_second": steps * recipe.batch_size / measured.train_seconds,
        "train_seconds": measured.train_seconds,
        "eval_seconds": measured.eval_seconds,
        "world_size": proc.world_size,
        "replica_sha256": measured.replicas,
    }


def _run_epochs(
    state: _State,
    recipe: Recipe,
    data: RunData,
    batches: _Batches,
    last: int,
    options: RunOptions,
    proc: _Process,
    limit_test: int | None,
) -> None:
    """Train epochs up to ``last``: after each, score the averaged weights and save the checkpoint and log."""
    from tqdm import tqdm

    train_images, train_labels = data.train.images.to(proc.device), data.train.labels.to(proc.device)
    trained = _trained_module(state.model, proc)
    augmentation = batch_augmentation() if recipe.augment else nn.Identity()
    contract = default_preprocess()  # what the trained weights' metadata will state (weights_meta)
    rng_devices = [proc.device] if proc.device.type == "cuda" else []
    progress = options.progress and proc.main
    by_parts = proc.device.type == "cpu" and proc.world_size == 1  # DistributedDataParallel reduces in backward()
    while state.epoch < last:
        epoch = state.epoch
        batches.sampler.set_epoch(epoch)
        order = torch.tensor(list(batches.sampler), dtype=torch.int64)
        strength = recipe.mixup_strength(epoch)
        trained.train()
        loss_sum = torch.zeros((), device=proc.device)
        bar = tqdm(total=batches.steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step", leave=False,
                   disable=None if progress else True, file=sys.stderr)  # None: no bar in a log file
        _synchronize(proc.device)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(_epoch_seed(recipe.seed, epoch, proc.rank))
            for batch in order[: batches.steps * batches.per_process].split(batches.per_process):
                with on_free_cores():  # a busy machine: one thread (the bits do not change: see _backward)
                    inputs = augmentation(train_images[batch].float().div_(255))
                    loss_sum += _step(trained, state, inputs, train_labels[batch], strength, contract,
                                      by_parts=by_parts)
                bar.update()
        _synchronize(proc.device)
        train_seconds = time.perf_counter() - started
        bar.close()
        if proc.world_size > 1:
            dist.all_reduce(loss_sum)
        started = time.perf_counter()
        correct = _evaluate(state.ema.module, data.held_out.images, data.held_out.labels, contract, proc)
        state.epoch = epoch + 1
        replicas = _replica_hashes(state, proc)
        measured = _Epoch(float(loss_sum) / (batches.steps * proc.world_size), strength, correct, train_seconds,
                          time.perf_counter() - started, replicas)
        record = _epoch_record(state, recipe, data, proc, batches.steps, measured)
        state.history.append(record)
        if len(set(replicas)) > 1:
            warn(f"epoch {state.epoch}: the processes hold different weights", TiniestWarning)
        if proc.main:
            save_atomically(options.output / CHECKPOINT_NAME, _checkpoint_bytes(state, recipe, data, limit_test))
            write_log(options.output, state.history)
            logger.info("%s", console_line(record))


def _finish(state: _State, recipe: Recipe, options: RunOptions) -> None:
    if options.plot and state.history:
        logger.info("plot: %s", plot_curves(options.output, state.history))
    if state.epoch < recipe.epochs:
        logger.info("stopped after epoch %d of %d; continue with: %s", state.epoch, recipe.epochs,
                    resume_command(options.output))
        return
    save_atomically(options.output / MODEL_NAME, state_dict_bytes(state.ema.module.state_dict()))
    logger.info("finished: averaged weights in %s", options.output / MODEL_NAME)
