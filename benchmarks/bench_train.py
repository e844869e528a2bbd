"""Training speed of ``tiniest train`` against a plain loop, on this machine, in one run.

The recipe side is the real command (augmentation, mix-up, one-cycle schedule, weight averaging,
checkpoints), timed by its own log (training time only, the per-epoch test excluded). The plain
side is the loop everyone writes first: same model, same batch, same images, AdamW and
cross-entropy, eager, no augmentation. The two alternate so that a busy machine slows both alike;
the medians and their ratio are reported.

    python benchmarks/bench_train.py --data ../shared/cifar10 --images 2048 --repeats 3

``--cpu-cost`` measures instead what ``tiniest train`` spends: CPU seconds per training image
(``time.process_time`` over the whole run, its scoring included) at torch's thread count and at
``torch.set_num_threads(1)``, alternated, quiet or (``--neighbour loop``) beside one core kept
busy by a Python loop that the benchmark starts and stops itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout works without pip install

from tiniest.data import load_split
from tiniest.model import Tiniest
from tiniest.training import RunOptions, train
from tiniest.training.runlog import read_log


def recipe_speed(data: str, images: int, batch_size: int, epochs: int) -> float:
    """Images per second of ``tiniest train`` (mean over its epochs, training time only)."""
    with tempfile.TemporaryDirectory() as folder:
        options = RunOptions(data=data, output=Path(folder), limit_test=batch_size, device="cpu", progress=False)
        train(options, {"epochs": epochs, "batch_size": batch_size, "limit_train": images})
        log = read_log(Path(folder) / "log.jsonl")
    seconds = sum(record["train_seconds"] for record in log)
    return sum(record["images_per_second"] * record["train_seconds"] for record in log) / seconds


def recipe_cost(data: str, images: int, batch_size: int, epochs: int, threads: int) -> tuple[float, float]:
    """Images per second and CPU ms per image of ``tiniest train`` on ``threads`` torch threads (whole run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        recipe_speed(data, images, batch_size, epochs)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        torch.set_num_threads(before)
    return epochs * images / wall, cpu * 1e3 / (epochs * images)


def cpu_cost(args: argparse.Namespace) -> None:
    """``tiniest train``'s CPU per image at torch's thread count against one thread, alternated."""
    neighbour = [subprocess.Popen([sys.executable, "-c", "while True: pass"])] if args.neighbour == "loop" else []
    try:
        time.sleep(1.0 if neighbour else 0.0)
        runs: dict[int, list[tuple[float, float]]] = {torch.get_num_threads(): [], 1: []}
        for _ in range(args.repeats):
            for threads, measured in runs.items():
                measured.append(recipe_cost(args.data, args.images, args.batch_size, args.epochs, threads))
    finally:
        for process in neighbour:
            process.kill()
            process.wait()
    for threads, measured in runs.items():
        speed = statistics.median(m[0] for m in measured)
        cpu = statistics.median(m[1] for m in measured)
        print(f"neighbour {args.neighbour}, {threads} thread(s): {speed:.0f} img/s, {cpu:.2f} ms CPU/image "
              f"(all: {', '.join(f'{m[1]:.2f}' for m in measured)})")
    many, one = (statistics.median(m[1] for m in measured) for measured in runs.values())
    print(f"CPU per image, {torch.get_num_threads()} threads / 1 thread: {many / one:.2f}")


def plain_speed(pixels: torch.Tensor, labels: torch.Tensor, batch_size: int, epochs: int) -> float:
    """Images per second of a plain loop over the same images: shuffle, forward, backward, AdamW."""
    torch.manual_seed(0)
    model = Tiniest().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    steps = len(labels) // batch_size
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels))[: steps * batch_size].split(batch_size):
            loss = F.cross_entropy(model(pixels[batch].float().div_(255).sub_(0.5)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epochs * steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/cifar10", help="dataset root with train/ and test/")
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--cpu-cost", action="store_true", help="CPU per image at torch's threads against 1 thread")
    parser.add_argument("--neighbour", choices=["none", "loop"], default="none", help="with --cpu-cost")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_cost:
        cpu_cost(args)
        return

    split = load_split(args.data, "train")
    chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[: args.images]
    pixels, labels = split.images[chosen], split.labels[chosen]
    recipe, plain = [], []
    for _ in range(args.repeats):
        plain.append(plain_speed(pixels, labels, args.batch_size, args.epochs))
        recipe.append(recipe_speed(args.data, args.images, args.batch_size, args.epochs))
    result = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "images": args.images,
        "plain_images_per_second": statistics.median(plain),
        "recipe_images_per_second": statistics.median(recipe),
        "ratio_recipe_over_plain": statistics.median(recipe) / statistics.median(plain),
        "all_plain": [round(v, 1) for v in plain],
        "all_recipe": [round(v, 1) for v in recipe],
    }
    print(
        f"plain loop {result['plain_images_per_second']:.0f} img/s, tiniest train "
        f"{result['recipe_images_per_second']:.0f} img/s: ratio {result['ratio_recipe_over_plain']:.2f} "
        f"(batch {args.batch_size}, {torch.get_num_threads()} threads, medians of {args.repeats})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
