"""The command line's error policy: one line for tiniest's own errors and for files, a traceback for bugs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiniest.commands import COMMANDS, build_parser, main


def test_a_tiniest_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "cat.png", "--top-k", "0"]) == 1  # refused before any image is read
    err = capsys.readouterr().err
    assert err.splitlines() == ["tiniest predict: error: expected top_k between 1 and 10, got 0"]


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pt"
    assert main(["export", str(missing), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("tiniest export: error: ") and str(missing) in err


def test_bad_metrics_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{accuracy: 0.9", encoding="utf-8")
    assert main(["export", str(tmp_path / "any.pt"), "-o", str(tmp_path), "--metrics", str(metrics)]) == 1
    assert f"tiniest export: error: --metrics {metrics}: expected a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [ValueError, RuntimeError, KeyError])
def test_a_bug_keeps_its_traceback(bug: type[Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a TiniestError or an OSError is a bug: it propagates, not a one-line message."""

    def broken(*args: object, **kwargs: object) -> Path:
        raise bug("a bug inside the export")

    monkeypatch.setattr("tiniest.export.export", broken)
    with pytest.raises(bug, match="a bug inside the export"):
        main(["export", str(tmp_path / "any.pt"), "--output", str(tmp_path / "out")])


def test_weights_not_found_reads_as_lines_in_a_terminal(tmp_path: Path) -> None:
    """Issue 29: offline with empty caches, ``tiniest predict x.png`` printed one line full of literal ``\\n``;
    now the sources tried and the advice are lines, indented under ``tiniest predict: error:``, naming the flag."""
    picture = tmp_path / "x.png"
    picture.write_bytes(_gray_png())
    command = Path(sys.executable).parent / "tiniest"  # the console script a user types
    run = subprocess.run(
        [str(command), "predict", str(picture)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "TINIEST_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    lines = run.stderr.rstrip("\n").split("\n")
    assert lines[0].startswith("tiniest predict: error: could not find the weights"), run.stderr
    assert "\\n" not in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert len(lines) >= 7 and all(line.startswith("  ") for line in lines[1:]), run.stderr
    sources = [line.split(":")[0].strip() for line in lines if line.startswith("    - ")]
    assert sources == ["- local", "- cache", "- github", "- huggingface", "- original"], run.stderr
    assert "--weights PATH on the command line" in " ".join(run.stderr.split()), run.stderr
    assert all(len(line) <= 100 or " " not in line.strip() for line in lines), "folded at spaces, URLs whole"


@pytest.mark.slow
def test_tiniest_warnings_are_one_line(tmp_path: Path) -> None:
    """Each warning is one line named after the command, without Python's source line: a bare safetensors file is
    not the pinned release, and it names no classes."""
    from safetensors.torch import save_file

    import tiniest

    weights = tmp_path / "mine.safetensors"
    save_file(tiniest.Tiniest().state_dict(), str(weights))
    picture = tmp_path / "gray.png"
    picture.write_bytes(_gray_png())
    run = subprocess.run(
        [sys.executable, "-m", "tiniest", "predict", "--weights", str(weights), str(picture)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, run.stderr
    assert all(line.startswith("tiniest predict: warning: ") for line in lines), run.stderr
    assert not any(line.startswith(" ") or "warnings.warn" in line or ".py:" in line for line in lines), run.stderr
    assert lines[0].startswith(f"tiniest predict: warning: {weights} is not the pinned release")
    assert lines[1].startswith(f"tiniest predict: warning: {weights} carries no class names")


def _gray_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("command", ["predict", "evaluate", "train"])
def test_a_device_this_machine_lacks_is_one_line_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18: ``train --device cuda`` on a CPU build printed torch's AttributeError as a traceback."""
    import torch

    from tiniest.devices import resolve_device
    from tiniest.errors import UsageError

    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(UsageError) as expected:
        resolve_device(missing)
    argv = {
        "predict": ["predict", str(tmp_path / "x.png")],
        "evaluate": ["evaluate", "--data", str(tmp_path / "data")],
        "train": ["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run")],
    }[command]
    assert main([*argv, "--device", missing]) == 1
    assert capsys.readouterr().err.splitlines() == [f"tiniest {command}: error: {expected.value}"]
    assert not (tmp_path / "run").exists(), "no empty run folder"


# what a terminal acts on: an ANSI escape (clear screen, colour), CR, a newline that forges a line, a bidi override
HOSTILE = ("a\x1b[2Jb", "c\rd", "e\nforged.png:cat", "f\u202eg")
ESCAPED = ("a\\x1b[2Jb", "c\\rd", "e\\nforged.png:cat", "f\\u202eg")


def _assert_inert(text: str) -> None:
    """Only newlines and printable characters: nothing a terminal would act on."""
    assert all(char == "\n" or char.isprintable() for char in text), repr(text)


def test_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """Class names (from the weights), file names and the weights' path in predict's answers, errors and warnings."""
    import tiniest

    folder = tiniest.Tiniest(4, labels=list(HOSTILE)).save_pretrained(tmp_path / f"weights{HOSTILE[0]}")
    picture = tmp_path / f"{HOSTILE[2]}.png"
    picture.write_bytes(_gray_png())
    missing = tmp_path / f"{HOSTILE[1]}.png"
    run = subprocess.run(
        [sys.executable, "-m", "tiniest", "predict", "--eager", "--top-k", "4",
         "--weights", str(folder / "model.safetensors"), str(picture), str(missing)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )  # fmt: skip
    assert run.returncode == 1, run.stderr  # the missing file is reported; the readable one answered
    _assert_inert(run.stdout)
    _assert_inert(run.stderr)
    lines = run.stdout.splitlines()
    assert lines[0] == f"{tmp_path}/{ESCAPED[2]}.png:" and len(lines) == 5  # the picture, then its 4 classes
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(ESCAPED)
    errors = run.stderr.splitlines()
    assert len(errors) == 2 and ESCAPED[0] in errors[0] and "warning" in errors[0]
    assert errors[1].startswith("tiniest predict: error: ") and ESCAPED[1] in errors[1]


def test_class_names_reach_the_report_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate's header, report and confusion matrix show a dataset's class names escaped, one row each."""
    import tiniest
    from tests.test_evaluation import tiny_folder

    classes = tuple(name.replace("/", "_") for name in HOSTILE)
    tiny_folder(tmp_path / "data", classes)
    folder = tiniest.Tiniest(4, labels=sorted(classes)).save_pretrained(tmp_path / "weights")
    weights = str(folder / "model.safetensors")
    args = ["evaluate", "--data", str(tmp_path / "data"), "--eager", "--no-progress", "--weights", weights]
    with pytest.warns(tiniest.UnverifiedWeightsWarning):
        assert main(args) == 0
    out = capsys.readouterr().out
    _assert_inert(out)
    report = out.split("\n\n")[2].splitlines()  # header, the report's rows, the averages
    assert sorted(row.split()[0] for row in report) == sorted(ESCAPED)
    matrix = out.split("confusion matrix (rows: true class, columns: predicted class)\n")[1].splitlines()[1:5]
    assert sorted(row.split()[0] for row in matrix) == sorted(ESCAPED)


def test_an_error_naming_a_file_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{HOSTILE[0]}{HOSTILE[2]}").write_text("mine")
    assert main(["release", str(tmp_path / "any.pt"), "--output", str(out)]) == 1  # refused: the folder is not empty
    err = capsys.readouterr().err
    _assert_inert(err)
    assert len(err.splitlines()) == 1 and f"already holds {ESCAPED[0]}{ESCAPED[2]}:" in err


def test_only_the_chosen_command_is_imported() -> None:
    """``tiniest --help`` lists every command with its help; running one imports its module alone."""
    code = (
        "import contextlib, sys\n"
        "from tiniest.commands import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "main(['predict', 'cat.png', '--top-k', '0'])\n"
        "print(sorted(name for name in sys.modules if name.startswith('tiniest.commands.')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "['tiniest.commands._common', 'tiniest.commands.predict']"
    listed = " ".join(run.stdout.split())
    for name, text in build_parser()._subparsers._group_actions[0].choices.items():
        assert f"{name} {' '.join(text.description.split())}" in listed, name


@pytest.mark.parametrize("words", [["--help"], ["--version"], *([name, "--help"] for name in COMMANDS)])
def test_help_imports_no_torch(words: list[str]) -> None:
    """``tiniest --help`` and ``tiniest CMD --help`` answer at once: torch (seconds to import) only when a command runs.

    (``export --help`` lists the formats from ``tiniest.export_formats``, which imports no torch.)
    """
    code = (
        "import contextlib, sys\n"
        "from tiniest.commands import main\n"
        "with contextlib.suppress(SystemExit):\n"
        f"    main({words!r})\n"
        "print(sorted(name for name in ('torch', 'numpy', 'PIL') if name in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: tiniest" in run.stdout or "tiniest 1." in run.stdout
    assert run.stdout.splitlines()[-1] == "[]", "imported for --help"


def test_progress_bars_are_turned_off_by_one_flag_in_every_command() -> None:
    """``evaluate --quiet`` and ``train --no-progress`` named one thing twice (issue 29): one spelling now."""
    subparsers = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    flags = {name: {o for a in sub._actions for o in a.option_strings} for name, sub in subparsers.items()}
    assert {name for name, options in flags.items() if "--no-progress" in options} == {"evaluate", "train"}
    assert not any("--quiet" in options for options in flags.values())


def test_predict_help_says_what_the_model_sees(capsys: pytest.CaptureFixture[str]) -> None:
    """In the help itself: a pip install has no docs/ folder to be sent to."""
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "docs/" not in text and "EXIF orientation" in text and "resized straight to 32x32" in text


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_ctrl_c_ends_a_command_with_one_line(command: str, tmp_path: Path) -> None:
    """Ctrl-C while the weights download (a server that accepts and never answers): one line and code 130."""
    import signal
    import socket

    from tests.test_evaluation import tiny_folder

    picture = tmp_path / "gray.png"
    picture.write_bytes(_gray_png())
    tiny_folder(tmp_path / "data", ("a", "b"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(120)
        weights = f"http://127.0.0.1:{listener.getsockname()[1]}/mine.safetensors"
        arguments = [str(picture)] if command == "predict" else ["--data", str(tmp_path / "data"), "--no-progress"]
        process = subprocess.Popen(
            [sys.executable, "-m", "tiniest", command, "--weights", weights, "--eager", *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**os.environ, "TINIEST_TIMEOUT": "600"},
        )  # fmt: skip
        try:
            connection, _ = listener.accept()  # the command is inside its download: well past start-up
            with connection:
                process.send_signal(signal.SIGINT)
                _, err = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"tiniest {command}: interrupted", err


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_evaluate_refuses_a_report_it_cannot_write_before_any_work(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report file under a file (not a folder) is refused before the data are read: nothing evaluated first."""
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    report = blocker / ("report.json" if flag == "--json" else "matrix.png")
    assert main(["evaluate", "--data", str(tmp_path / "no-data"), "--eager", "--no-progress", flag, str(report)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"tiniest evaluate: error: {flag} {report}: the folder {blocker} is a file; "
                                         "expected a folder (created if absent)"]


def test_evaluate_refuses_a_plot_format_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    args = ["evaluate", "--data", str(tmp_path / "no-data"), "--no-progress", "--plot", str(tmp_path / "matrix.foo")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tiniest evaluate: error: {tmp_path / 'matrix.foo'}: expected a picture file ending in ")
    assert ".png" in err and err.rstrip().endswith("got .foo")


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE (a file-size limit: a full disk stood in for)")
@pytest.mark.parametrize("flag", ["--json", "--plot"])
@pytest.mark.slow
def test_a_report_is_written_whole_or_the_old_one_kept(flag: str, tmp_path: Path) -> None:
    """A disk that fills while the report is written (a file-size limit) leaves the earlier report as it was."""
    import resource

    import tiniest
    from tests.test_evaluation import tiny_folder

    if flag == "--plot":
        pytest.importorskip("matplotlib")
    tiny_folder(tmp_path / "data", ("a", "b"))
    folder = tiniest.Tiniest(2, labels=["a", "b"]).save_pretrained(tmp_path / "weights")
    report = tmp_path / ("report.json" if flag == "--json" else "matrix.png")
    command = [sys.executable, "-m", "tiniest", "evaluate", "--data", str(tmp_path / "data"), "--eager",
               "--no-progress", "--weights", str(folder / "model.safetensors"), flag, str(report)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)  # decodes, caches the data
    assert first.returncode == 0 and report.stat().st_size > 1000, first.stderr
    earlier = report.read_bytes()

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    full = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, preexec_fn=small_disk)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.splitlines()[-1].startswith("tiniest evaluate: error: ") and "too large" in full.stderr
    assert report.read_bytes() == earlier
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["data", "weights", report.name])


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_an_empty_data_names_the_unset_variable(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 29: ``--data "$TINIEST_DATA"`` with the variable unset said ``'': expected an image-folder dataset``."""
    argv = [command, "--data", "", *(["--output", str(tmp_path / "run")] if command == "train" else ["--no-progress"])]
    assert main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"tiniest {command}: error: --data is empty: did you set TINIEST_DATA"), line
    assert not (tmp_path / "run").exists()
