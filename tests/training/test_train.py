"""``tiniest train``: exact resumption, logs and plot, refusals, two processes, and that the recipe learns."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_runs import make_dataset, train
from tiniest.commands import main
from tiniest.training import Recipe
from tiniest.weights.run_files import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
def test_resume_gives_bit_identical_weights(tiny_data: Path, tmp_path: Path) -> None:
    flags = ["--epochs", "2", "--batch-size", "16", "--limit-train", "64", "--limit-test", "10", "--seed", "3"]
    assert train(tiny_data, tmp_path / "straight", *flags, "--plot") == 0
    assert train(tiny_data, tmp_path / "resumed", *flags, "--stop-after", "1") == 0
    halfway = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert halfway["epoch"] == 1 and not (tmp_path / "resumed" / "model.pt").exists()
    # --data is the checkpoint's when not given
    assert main(["train", "--output", str(tmp_path / "resumed"), "--resume", "--no-progress"]) == 0

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert straight["epoch"] == resumed["epoch"] == 2 and straight["data"] == resumed["data"] == str(tiny_data)
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


@pytest.mark.slow
def test_refuses_to_overwrite_or_to_resume_with_another_recipe(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(tiny_data, tmp_path / "nothing", "--resume") == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--output", str(run)]) == 1
    assert "data (--data) is required to start a run; resume (--resume) reads it" in capsys.readouterr().err
    assert train(tiny_data, run, "--epochs", "2", "--batch-size", "80", "--limit-test", "4", "--stop-after", "1") == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert train(tiny_data, run, "--epochs", "2") == 1
    assert "continue it with resume (--resume), start it afresh with overwrite (--overwrite;" in capsys.readouterr().err
    assert train(tiny_data, run, "--resume", "--epochs", "3") == 1
    assert "epochs: checkpoint 2, asked 3" in capsys.readouterr().err
    other = make_dataset(tmp_path / "other-data", train_per_class=4)
    assert train(other, run, "--resume") == 1
    assert "the data's train_images: checkpoint 160, now 40" in capsys.readouterr().err
    assert train(tiny_data, run, "--resume", "--limit-test", "6") == 1
    assert "limit_test: checkpoint 4, asked 6" in capsys.readouterr().err
    assert train(tiny_data, tmp_path / "big", "--batch-size", "512") == 1
    assert "larger than the 160 training images" in capsys.readouterr().err
    assert train(tiny_data, tmp_path / "bad", "--lr", "-1") == 1
    assert "lr=-1.0" in capsys.readouterr().err
    make_dataset(tiny_data, train_per_class=1, test_per_class=1, classes=("unicorn",))  # the data changed
    assert train(tiny_data, run, "--resume") == 1
    assert "the data's classes: checkpoint [" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert train(tiny_data, run, "--resume") == 1
    err = capsys.readouterr().err
    assert "expected a tiniest training checkpoint (" in err and "got 16 bytes that are neither" in err, err
    (run / "checkpoint.pt").write_bytes(b"")
    assert train(tiny_data, run, "--resume") == 1
    assert "got an empty file (0 bytes)" in capsys.readouterr().err


@pytest.mark.slow
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
    assert "Grad strides do not match" not in result.stderr  # DDP gets gradients in its buckets' layout


@pytest.mark.slow
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
    assert (recipe.final_div_factor, recipe.ema_decay, recipe.mixup) == (0.4, 0.999, 0.5)
    assert "shift" not in recipe.to_dict(), "the input contract is the weights' metadata, not a recipe field"
    assert Recipe.from_dict({**recipe.to_dict(), "shift": -0.5}) == recipe, "an older checkpoint's recipe still reads"
    assert [recipe.mixup_strength(e) for e in (0, 75, 150, 299)] == [0.0, 0.25, 0.5, 0.5]


def test_a_recipe_error_says_for_each_value_what_was_expected() -> None:
    """Only the values that must be positive say so; a fraction says its own range, once."""
    from tiniest.errors import UsageError

    with pytest.raises(UsageError) as refused:
        Recipe(lr=-1.0, val_fraction=1.5, limit_train=0)
    assert str(refused.value) == (
        "invalid training recipe: lr=-1.0 (expected a positive value), limit_train=0 (expected a positive number of "
        "images), val_fraction=1.5 (expected a fraction in (0, 1))"
    )


def test_no_silent_overwrite_and_arguments_checked_before_the_first_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"older weights")
    (run / "log.jsonl").write_text("{}\n")
    flags = ["--epochs", "1", "--batch-size", "20", "--limit-test", "4"]
    assert train(data, run, *flags) == 1
    err = capsys.readouterr().err
    assert "already holds a run (model.pt, log.jsonl)" in err and "start it afresh with overwrite" in err
    assert (run / "model.pt").read_bytes() == b"older weights"
    assert train(data, run, *flags, "--resume", "--overwrite") == 1
    assert "resume (--resume) continues the run in output and overwrite (--overwrite) replaces it: choose one" in \
        capsys.readouterr().err
    assert train(data, run, *flags, "--overwrite") == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and (run / "model.pt").read_bytes() != b"older weights"
    assert len((run / "log.jsonl").read_text().splitlines()) == 1

    # a finished run resumed: one line, nothing trained
    capsys.readouterr()
    assert train(data, run, "--resume") == 0
    out = capsys.readouterr().out
    assert "already finished its 1 epochs" in out and "epochs 2..1" not in out

    # --output naming a file, or a place nobody can write: refused at once, nothing read or trained
    started = time.perf_counter()
    assert train(data, run / "model.pt", *flags) == 1
    assert "output " in (err := capsys.readouterr().err) and "is a file; expected a folder" in err
    assert train(data, Path("/proc/tiniest-run"), *flags) == 1
    assert "output /proc/tiniest-run" in capsys.readouterr().err
    assert time.perf_counter() - started < 5  # before any data is decoded

    # one class only, or train/ and test/ with different classes: the odd folder is named
    make_dataset(tmp_path / "odd", train_per_class=2, test_per_class=1, classes=("cat", "dog"))
    make_dataset(tmp_path / "odd", train_per_class=2, test_per_class=0, classes=("emu",))
    assert train(tmp_path / "odd", tmp_path / "odd-run", *flags) == 1
    # make_dataset left test/emu empty: said so, not "only in train"
    assert "only in train/: emu (test/emu holds no images); only in test/: none" in capsys.readouterr().err
    assert not (tmp_path / "odd-run").exists()  # a failed start leaves no empty run folder behind
    (tmp_path / "odd" / "test" / "emu").rmdir()
    assert train(tmp_path / "odd", tmp_path / "odd-run", *flags) == 1
    assert "only in train/: emu; only in test/: none" in capsys.readouterr().err
    make_dataset(tmp_path / "one", train_per_class=2, test_per_class=1, classes=("cat",))
    assert train(tmp_path / "one", tmp_path / "one-run", *flags) == 1
    assert "expected at least 2 classes" in capsys.readouterr().err


def _stream_until(process: subprocess.Popen[str], text: str, seconds: float) -> str:
    """Read ``process``'s stdout until a line holds ``text`` (or fail after ``seconds``)."""
    assert process.stdout is not None
    deadline, seen = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen += line
        if text in line:
            return seen
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no {text!r} within {seconds} s; stdout so far:\n{seen}")


