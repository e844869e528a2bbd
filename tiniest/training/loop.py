"""The training loop: one process, or one of many started by ``torchrun`` (DistributedDataParallel).

Reproducibility and exact resumption rest on one rule: all randomness of epoch ``e`` on rank
``r`` comes from generators seeded by ``(seed, e, r)`` at the start of the epoch (the shuffle:
``DistributedSampler`` seeded with ``seed + e``; augmentation and mix-up: torch's generator,
reseeded inside :func:`torch.random.fork_rng`). A checkpoint written at the end of an epoch
(model, averaged model, optimizer, schedule, epoch, history) therefore holds everything the
next epoch needs, and resuming from it gives the weights an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import sys
import tempfile
import time
import warnings
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

from tiniest.data import LabeledImages, load_split
from tiniest.devices import resolve_device
from tiniest.env import env_int
from tiniest.errors import DatasetError, PeerLostError, UsageError
from tiniest.model import Tiniest
from tiniest.storage import HF_PREFIX, check_output_folder, save_atomically
from tiniest.training.augment import batch_augmentation, mix_up, mixup_loss
from tiniest.training.recipe import Recipe, build_ema, build_optimizer, build_scheduler
from tiniest.training.runlog import LOG_NAME, PLOT_NAME, console_line, plot_curves, write_log
from tiniest.weights.run_files import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    MODEL_NAME,
    averaged_state_dict,
    load_checkpoint,
    state_dict_bytes,
)

__all__ = ["RunOptions", "dist_timeout", "last_saved", "state_sha256", "train"]

RUN_FILES = (CHECKPOINT_NAME, MODEL_NAME, LOG_NAME, PLOT_NAME)
EVAL_BATCH = 500
DIST_TIMEOUT = 600.0  # seconds a process waits for its peers (TINIEST_DIST_TIMEOUT), as NCCL's default
_PEER_LOST = re.compile(r"Timed out|timeout|Connection (closed|reset)", re.IGNORECASE)


@dataclass(frozen=True)
class RunOptions:
    """How to run (none of it changes the weights)."""

    data: str | None  # None: the checkpoint's (with resume only)
    output: Path
    resume: bool = False
    overwrite: bool = False  # start afresh in a folder holding a run, replacing its files
    stop_after: int | None = None  # epochs to run in this invocation, then stop (resume later)
    limit_test: int | None = None  # score on a fixed random subset of test/ (resume: the checkpoint's)
    device: str | torch.device | None = None  # None: this process's GPU if there is one, else the CPU
    progress: bool = True
    plot: bool = False

    def __post_init__(self) -> None:  # refused here, before the run folder is made
        if self.data is None and not self.resume:
            raise UsageError("--data is required to start a run (--resume reads it from the checkpoint)")
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


@contextmanager
def _process_group(device: torch.device) -> Iterator[_Process]:
    """This process's place in a ``torchrun`` job (or a job of one) on ``device``, with the process group set up."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
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
    text = os.environ.get("TINIEST_DIST_TIMEOUT", "").strip()
    try:
        seconds = float(text) if text else DIST_TIMEOUT
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise UsageError(f"TINIEST_DIST_TIMEOUT: expected a positive number of seconds, got {text!r}")
    return seconds


