"""Command line: ``tiniest <command>`` / ``python -m tiniest <command>``.

Each command lives in its own module of this package, named as the command, exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; it turns the arguments into keyword arguments
of library functions. A module is imported only when its command is chosen or help is shown.

A :class:`tiniest.errors.TiniestError` or an ``OSError`` (a missing file, a folder that cannot be
written) is printed as one line, ``tiniest CMD: error: ...``; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tiniest import __version__
from tiniest.errors import TiniestError
from tiniest.fast.allocator import keep_freed_memory

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the command owns its process: let batches reuse freed activation memory
    try:
        return int(args.run(args))
    except (TiniestError, OSError) as error:
        print(f"tiniest {args.command}: error: {error}", file=sys.stderr)
        return 1
