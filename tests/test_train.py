"""``tiniest train``: exact resumption, logs and plot, refusals, two processes, and that the recipe learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_runs import make_dataset, train
from tiniest.recipe import Recipe
from tiniest.trainer import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def assert_same_state(left: object, right: object, where: str = "checkpoint") -> None:
    """Recursive bit-for-bit equality of checkpoint contents (tensors with torch.equal)."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype and torch.equal(left, right), where
    elif isinstance(left, dict):
        assert isinstance(right, dict) and left.keys() == right.keys(), where
        for key in left:
            assert_same_state(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert isinstance(right, (list, tuple)) and len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same_state(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


def test_resume_gives_bit_identical_weights(tiny_data: Path, tmp_path: Path) -> None:
    flags = ["--epochs", "2", "--batch-size", "16", "--limit-train", "64", "--limit-test", "10", "--seed", "3"]
    assert train(tiny_data, tmp_path / "straight", *flags, "--plot") == 0
    assert train(tiny_data, tmp_path / "resumed", *flags, "--stop-after", "1") == 0
    halfway = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert halfway["epoch"] == 1 and not (tmp_path / "resumed" / "model.pt").exists()
    assert train(tiny_data, tmp_path / "resumed", "--resume") == 0

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert straight["epoch"] == resumed["epoch"] == 2
    for part in ("model", "ema", "optimizer", "scheduler", "recipe"):
        assert_same_state(straight[part], resumed[part], part)
    assert (tmp_path / "straight" / "model.pt").read_bytes() == (tmp_path / "resumed" / "model.pt").read_bytes()
    hashes = [[r["replica_sha256"] for r in run["history"]] for run in (straight, resumed)]
    assert hashes[0] == hashes[1]
    # a different seed gives different weights: the equality above is not vacuous
    assert train(tiny_data, tmp_path / "other", *flags[:-1], "4", "--stop-after", "1") == 0
    other = load_checkpoint(tmp_path / "other" / "checkpoint.pt")
    assert not torch.equal(other["ema"]["module.fc.weight"], halfway["ema"]["module.fc.weight"])

    # the log and the plot
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert record["test_total"] == 10 and 0 <= record["test_accuracy"] <= 1
        assert record["images_per_second"] > 0 and record["loss"] > 0 and record["lr"] > 0
    assert log[0]["mixup"] == 0.0 and log[1]["mixup"] == 0.5
    assert (tmp_path / "straight" / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_refuses_to_overwrite_or_to_resume_with_another_recipe(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(tiny_data, tmp_path / "nothing", "--resume") == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert train(tiny_data, run, "--epochs", "2", "--batch-size", "80", "--limit-test", "4", "--stop-after", "1") == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert train(tiny_data, run, "--epochs", "2") == 1
    assert "--resume" in capsys.readouterr().err
    assert train(tiny_data, run, "--resume", "--epochs", "3") == 1
    assert "epochs: checkpoint 2, asked 3" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert train(tiny_data, tmp_path / "big", "--batch-size", "512") == 1
    assert "larger than the 160 training images" in capsys.readouterr().err
    assert train(tiny_data, tmp_path / "bad", "--lr", "-1") == 1
    assert "lr=-1.0" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train(tiny_data, run, "--resume") == 1
    assert "expected a tiniest training checkpoint" in capsys.readouterr().err


def test_two_processes_with_gloo_end_with_identical_weights(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tiniest",
        "train",
        "--data",
        str(tiny_data),
        "--output",
        str(run),
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--limit-train",
        "64",
        "--limit-test",
        "10",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and (run / "model.pt").is_file()
    for record in checkpoint["history"]:
        assert record["world_size"] == 2
        first, second = record["replica_sha256"]
        assert first == second  # both ranks hold bit-identical model and averaged weights
    assert result.stdout.count("epoch 2/2") == 1  # only rank 0 reports


def test_the_recipe_learns_on_a_few_thousand_cifar10_images(shared_cifar10: Path, tmp_path: Path) -> None:
    """The recipe (augmentation, mix-up, one-cycle, averaged weights) beats chance threefold within minutes."""
    flags = [
        "--limit-train",
        "2560",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.005",
        "--ema-decay",
        "0.9",
        "--limit-test",
        "2000",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on two cores shared with other work can run several times slower
    started = time.perf_counter()
    try:
        assert train(shared_cifar10, tmp_path / "run", *flags) == 0
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - started
    last = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["history"][-1]
    print(f"short run: {100 * last['test_accuracy']:.2f}% of {last['test_total']} test images in {elapsed:.0f} s")
    assert last["test_total"] == 2000
    assert last["test_accuracy"] >= 0.30


def test_recipe_defaults_are_the_published_ones() -> None:
    recipe = Recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.warmup) == (300, 256, 0.02, 0.01)
    assert (recipe.final_div_factor, recipe.ema_decay, recipe.mixup, recipe.shift) == (0.4, 0.999, 0.5, -0.5)
    assert [recipe.mixup_strength(e) for e in (0, 75, 150, 299)] == [0.0, 0.25, 0.5, 0.5]