@pytest.mark.slow
def test_ctrl_c_says_the_last_saved_epoch_and_the_resume_command(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tiniest", "train", "--data", str(tiny_data), "--output", str(run),
               "--epochs", "40", "--batch-size", "16", "--limit-train", "32", "--limit-test", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _stream_until(process, "epoch 1/40", 240)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    saved = load_checkpoint(run / "checkpoint.pt")["epoch"]
    lines = err.strip().splitlines()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert lines[-1] == (
        f"interrupted. Last saved: epoch {saved} of 40 in {run / 'checkpoint.pt'}; continue with: "
        f"tiniest train --output {run} --resume"
    )


@pytest.mark.slow
def test_the_resume_command_is_quoted_for_the_shell(tiny_data: Path, tmp_path: Path) -> None:
    """A run folder named like shell code is one argument of the printed command, never code."""
    from tiniest.training.loop import last_saved

    run = tmp_path / "run $(id); `id`"
    assert train(tiny_data, run, "--epochs", "2", "--batch-size", "16", "--limit-train", "16", "--limit-test", "4",
                 "--stop-after", "1", "--no-progress") == 0
    command = last_saved(run).split("continue with: ", 1)[1]
    assert shlex.split(command) == ["tiniest", "train", "--output", str(run), "--resume"]


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="finds the torchrun workers through /proc/<pid>/task/<pid>/children (Linux)")
@pytest.mark.slow
def test_a_stopped_peer_ends_the_run_within_the_process_group_timeout(tiny_data: Path, tmp_path: Path) -> None:
    """A peer that stops answering (SIGSTOP, not killed): the others give up after TINIEST_DIST_TIMEOUT."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "tiniest", "train", "--data", str(tiny_data), "--output", str(run), "--device", "cpu",
               "--epochs", "40", "--batch-size", "16", "--limit-train", "32", "--limit-test", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TINIEST_DIST_TIMEOUT": "5"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: list[int] = []
    try:
        _stream_until(process, "epoch 1/40", 240)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        for pid in map(int, children):
            if b"RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes().replace(b"LOCAL_RANK", b"L"):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        assert len(stopped) == 1, children
        began = time.monotonic()
        _, err = process.communicate(timeout=120)
        elapsed = time.monotonic() - began
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):  # torchrun kills it once the others have failed
                os.kill(pid, signal.SIGKILL)
        process.kill()
    assert process.returncode != 0
    assert "a peer process stopped answering within 5 s (the process group's timeout, TINIEST_DIST_TIMEOUT)" in err
    assert "continue with: torchrun --nproc-per-node 2 -m tiniest train" in err
    print(f"the run ended {elapsed:.0f} s after its peer stopped")


@pytest.mark.slow
def test_ctrl_c_of_a_run_started_with_nproc_per_node_is_one_line_that_resumes(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Ctrl-C reaches the whole foreground process group: launcher and workers end with one line and 130."""
    run = tmp_path / "run 2"
    command = [sys.executable, "-m", "tiniest", "train", "--data", str(tiny_data), "--output", str(run),
               "--device", "cpu", "--epochs", "6", "--batch-size", "16", "--limit-train", "32", "--limit-test", "4",
               "--no-progress", "--nproc-per-node", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        _stream_until(process, "epoch 1/6", 240)
        os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        began = time.monotonic()
        _, err = process.communicate(timeout=120)
        print(f"the run ended {time.monotonic() - began:.1f} s after Ctrl-C")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    saved = load_checkpoint(run / "checkpoint.pt")["epoch"]
    assert process.returncode == 130 and "Traceback" not in err, err
    hints = [line for line in err.splitlines() if "continue with:" in line]
    assert hints == [
        f"interrupted. Last saved: epoch {saved} of 6 in {run / 'checkpoint.pt'}; continue with: "
        f"tiniest train --output {shlex.quote(str(run))} --resume --nproc-per-node 2"
    ], err
    resume = shlex.split(hints[0].split("continue with: ", 1)[1])
    assert resume[:2] == ["tiniest", "train"]
    finish = [sys.executable, "-m", "tiniest", *resume[1:], "--no-progress"]  # the hint itself, run to the end
    result = subprocess.run(finish, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["epoch"] == 6 and (run / "model.pt").is_file()
    assert all(record["world_size"] == 2 for record in checkpoint["history"])
    assert "finished: averaged weights" in result.stdout


@pytest.mark.slow
def test_a_failed_worker_of_nproc_per_node_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=1, classes=("a", "b"))
    (data / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    command = [sys.executable, "-m", "tiniest", "train", "--data", str(data), "--output", str(tmp_path / "run"),
               "--device", "cpu", "--epochs", "1", "--batch-size", "4", "--no-progress", "--nproc-per-node", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    # rank 0's error, once, then the launcher's line; or, where rank 1 failed first, its error quoted in that line
    if lines[-1].startswith("tiniest train: error: process 1 of 2 failed (exit code 1): "):
        assert "broken.png" in lines[-1] and len(lines) <= 2, result.stderr
    else:
        assert len(lines) == 2 and "broken.png" in lines[0], result.stderr
        assert lines[1] == "tiniest train: error: process 0 of 2 failed (exit code 1); its output is above"
    assert not (tmp_path / "run").exists()


def test_the_resume_hint_names_the_launcher_that_started_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone, a worker of torchrun, a worker of tiniest train --nproc-per-node (torch sets ROLE_NAME to its role)."""
    from tiniest.training.loop import WORKER_ROLE, resume_command

    run = Path("run 1")
    assert resume_command(run) == "tiniest train --output 'run 1' --resume"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ROLE_NAME", "default")  # torchrun's role
    assert resume_command(run) == "torchrun --nproc-per-node 2 -m tiniest train --output 'run 1' --resume"
    monkeypatch.setenv("ROLE_NAME", WORKER_ROLE)
    assert resume_command(run) == "tiniest train --output 'run 1' --resume --nproc-per-node 2"


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="finds the workers through /proc/<pid>/task/<pid>/children (Linux)")
@pytest.mark.slow
def test_a_killed_worker_of_nproc_per_node_is_named_in_one_line(tiny_data: Path, tmp_path: Path) -> None:
    """Another rank than 0 (whose output is kept back) dies: the launcher names it and how it ended."""
    command = [sys.executable, "-m", "tiniest", "train", "--data", str(tiny_data), "--output", str(tmp_path / "run"),
               "--device", "cpu", "--epochs", "40", "--batch-size", "16", "--limit-train", "32", "--limit-test", "4",
               "--no-progress", "--nproc-per-node", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _stream_until(process, "epoch 1/40", 240)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        ranks = {pid: Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in map(int, children)}
        killed = [pid for pid, environ in ranks.items() if b"RANK=1" in environ]
        assert len(killed) == 1, children
        os.kill(killed[0], signal.SIGKILL)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "tiniest train: error: process 1 of 2 failed (killed by SIGKILL)", err


def test_nproc_per_node_inside_a_torchrun_worker_is_refused(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "0")  # as torchrun sets it in each worker
    assert train(tiny_data, tmp_path / "run", "--nproc-per-node", "2") == 1
    assert "already a worker of torchrun" in capsys.readouterr().err
    assert train(tiny_data, tmp_path / "run", "--nproc-per-node", "0") == 1
    assert "--nproc-per-node: expected a positive number of processes, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_one_step_warm_up_is_refused_with_the_flags_to_change() -> None:
    """torch's OneCycleLR divides by zero when its warm-up lasts exactly one step: say so before the run."""
    from tiniest.errors import UsageError
    from tiniest.training.recipe import build_optimizer, build_scheduler

    model = torch.nn.Linear(2, 2)
    recipe = Recipe(epochs=50, warmup=0.01)
    with pytest.raises(UsageError, match=r"warmup 0.01 of 100 steps .* exactly one step"):
        build_scheduler(build_optimizer(model, recipe), recipe, steps_per_epoch=2)
    scheduler = build_scheduler(build_optimizer(model, recipe), recipe, steps_per_epoch=4)  # two steps: fine
    for _ in range(199):
        scheduler.optimizer.step()
        scheduler.step()


CUDA_HERE = torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_a_device_this_machine_lacks_is_one_line_and_makes_no_run_folder(tmp_path: Path) -> None:
    """Issue 18: ``train --device cuda`` on a CPU build printed ``module 'torch._C' has no attribute
    '_cuda_setDevice'`` as a traceback, after making the run folder."""
    data = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    missing = "cuda" if not CUDA_HERE else f"cuda:{CUDA_HERE}"
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tiniest", "train", "--data", str(data), "--output", str(run), "--device", missing]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"tiniest train: error: device '{missing}' is not available: ") and "available: cpu" in line
    assert not run.exists()


@pytest.mark.slow
def test_train_runs_on_the_device_asked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=4, test_per_class=1)
    flags = ["--epochs", "1", "--batch-size", "20", "--limit-test", "4"]
    for device in ("cpu", *(("cuda",) if CUDA_HERE else ())):
        assert train(data, tmp_path / device, *flags, "--device", device) == 0
        where = "cuda:0" if device == "cuda" else "cpu"  # a bare cuda: the GPU of the torchrun rank
        assert f"1 process(es) on {where}); test scored each epoch; run folder" in capsys.readouterr().out
        assert load_checkpoint(tmp_path / device / "checkpoint.pt")["epoch"] == 1


@pytest.mark.skipif(not CUDA_HERE, reason="no CUDA device here (torch.cuda.is_available() is False)")
def test_a_torchrun_rank_without_its_gpu_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    monkeypatch.setenv("LOCAL_RANK", str(CUDA_HERE))  # one process more than there are GPUs
    assert train(data, tmp_path / "run", "--device", "cuda") == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"tiniest train: error: device 'cuda:{CUDA_HERE}' is not available: ")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ issue 21: fine-tuning, held-out data, moved data

QUICK = ["--epochs", "1", "--batch-size", "16", "--limit-train", "32", "--limit-test", "6"]


@pytest.mark.slow
def test_init_starts_from_the_published_weights_with_a_new_head_for_other_classes(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--init DEFAULT`` on 3 classes: the trunk is the published one, ``fc`` the run's seeded new head."""
    from tiniest.weights import TiniestWeights, load_weights

    monkeypatch.setenv("TINIEST_WEIGHTS_DIR", str(shared_checkpoint.parent))  # the published checkpoint, offline
    published = load_weights("DEFAULT").state_dict
    data = make_dataset(tmp_path / "data", classes=("ant", "bee", "cow"))
    # a learning rate so small that one epoch leaves the starting weights where they were
    assert train(data, tmp_path / "ft", *QUICK, "--init", "DEFAULT", "--lr", "1e-12", "--warmup", "0") == 0
    assert train(data, tmp_path / "scratch", *QUICK, "--lr", "1e-12", "--warmup", "0") == 0
    tuned = load_checkpoint(tmp_path / "ft" / "checkpoint.pt")
    scratch = load_checkpoint(tmp_path / "scratch" / "checkpoint.pt")
    release = TiniestWeights.DEFAULT.release
    assert tuned["init"] == {"name": "CIFAR10_V1", "sha256": release.sha256, "verified": True, "head": "new",
                             "classes": list(TiniestWeights.DEFAULT.meta["categories"]),
                             "hf_repo_id": release.where["huggingface"]["repo_id"], "dataset": release.meta["dataset"]}
    assert scratch["init"] is None
    for name, tensor in published.items():
        if name.startswith("fc."):  # the new head: the seeded initialisation a run from scratch has
            assert tuned["model"][name].shape[0] == 3
            assert torch.allclose(tuned["model"][name], scratch["model"][name], atol=1e-6), name
        else:
            assert torch.allclose(tuned["model"][name], tensor, atol=1e-6), name
            assert not torch.allclose(scratch["model"][name], tensor, atol=1e-3), name


@pytest.mark.slow
def test_init_from_a_run_folder_keeps_the_head_of_the_same_classes_and_refuses_other_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", classes=("ant", "bee"))
    assert train(data, tmp_path / "first", *QUICK, "--seed", "1") == 0
    first = torch.load(tmp_path / "first" / "model.pt", weights_only=True)
    assert train(data, tmp_path / "second", *QUICK, "--init", str(tmp_path / "first"), "--lr", "1e-12",
                 "--warmup", "0") == 0
    second = load_checkpoint(tmp_path / "second" / "checkpoint.pt")
    assert second["init"]["name"] == "model.pt" and second["init"]["head"] == "kept"
    assert not second["init"]["verified"] and "hf_repo_id" not in second["init"]
    for name, tensor in first.items():  # head included: the same classes in the same order
        assert torch.allclose(second["model"][name], tensor, atol=1e-6), name
    assert "starting from model.pt" in capsys.readouterr().out

    # weights that are not Tiniest's trunk, or no weights at all: one line, no run folder left behind
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    assert train(data, tmp_path / "third", *QUICK, "--init", str(tmp_path / "foreign.pt")) == 1
    assert "expected Tiniest weights, whose fc.weight has shape (classes, 80)" in capsys.readouterr().err
    torch.save({k: v for k, v in first.items() if k != "l6.fc2.weight"}, tmp_path / "trunkless.pt")
    assert train(data, tmp_path / "third", *QUICK, "--init", str(tmp_path / "trunkless.pt")) == 1
    assert "does not fit Tiniest: expected its 88 tensors, got 87; 1 missing (l6.fc2.weight)" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train(data, tmp_path / "third", *QUICK, "--init", str(tmp_path / "empty")) == 1
    assert "is a folder without model.pt" in capsys.readouterr().err
    assert not (tmp_path / "third").exists()
    assert train(data, tmp_path / "second", "--resume", "--init", "DEFAULT") == 1
    assert "a new run starts from; a resumed run (--resume) continues" in capsys.readouterr().err


@pytest.mark.slow
def test_a_split_folder_as_root_is_never_scored_as_its_own_test_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: ``--data data/trainonly/train`` trained and "tested" on the same 180 images."""
    data = make_dataset(tmp_path / "trainonly", train_per_class=10, test_per_class=0, classes=("a", "b", "c"))
    assert train(data / "train", tmp_path / "run", "--epochs", "1", "--batch-size", "10") == 1
    err = capsys.readouterr().err
    assert "30 of the 30 test images are training images too (the same files)" in err and "--val-fraction" in err
    assert not (tmp_path / "run").exists()
    # a root without test/ says how to hold images out
    assert train(data, tmp_path / "run", "--epochs", "1", "--batch-size", "10") == 1
    assert "without a test split: hold out part of train with val_fraction, --val-fraction" in capsys.readouterr().err
    # test/ made of links to train/'s files (other names, same files): refused as well
    for name in ("a", "b", "c"):
        (data / "test" / name).mkdir(parents=True, exist_ok=True)  # make_dataset left it empty
        os.link(data / "train" / name / "000.png", data / "test" / name / "other.png")
    assert train(data, tmp_path / "run", "--epochs", "1", "--batch-size", "10") == 1
    assert "3 of the 3 test images are training images too" in capsys.readouterr().err

    assert train(data / "train", tmp_path / "run", "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.2") == 0
    out = capsys.readouterr().out
    assert "validation accuracy (averaged weights)" in out and "of 6 " in out
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    made_by = "val_fraction 0.2 of the train split, stratified by class, seed 0"
    assert checkpoint["held_out"] == {"split": "validation", "images": 6, "made_by": made_by}
    assert checkpoint["train_images"] == 24 and checkpoint["split_sizes"] == {"train": 24, "validation": 6}
    assert checkpoint["recipe"]["val_fraction"] == 0.2
    assert [record["split"] for record in checkpoint["history"]] == ["validation"]
    assert train(data / "train", tmp_path / "run", "--resume", "--val-fraction", "0.3") == 1
    assert "val_fraction: checkpoint 0.2, asked 0.3" in capsys.readouterr().err


@pytest.mark.slow
def test_a_test_split_is_recorded_as_such(tiny_data: Path, tmp_path: Path) -> None:
    assert train(tiny_data, tmp_path / "run", *QUICK) == 0
    held_out = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["held_out"]
    assert held_out == {"split": "test", "images": 6,
                        "made_by": "the dataset's test split, a fixed random 6 of its 20 images"}


@pytest.mark.slow
def test_resume_accepts_the_same_files_moved_and_says_where_a_lost_path_came_from(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    flags = ["--epochs", "2", "--batch-size", "16", "--limit-train", "32", "--limit-test", "6"]
    assert train(tiny_data, tmp_path / "straight", *flags) == 0
    assert train(tiny_data, tmp_path / "run", *flags, "--stop-after", "1") == 0
    out = capsys.readouterr().out
    assert f"continue with: tiniest train --output {tmp_path / 'run'} --resume" in out  # the hint names the run
    moved = tmp_path / "staged" / "data"
    shutil.move(tiny_data, moved)
    assert main(["train", "--output", str(tmp_path / "run"), "--resume", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"the data folder {str(tiny_data)!r}, recorded in {tmp_path / 'run' / 'checkpoint.pt'}, is gone" in err
    assert "give its new place as data" in err
    # other files at the new place (one image re-encoded: another size) are refused ...
    image = moved / "train" / "airplane" / "000.png"
    original = image.read_bytes()
    image.write_bytes(original + b"\0")
    assert train(moved, tmp_path / "run", "--resume") == 1
    assert "hold different files in train (names or sizes)" in capsys.readouterr().err
    image.write_bytes(original)
    # ... the same files are accepted, and the run ends as an uninterrupted one
    assert train(moved, tmp_path / "run", "--resume") == 0
    resumed = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert resumed["data"] == str(moved)
    assert_same_state(straight["ema"], resumed["ema"], "ema")


def stop_after_the_first_of_two_epochs(data: Path, run: Path, *, limit_train: int) -> None:
    """A short run interrupted half-way, as a resume test needs."""
    assert train(data, run, "--epochs", "2", "--batch-size", "16", "--limit-train", str(limit_train),
                 "--limit-test", "4", "--stop-after", "1") == 0  # fmt: skip


@pytest.mark.slow
def test_a_run_resumed_with_another_process_count_says_the_result_will_differ(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-process run resumed with 1 process continues, with one warning line (it silently differed before)."""
    run = tmp_path / "run"
    stop_after_the_first_of_two_epochs(tiny_data, run, limit_train=32)
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    checkpoint["history"][-1]["world_size"] = 2  # as torchrun --nproc-per-node 2 records it
    torch.save(checkpoint, run / "checkpoint.pt")
    from tiniest.training.loop import ProcessCountWarning

    with pytest.warns(ProcessCountWarning) as warned:
        assert train(tiny_data, run, "--resume") == 0
    assert [str(w.message) for w in warned] == [
        "resuming a run of 2 process(es) with 1: it continues, but its weights will differ from an uninterrupted "
        "run's (each process draws its own share and augmentation); resume with 2 for the exact result"
    ]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_unreadable_images_stop_the_run_unless_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=8, test_per_class=2, classes=("a", "b"))
    (data / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    assert train(data, tmp_path / "run", "--epochs", "1", "--batch-size", "8") == 1
    assert "broken.png" in capsys.readouterr().err
    assert train(data, tmp_path / "run", "--epochs", "1", "--batch-size", "8", "--skip-unreadable") == 0
    captured = capsys.readouterr()
    assert "tiniest train: warning: skipped 1 unreadable image file(s), the first: " in captured.err
    assert "broken.png" in captured.err
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["train_images"] == 16


def test_a_disagreeing_no_augment_is_named_as_the_setting_it_is(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    stop_after_the_first_of_two_epochs(tiny_data, run, limit_train=16)
    assert train(tiny_data, run, "--resume", "--no-augment") == 1
    err = capsys.readouterr().err
    assert "augment: checkpoint True, asked False" in err and "--augment" not in err


def test_every_recipe_field_has_its_flag() -> None:
    """The flags that set the recipe are derived from :class:`Recipe`: a new field without a flag fails here."""
    from dataclasses import fields

    from tiniest.commands import build_parser

    parser = build_parser()
    train_parser = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    dests = {action.dest for action in train_parser._actions}
    assert {field.name for field in fields(Recipe)} <= dests


def test_a_failed_rank_other_than_0_is_told_with_the_last_line_it_wrote(tmp_path: Path) -> None:
    """The launcher's one line: rank 0's output is on the console already; another rank's last line is quoted from
    the stderr.log torch keeps beside its error file (unless a signal ended it, or it wrote nothing)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from tiniest.commands.train import _failure

    def failed(rank: int, exitcode: int, stderr: str | None) -> str:
        logs = tmp_path / f"{rank}{exitcode}{stderr is None}{len(stderr or '')}"
        folder = logs / "run-id_x1" / "attempt_0" / str(rank)  # as torch's DefaultLogsSpecs lays it out
        folder.mkdir(parents=True)
        if stderr is not None:
            (folder / "stderr.log").write_text(stderr)
        # the worker wrote no torch error file (tiniest's don't), so the failure knows no file of it
        failure = ProcessFailure(local_rank=rank, pid=4242, exitcode=exitcode, error_file=str(folder / "error.json"))
        return _failure(ChildFailedError("tiniest-train", {rank: failure}), 2, logs)

    log = "epoch 1/4 ...\ntiniest train: error: the data of rank 1 \x1b[2Jvanished\n\n"
    assert failed(1, 1, log) == "process 1 of 2 failed (exit code 1): the data of rank 1 \\x1b[2Jvanished"
    assert failed(1, -9, log) == "process 1 of 2 failed (killed by SIGKILL)"
    assert failed(1, 1, None) == "process 1 of 2 failed (exit code 1)"
    assert failed(1, 1, "\n \n") == "process 1 of 2 failed (exit code 1)"
    assert failed(0, 1, log) == "process 0 of 2 failed (exit code 1); its output is above"


def test_a_run_logged_to_a_file_gets_no_progress_bars(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress on (no --no-progress), stderr no terminal: no carriage-return updates of the decoding or epoch bars."""
    args = ["train", "--data", str(tiny_data), "--output", str(tmp_path / "run"), *QUICK]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out and "\r" not in captured.err, captured.err