def _prepare_output(path: Path) -> None:
    """Create the run folder and write a probe file in it: an unwritable place fails now, not after an epoch."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(f"--output {path}: cannot write there ({error.strerror or error})") from None


def _data_key(data: str) -> str:
    """``--data`` as recorded in the checkpoint: an absolute path (or the ``hf://`` id), so resume can compare it."""
    return data if data.startswith(HF_PREFIX) else str(Path(data).expanduser().resolve())


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    digest = hashlib.sha256(f"tiniest/{seed}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _subset(count: int, limit: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of ``limit`` items (all of them when ``limit`` is None)."""
    if limit is None or limit >= count:
        return torch.arange(count)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:limit].sort().values


def state_sha256(*modules: nn.Module) -> str:
    """A hash of the parameters and buffers: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _resolve_recipe(overrides: dict[str, Any], saved: dict[str, Any] | None, options: RunOptions) -> Recipe:
    """The recipe of a new run, or of the resumed one (where every flag given, ``--data`` included, must agree)."""
    if saved is None:
        return Recipe(**overrides)
    recipe = Recipe.from_dict(saved["recipe"])
    conflicts = [f"--{k.replace('_', '-')}: checkpoint {getattr(recipe, k)!r}, asked {v!r}"
                 for k, v in overrides.items() if getattr(recipe, k) != v]
    if options.data is not None and _data_key(str(saved["data"])) != _data_key(options.data):
        conflicts.append(f"--data: checkpoint {saved['data']!r}, asked {_data_key(options.data)!r}")
    if options.limit_test is not None and options.limit_test != saved.get("limit_test"):
        conflicts.append(f"--limit-test: checkpoint {saved.get('limit_test')!r}, asked {options.limit_test!r}")
    _refuse_disagreement(conflicts)
    return recipe


def _refuse_disagreement(conflicts: list[str]) -> None:
    if conflicts:
        raise UsageError("--resume continues the checkpoint's run; these disagree with it: " + "; ".join(conflicts))


@dataclass
class _State:
    model: Tiniest
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.OneCycleLR
    epoch: int
    history: list[dict[str, Any]]


def _checkpoint_bytes(state: _State, recipe: Recipe, data: _Data, limit_test: int | None) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "recipe": recipe.to_dict(),
            "data": data.location,
            "classes": list(data.train.classes),
            "train_images": len(data.train),
            "split_sizes": dict(data.sizes),
            "limit_test": limit_test,
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


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, shift: float, proc: _Process) -> int:
    """Correct predictions over the whole test subset (each process scores its share)."""
    model.eval()
    mine = torch.arange(proc.rank, len(labels), proc.world_size)
    correct = torch.zeros((), dtype=torch.int64, device=proc.device)
    with torch.no_grad():
        for chunk in mine.split(EVAL_BATCH):
            inputs = images[chunk].to(proc.device).float().div_(255).add_(shift)
            correct += (model(inputs).argmax(1) == labels[chunk].to(proc.device)).sum()
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
    trained: nn.Module, state: _State, inputs: torch.Tensor, labels: torch.Tensor, mixup: float, shift: float
) -> torch.Tensor:
    """One optimisation step on an augmented batch: mix-up, loss, update, schedule, average."""
    inputs, targets = mix_up(inputs, labels, mixup)
    loss = mixup_loss(trained(inputs + shift), targets)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    state.ema.update_parameters(state.model)
    return loss.detach()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(options: RunOptions, overrides: dict[str, Any] | None = None) -> Path:
    """Train (or resume) the run in ``options.output``; return the path of its checkpoint.

    Every problem with the arguments is found before the first step: an ``--output`` that is a
    file or cannot be written, a run already there (continue it with ``resume``, or replace it
    with ``overwrite``), a checkpoint that disagrees with the flags or the data.
    """
    overrides = dict(overrides or {})
    check_output_folder(options.output)
    checkpoint_path = options.output / CHECKPOINT_NAME
    if options.resume and options.overwrite:
        raise UsageError("--resume continues the run in --output and --overwrite replaces it: choose one")
    if options.resume and not checkpoint_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path} (start without --resume)")
    existing = [name for name in RUN_FILES if (options.output / name).exists()]
    if not options.resume and existing and not options.overwrite:
        raise FileExistsError(
            f"{options.output} already holds a run ({', '.join(existing)}): continue it with --resume, "
            "start it afresh with --overwrite (its files are replaced), or choose another --output"
        )
    if options.stop_after is not None and options.stop_after <= 0:
        raise UsageError(f"--stop-after: expected a positive number of epochs, got {options.stop_after}")
    dist_timeout()  # a bad TINIEST_DIST_TIMEOUT is refused now
    device = _training_device(options.device)  # as is a GPU this process cannot have
    _prepare_output(options.output)
    with _process_group(device) as proc:
        try:
            return _train(options, overrides, proc)
        except RuntimeError as error:  # gloo reports a silent peer as a plain RuntimeError
            if proc.world_size > 1 and (isinstance(error, dist.DistError) or _PEER_LOST.search(str(error))):
                raise _peer_error(error, proc, options) from None
            raise


def _peer_error(error: Exception, proc: _Process, options: RunOptions) -> PeerLostError:
    """A multi-process failure, said plainly: which process, the timeout, and how to continue."""
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return PeerLostError(
        f"process {proc.rank} of {proc.world_size}: a peer process stopped answering within "
        f"{dist_timeout():g} s (the process group's timeout, TINIEST_DIST_TIMEOUT) or failed ({first}). "
        f"{last_saved(options.output)}"
    )


def last_saved(output: Path) -> str:
    """Where the run in ``output`` stands, and the command that continues it."""
    path = output / CHECKPOINT_NAME
    try:
        checkpoint = load_checkpoint(path)
    except (OSError, ValueError):
        return "No epoch was saved: start the run again."
    epoch, epochs = int(checkpoint["epoch"]), int(checkpoint["recipe"]["epochs"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc-per-node {world_size} -m tiniest" if world_size > 1 else "tiniest"
    command = f"{launcher} train --output {shlex.quote(str(output))} --resume"  # pasted into a shell: quoted
    return f"Last saved: epoch {epoch} of {epochs} in {path}; continue with: {command}"


@dataclass(frozen=True)
class _Data:
    location: str  # --data as recorded in the checkpoint (see _data_key)
    train: LabeledImages
    test: LabeledImages
    sizes: dict[str, int]  # images in the whole train and test splits, before any --limit


def _load(data: str, limit_train: int | None, seed: int, limit_test: int | None, progress: bool) -> _Data:
    """The train subset (seeded by the recipe) and the test subset (always the same one)."""
    train_split = load_split(data, "train", progress=progress)
    test_split = load_split(data, "test", progress=progress)
    if train_split.classes != test_split.classes:
        only_train = [name for name in train_split.classes if name not in test_split.classes]
        only_test = [name for name in test_split.classes if name not in train_split.classes]
        raise DatasetError(
            f"{data}: expected the same class folders in train/ and test/; only in train/: "
            f"{', '.join(only_train) or 'none'}; only in test/: {', '.join(only_test) or 'none'}"
        )
    if len(train_split.classes) < 2:
        raise DatasetError(f"{data}: expected at least 2 classes (one folder each), got {list(train_split.classes)}")
    chosen = _subset(len(train_split), limit_train, seed)
    tested = _subset(len(test_split), limit_test, 0)
    return _Data(
        _data_key(data),
        LabeledImages(train_split.images[chosen], train_split.labels[chosen], train_split.classes),
        LabeledImages(test_split.images[tested], test_split.labels[tested], test_split.classes),
        {"train": len(train_split), "test": len(test_split)},
    )


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


def _train(options: RunOptions, overrides: dict[str, Any], proc: _Process) -> Path:
    from tqdm import tqdm

    checkpoint_path = options.output / CHECKPOINT_NAME
    saved = load_checkpoint(checkpoint_path, proc.device) if options.resume else None
    recipe = _resolve_recipe(overrides, saved, options)
    location = options.data if saved is None else str(saved["data"])
    assert location is not None  # RunOptions refuses a new run without data
    if recipe.batch_size % proc.world_size:
        raise UsageError(f"--batch-size {recipe.batch_size} does not split evenly over {proc.world_size} processes")
    if saved is not None and int(saved["epoch"]) >= recipe.epochs:
        if proc.main:
            if not (options.output / MODEL_NAME).is_file():
                save_atomically(options.output / MODEL_NAME, state_dict_bytes(averaged_state_dict(saved)))
            print(f"{options.output}: the run already finished its {recipe.epochs} epochs (averaged weights in "
                  f"{options.output / MODEL_NAME}); nothing to do")
        return checkpoint_path

    limit_test = options.limit_test if options.limit_test is not None or saved is None else saved.get("limit_test")
    progress = options.progress and proc.main
    data = _load(location, recipe.limit_train, recipe.seed, limit_test, progress)
    train_split, test_split = data.train, data.test
    if saved is not None:
        found = {"classes": list(train_split.classes), "train_images": len(train_split)}
        _refuse_disagreement([f"the data's {key}: checkpoint {saved[key]!r}, now {value!r}"
                              for key, value in found.items() if key in saved and saved[key] != value])
    train_images, train_labels = train_split.images.to(proc.device), train_split.labels.to(proc.device)
    test_images, test_labels = test_split.images, test_split.labels

    per_process = recipe.batch_size // proc.world_size
    indices: Any = range(len(train_split))  # the sampler only needs len()
    sampler: DistributedSampler[int] = DistributedSampler(
        indices, num_replicas=proc.world_size, rank=proc.rank, shuffle=True, seed=recipe.seed, drop_last=True
    )
    steps = len(sampler) // per_process
    if steps == 0:
        raise UsageError(f"--batch-size {recipe.batch_size} is larger than the {len(train_split)} training images")

    torch.manual_seed(recipe.seed)
    model = Tiniest(len(train_split.classes), labels=train_split.classes).to(proc.device)
    optimizer = build_optimizer(model, recipe)
    state = _State(model, build_ema(model, recipe), optimizer, build_scheduler(optimizer, recipe, steps), 0, [])
    if saved is not None:
        state.model.load_state_dict(saved["model"])
        state.ema.load_state_dict(saved["ema"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.epoch, state.history = int(saved["epoch"]), list(saved["history"])
    trained: nn.Module = model
    if proc.world_size > 1:
        _match_grad_strides(model)
        device_ids = [proc.device.index] if proc.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    augmentation = batch_augmentation() if recipe.augment else nn.Identity()
    rng_devices = [proc.device] if proc.device.type == "cuda" else []
    if options.overwrite and proc.main:
        for name in RUN_FILES:  # the arguments and data are good: the old run goes now
            (options.output / name).unlink(missing_ok=True)

    last = recipe.epochs if options.stop_after is None else min(recipe.epochs, state.epoch + options.stop_after)
    if proc.main:
        print(
            f"training {len(train_split)} images of {location} ({len(train_split.classes)} classes): "
            f"epochs {state.epoch + 1}..{last}/{recipe.epochs} "
            f"({steps} steps of {recipe.batch_size} per epoch, {proc.world_size} process(es) on {proc.device}); "
            f"run folder {options.output}",
            flush=True,
        )
    while state.epoch < last:
        epoch = state.epoch
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        strength = recipe.mixup_strength(epoch)
        trained.train()
        loss_sum = torch.zeros((), device=proc.device)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="step", leave=False,
                   disable=not progress, file=sys.stderr)
        _synchronize(proc.device)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(_epoch_seed(recipe.seed, epoch, proc.rank))
            for batch in order[: steps * per_process].split(per_process):
                inputs = augmentation(train_images[batch].float().div_(255))
                loss_sum += _step(trained, state, inputs, train_labels[batch], strength, recipe.shift)
                bar.update()
        _synchronize(proc.device)
        train_seconds = time.perf_counter() - started
        bar.close()
        if proc.world_size > 1:
            dist.all_reduce(loss_sum)
        started = time.perf_counter()
        correct = _evaluate(state.ema.module, test_images, test_labels, recipe.shift, proc)
        state.epoch = epoch + 1
        replicas = _replica_hashes(state, proc)
        record = {
            "epoch": state.epoch,
            "epochs": recipe.epochs,
            "loss": float(loss_sum) / (steps * proc.world_size),
            "lr": float(state.scheduler.get_last_lr()[0]),
            "mixup": strength,
            "test_accuracy": correct / len(test_labels),
            "test_correct": correct,
            "test_total": len(test_labels),
            "images_per_second": steps * recipe.batch_size / train_seconds,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - started,
            "world_size": proc.world_size,
            "replica_sha256": replicas,
        }
        state.history.append(record)
        if len(set(replicas)) > 1:
            warnings.warn(f"epoch {state.epoch}: the processes hold different weights", RuntimeWarning, stacklevel=2)
        if proc.main:
            save_atomically(checkpoint_path, _checkpoint_bytes(state, recipe, data, limit_test))
            write_log(options.output, state.history)
            print(console_line(record), flush=True)
    if proc.main:
        _finish(state, recipe, options)
    if proc.world_size > 1:
        dist.barrier()
    return checkpoint_path


def _finish(state: _State, recipe: Recipe, options: RunOptions) -> None:
    if options.plot and state.history:
        print(f"plot: {plot_curves(options.output, state.history)}")
    if state.epoch < recipe.epochs:
        print(f"stopped after epoch {state.epoch} of {recipe.epochs}; continue with --resume")
        return
    save_atomically(options.output / MODEL_NAME, state_dict_bytes(state.ema.module.state_dict()))
    print(f"finished: averaged weights in {options.output / MODEL_NAME}")

