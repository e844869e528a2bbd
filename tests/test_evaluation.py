"""``tiniest evaluate``: the model card's report reproduced on ../shared, and the command on small fixtures."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiniest
from tests.test_data import make_cifar_batches
from tiniest.commands import main
from tiniest.data import LabeledImages, load_split
from tiniest.evaluation import evaluate
from tiniest.weights import CLASSES, TiniestWeights

ROOT = Path(__file__).resolve().parent.parent
# the speed line: one rate (the model's), the other steps in seconds
RATE = (
    r"^inference \d+ images/s on \d+ threads \([\d.]+ s\); "
    r"decoding the data [\d.]+ s, loading the model [\d.]+ s, [\d.]+ s in all$"
)


def card_report(model_card: str) -> list[str]:
    """The lines of the classification report in the model card's code block."""
    block = re.search(r"```\n(\s+precision\s+recall.*?weighted avg[^\n]*)\n```", model_card, re.S)
    assert block is not None, "the model card has no classification report block"
    return block.group(1).splitlines()


@pytest.mark.slow
def test_evaluate_on_the_shared_test_set_prints_the_model_cards_report(
    shared_cifar10: Path, shared_checkpoint: Path, model_card: str, tmp_path: Path
) -> None:
    """The full 10,000-image run, through the command line as a user runs it (optimized model, cold cache)."""
    out = tmp_path / "report.json"
    env = {**os.environ, "TINIEST_WEIGHTS": str(shared_checkpoint)}
    command = [sys.executable, "-m", "tiniest", "evaluate", "--data", str(shared_cifar10), "--split", "test"]
    done = subprocess.run([*command, "--json", str(out)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert "evaluating" not in done.stderr, "no progress bar where stderr is no terminal"
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    expected = card_report(model_card)
    start = printed.index(expected[0])
    assert printed[start : start + len(expected)] == expected, "\n".join(printed)
    (rate,) = re.findall(r"^.*images/s.*$", done.stdout, re.M)  # one line, one rate
    assert re.fullmatch(RATE, rate), rate

    record = json.loads(out.read_text())
    pinned = TiniestWeights.DEFAULT.meta["metrics"]["CIFAR-10 test"]
    assert (record["correct"], record["images"], record["accuracy"]) == (
        pinned["correct"],
        pinned["total"],
        pinned["accuracy"],
    )
    confusion = np.array(record["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10_000 and np.trace(confusion) == pinned["correct"]
    assert (confusion.sum(axis=1) == 1000).all()
    for line in expected[2:12]:  # every number of every class row, to the card's 3 decimals
        name, precision, recall, f1, support = line.split()
        row = record["report"][name]
        assert [f"{row[k]:.3f}" for k in ("precision", "recall", "f1-score")] == [precision, recall, f1]
        assert row["support"] == int(support)
    assert round(record["report"]["macro avg"]["f1-score"], 3) == pinned["macro_f1"]
    assert set(record["seconds"]) == {"model", "data", "inference"} and record["images_per_second"] > 0
    assert record["model"] == "optimized"


def tiny_folder(root: Path, classes: tuple[str, ...]) -> None:
    rng = np.random.default_rng(7)
    for name in classes:
        (root / "test" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "test" / name / f"{i}.png")


def three_classes_and_a_random_model(root: Path) -> tuple[LabeledImages, torch.nn.Module]:
    """Six pictures of cat, dog and ship, and a seeded random initialisation of the model."""
    tiny_folder(root, ("cat", "dog", "ship"))
    torch.manual_seed(0)
    return load_split(root, "test"), tiniest.tiniest(weights=None)


def test_evaluate_maps_dataset_classes_onto_the_models(tmp_path: Path) -> None:
    data, model = three_classes_and_a_random_model(tmp_path)
    result = evaluate(model, data, batch_size=4)
    assert result.labels.tolist() == [3, 3, 5, 5, 8, 8]
    with torch.no_grad():
        expected = model(tiniest.preprocess(data.images)).argmax(dim=1)
    assert torch.equal(result.predictions, expected)
    assert int(result.confusion.sum()) == 6 and result.correct == int((expected == result.labels).sum())
    assert result.report["cat"]["support"] == 2
    present = {CLASSES[i] for i in {*result.labels.tolist(), *result.predictions.tolist()}}
    assert set(result.report) - {"accuracy", "macro avg", "weighted avg"} == present, "only classes present"
    assert "weighted avg" in result.text()

    unknown = LabeledImages(data.images, data.labels, ("cat", "dog", "unicorn"))
    with pytest.raises(ValueError, match=r"do not match the model's .*\['unicorn'\]"):
        evaluate(model, unknown)
    with pytest.raises(ValueError, match="empty dataset"):
        evaluate(model, LabeledImages(data.images[:0], data.labels[:0], data.classes))


def test_cli_on_cifar_batches_writes_every_number(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    batches = make_cifar_batches(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    out = tmp_path / "out.json"
    args = ["evaluate", "--data", str(tmp_path / "cifar-10-batches-py"), "--json", str(out), "--no-progress"]
    assert main([*args, "--eager"]) == 0
    eager = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "eager model" in printed and "confusion matrix" in printed
    assert len(re.findall(RATE, printed, re.M)) == 1 and printed.count("images/s") == 1, printed
    assert eager["images"] == 4 and eager["classes"] == list(CLASSES)
    confusion = eager["confusion_matrix"]
    assert sum(map(sum, confusion)) == 4
    labels = batches["test_batch"][1]
    assert [sum(row) for row in eager["confusion_matrix"]] == [labels.count(i) for i in range(10)]
    matrix = np.array(confusion)
    present = {name for i, name in enumerate(CLASSES) if matrix[i].sum() or matrix[:, i].sum()}
    assert set(eager["report"]) == {*present, "accuracy", "macro avg", "weighted avg"}
    assert sorted(eager["absent_classes"]) == sorted(set(CLASSES) - present)
    assert eager["model"] == "eager" and eager["seconds"]["inference"] > 0


def test_cli_reports_bad_data_clearly(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))  # the class names come with the weights
    tiny_folder(tmp_path, ("cat", "unicorn"))
    assert main(["evaluate", "--data", str(tmp_path), "--no-progress", "--batch-size", "0"]) == 1
    assert "positive batch size, got 0" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path), "--no-progress"]) == 1
    assert "do not match the model's" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(tmp_path / "nowhere"), "--no-progress"]) == 1
    assert "expected a dataset folder" in capsys.readouterr().err


