"""Command line: ``tiniest <command>`` / ``python -m tiniest <command>``.

Each command lives in its own module of this package, named as the command, exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; it turns the arguments into keyword arguments
of library functions. A module is imported only when its command is chosen or help is shown.

A :class:`tiniest.errors.TiniestError` or an ``OSError`` (a missing file, a folder that cannot be
written) is printed as one line, ``tiniest CMD: error: ...``; anything else is a bug and keeps its
traceback. tiniest's own warnings are printed the same way, ``tiniest CMD: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tiniest import __version__
from tiniest.errors import TiniestError, TiniestWarning
from tiniest.fast.allocator import keep_freed_memory
from tiniest.names import printable

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = ("export", "predict", "evaluate", "train", "release")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiniest", description="The Tiniest CIFAR-10 classifier.")
    parser.add_argument("--version", action="version", version=f"tiniest {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the command owns its process: let batches reuse freed activation memory
    try:
        with _one_line_warnings(args.command):
            return int(args.run(args))
    except (TiniestError, OSError) as error:
        print(f"tiniest {args.command}: error: {printable(str(error))}", file=sys.stderr)
        return 1
