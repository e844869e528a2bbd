"""Command line: ``tiniest <command>`` / ``python -m tiniest <command>``.

Each command lives in its own module of this package, named as the command, exposing
``add_arguments(parser)`` and ``run(args) -> int``; it turns the arguments into keyword arguments
of library functions. Its one-line help is in ``COMMANDS``, so that ``tiniest --help`` lists
every command while only the chosen command's module is imported.

A ``tiniest.errors.TiniestError`` or an ``OSError`` (a missing file, a folder that cannot be
written) is printed as ``tiniest CMD: error: ...``, one line but for the weights-not-found error, which
keeps its lines (indented, folded to the terminal); anything else is a bug and keeps its traceback.
tiniest's own warnings are printed the same way, ``tiniest CMD: warning: ...``, and Ctrl-C ends any
command with ``tiniest CMD: interrupted`` and the shell's code 130.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import textwrap
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

from tiniest import __version__
from tiniest.errors import TiniestError, TiniestWarning, UsageError, WeightsNotFoundError
from tiniest.names import printable

__all__ = ["COMMANDS", "INTERRUPTED", "build_parser", "main"]

# each command's module (tiniest.commands.<name>) and its one-line help
COMMANDS: dict[str, str] = {
    "export": "turn a state_dict checkpoint into the release file (safetensors with metadata) or a portable program",
    "predict": "classify image files: class names with probabilities",
    "evaluate": "accuracy, classification report and confusion matrix on a dataset split",
    "train": "train Tiniest with the published recipe (resumable; several processes with --nproc-per-node)",
    "release": "build the release asset, the Hugging Face model folder and the release record from a run or "
    "checkpoint",
}
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C
# errors whose messages tiniest writes as several lines (the sources tried, then what to do)
_WIDTH = 100  # the widest an error's line is folded to where the terminal is wider or unknown
_WRITTEN_AS_LINES: tuple[type[BaseException], ...] = (WeightsNotFoundError,)


def build_parser(loaded: Collection[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The command line; the commands in ``loaded`` get their arguments (their modules are imported), and every
    command is listed with its help. Building it imports no torch (``tiniest --help`` answers at once): a command's
    module imports what needs torch when it runs."""
    parser = argparse.ArgumentParser(prog="tiniest", description="The Tiniest CIFAR-10 classifier.")
    parser.add_argument("--version", action="version", version=f"tiniest {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        if name in loaded:
            module = importlib.import_module(f"{__name__}.{name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


@contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Print tiniest's warnings as ``tiniest CMD: warning: ...``, without the source line Python adds."""
    default = warnings.formatwarning

    def formatwarning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        text = printable(str(message))  # names in it cannot drive the terminal or forge a line
        if issubclass(category, TiniestWarning):
            return f"tiniest {command}: warning: {text}\n"
        return default(text, category, filename, lineno, line)

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = default


def _error_text(command: str, error: BaseException) -> str:
    """``tiniest CMD: error: ...``, each line ``printable``.

    The errors tiniest writes as lines (``_WRITTEN_AS_LINES``) keep their line breaks, the further lines
    indented, so that a list reads as a list and nothing inside can pass for a line of tiniest's own; in any
    other message a line break can only come from a name (a file's), and is shown escaped.
    """
    if not isinstance(error, _WRITTEN_AS_LINES):
        return f"tiniest {command}: error: {printable(str(error))}"
    head, *rest = (printable(line) for line in str(error).split("\n"))
    width = max(60, min(_WIDTH, shutil.get_terminal_size((_WIDTH, 24)).columns - 1))
    lines = _folded(f"tiniest {command}: error: {head}", "", width)
    for line in rest:
        text = line.lstrip(" ")
        lines += _folded(text, "  " + line[: len(line) - len(text)], width)
    return "\n".join(lines)


def _folded(text: str, indent: str, width: int) -> list[str]:
    """``text`` after ``indent``, folded to ``width`` at spaces alone (a URL or a path stays whole, to copy), its
    further lines indented two more (a hanging indent: where one line of the message ends shows)."""
    wrapped = textwrap.wrap(
        text, width, initial_indent=indent, subsequent_indent=indent + "  ",
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    return wrapped or [indent]


def _refuse_empty_data(args: argparse.Namespace) -> None:
    """``--data ""`` is almost always ``--data "$TINIEST_DATA"`` with the variable unset: say so, not that ``''``
    is no dataset."""
    if getattr(args, "data", None) is not None and not args.data.strip():
        raise UsageError(
            "--data is empty: did you set TINIEST_DATA (or the variable you passed)? Expected a dataset folder "
            "holding train/ and test/, a cifar-10-batches-py folder, or hf://OWNER/NAME"
        )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # the command is the first word that is not an option: tiniest's own options (--help, --version) take no value
    chosen = next((word for word in words if not word.startswith("-")), None)
    args = build_parser(loaded=[chosen] if chosen is not None else []).parse_args(words)
    from tiniest.fast.allocator import keep_freed_memory  # (tiniest.fast imports torch: only now)

    keep_freed_memory()  # the command owns its process: let batches reuse freed activation memory
    try:
        with _one_line_warnings(args.command):
            _refuse_empty_data(args)
            return int(args.run(args))
    except (TiniestError, OSError) as error:
        print(_error_text(args.command, error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a failure to explain with a traceback
        print(f"\ntiniest {args.command}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