def test_a_one_class_folder_is_not_averaged_over_absent_classes(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_folder(tmp_path, ("cat",))
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    out = tmp_path / "out.json"
    assert main(["evaluate", "--data", str(tmp_path), "--no-progress", "--eager", "--json", str(out)]) == 0
    record, printed = json.loads(out.read_text()), capsys.readouterr().out
    confusion = np.array(record["confusion_matrix"])
    present = [name for i, name in enumerate(CLASSES) if confusion[i].sum() or confusion[:, i].sum()]
    assert "cat" in present and len(present) < 10
    assert sorted(record["report"]) == sorted([*present, "accuracy", "macro avg", "weighted avg"])
    macro = sum(record["report"][name]["recall"] for name in present) / len(present)
    assert record["report"]["macro avg"]["recall"] == pytest.approx(macro)
    absent = [name for name in CLASSES if name not in present]
    assert record["absent_classes"] == absent
    assert f"not in the report (in neither the labels nor the predictions): {', '.join(absent)}" in printed


def test_unreadable_files_stop_evaluate_unless_skipped(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_folder(tmp_path, ("cat", "dog"))
    (tmp_path / "test" / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    args = ["evaluate", "--data", str(tmp_path), "--no-progress", "--eager"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert re.search(r"cannot read image file '.*broken\.png'.*--skip-unreadable leaves such files out", error)

    out = tmp_path / "out.json"
    assert main([*args, "--skip-unreadable", "--json", str(out)]) == 0
    printed, record = capsys.readouterr().out, json.loads(out.read_text())
    assert "4 images" in printed and "skipped 1 unreadable image file:" in printed
    assert re.search(r"^  cannot read image file '.*broken\.png'", printed, re.M)
    assert record["images"] == 4 and sum(map(sum, record["confusion_matrix"])) == 4
    assert [Path(entry["file"]).name for entry in record["skipped"]] == ["broken.png"]
    assert "cannot read image file" in record["skipped"][0]["error"]
    assert main(args) == 1, "the default stays strict, even with the skipping run cached"


def test_the_header_says_which_model_actually_ran(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No compiler (as when the package cannot be built, e.g. without numpy): not 'optimized model'."""
    tiny_folder(tmp_path, ("cat", "ship"))
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    monkeypatch.setenv("TINIEST_NO_COMPILE", "1")
    out = tmp_path / "out.json"
    assert main(["evaluate", "--data", str(tmp_path), "--no-progress", "--json", str(out)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("4 images, tiniest.optimize's module run eagerly (not compiled)")
    assert "optimized model" not in header and json.loads(out.read_text())["model"] == "optimized-uncompiled"


def test_progress_bars_go_to_a_terminal_and_not_to_a_log_file(tmp_path: Path, shared_checkpoint: Path) -> None:
    """tqdm's carriage-return updates (the decoding and evaluating bars) draw on a terminal; a log file gets none."""
    tiny_folder(tmp_path, ("cat", "dog"))
    command = [sys.executable, "-m", "tiniest", "evaluate", "--data", str(tmp_path), "--eager"]
    env = {**os.environ, "TINIEST_WEIGHTS": str(shared_checkpoint)}
    logged = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=300)  # bytes: \r kept as \r
    assert logged.returncode == 0 and b"\r" not in logged.stderr, logged.stderr
    main_end, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing in 0 columns
    shown = subprocess.run(command, env={**env, "TINIEST_CACHE": str(tmp_path / "cache")}, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=child_end, timeout=300)  # fmt: skip
    os.close(child_end)
    written = b""
    with contextlib.suppress(OSError):  # EIO: the terminal's other end is closed, all of it read
        while chunk := os.read(main_end, 65536):
            written += chunk
    os.close(main_end)
    assert shown.returncode == 0 and b"decoding test" in written and b"evaluating" in written, written


@pytest.mark.slow
def test_without_the_images_extra_one_line_names_it(tmp_path: Path) -> None:
    tiny_folder(tmp_path, ("cat",))
    prelude = "import sys; sys.modules['PIL'] = None\nfrom tiniest.commands import main\n"
    for argv in (["evaluate", "--data", str(tmp_path)], ["evaluate", "--data", str(tmp_path), "--no-progress"]):
        script = prelude + f"sys.exit(main({argv!r}))"
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and 'pip install "tiniest[images]"' in lines[0], done.stderr


CUDA_HERE = torch.cuda.device_count() if torch.cuda.is_available() else 0
MISSING = "cuda" if not CUDA_HERE else f"cuda:{CUDA_HERE}"  # a device this machine lacks
needs_cuda = pytest.mark.skipif(not CUDA_HERE, reason="no CUDA device here (torch.cuda.is_available() is False)")


def test_evaluate_runs_on_the_device_asked_for(tmp_path: Path) -> None:
    data, model = three_classes_and_a_random_model(tmp_path)
    expected = evaluate(model, data, batch_size=4)
    on_cpu = evaluate(model, data, batch_size=4, device="cpu")
    assert torch.equal(on_cpu.predictions, expected.predictions) and on_cpu.report == expected.report
    for device, says in ((MISSING, "is not available: "), ("gpu", "is not a device name: "), ("meta", "is not one")):
        with pytest.raises(tiniest.errors.UsageError, match=r"^device '.*' " + says + r".*; available: cpu"):
            evaluate(model, data, device=device)
    assert next(model.parameters()).device == torch.device("cpu"), "a refused device moves nothing"


@needs_cuda
def test_on_cuda_evaluate_gives_the_cpu_answers(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_folder(tmp_path, ("cat", "dog", "ship"))
    data = load_split(tmp_path, "test")
    model = tiniest.tiniest(weights=str(shared_checkpoint))
    expected = evaluate(model, data)
    on_gpu = evaluate(model, data, device="cuda")
    assert next(model.parameters()).device.type == "cuda" and on_gpu.predictions.device.type == "cpu"
    assert torch.equal(on_gpu.predictions, expected.predictions)

    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    out = tmp_path / "out.json"
    assert main(["evaluate", "--data", str(tmp_path), "--no-progress", "--device", "cuda", "--json", str(out)]) == 0
    said = "tiniest evaluate: the fast path (tiniest.optimize) is CPU-only; on cuda the plain model runs"
    assert said in capsys.readouterr().err.splitlines()
    record = json.loads(out.read_text())
    assert (record["device"], record["model"]) == ("cuda", "eager") and record["correct"] == expected.correct


def test_cli_device_is_checked_before_the_data_and_recorded(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    assert main(["evaluate", "--data", str(tmp_path / "nowhere"), "--no-progress", "--device", MISSING]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"tiniest evaluate: error: device '{MISSING}' is not available: ")
    tiny_folder(tmp_path, ("cat", "ship"))
    out = tmp_path / "out.json"
    args = ["evaluate", "--data", str(tmp_path), "--no-progress", "--eager", "--device", "cpu", "--json", str(out)]
    assert main(args) == 0
    assert json.loads(out.read_text())["device"] == "cpu"


def test_top_level_evaluate_takes_weights_and_a_dataset_folder(
    tmp_path: Path, shared_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tiniest.evaluate(weights_or_model, data, split=...)``: the numbers the command prints, from one call."""
    tiny_folder(tmp_path, ("cat", "dog", "ship"))
    broken = tmp_path / "test" / "cat" / "broken.png"
    broken.write_bytes(b"not a png")
    assert "evaluate" in dir(tiniest) and tiniest.evaluate is evaluate
    result = tiniest.evaluate(shared_checkpoint, tmp_path, split="test", skip_unreadable=True)
    model = tiniest.tiniest(weights=shared_checkpoint)
    data = load_split(tmp_path, "test", skip_unreadable=True)
    same = tiniest.evaluate(model, data)
    assert torch.equal(result.predictions, same.predictions) and result.report == same.report
    assert [file for file, _ in result.skipped] == [str(broken)] and same.skipped == result.skipped
    out = tmp_path / "out.json"
    command = ["evaluate", "--data", str(tmp_path), "--weights", str(shared_checkpoint), "--eager", "--no-progress"]
    assert main([*command, "--skip-unreadable", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["correct"], record["report"]) == (result.correct, result.report)
    assert f"accuracy {result.accuracy:.4f} ({result.correct}/6)" in capsys.readouterr().out
    with pytest.raises(tiniest.errors.UsageError, match=r"split=.train. is about reading a dataset folder"):
        tiniest.evaluate(model, data, split="train")
    assert tiniest.evaluate(None, data).report != {}, "weights=None: a random initialisation, as tiniest()"
