"""Command line: ``tiniest <command>`` / ``python -m tiniest <command>``.

Each command lives in its own module exposing ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; the module is imported only when its command is chosen or help is shown.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tiniest import __version__
from tiniest.allocator import keep_freed_memory

COMMANDS: dict[str, str] = {
    "export": "tiniest.export",
    "predict": "tiniest.predict",
    "evaluate": "tiniest.evaluate",
    "train": "tiniest.train",
    "release": "tiniest.publish",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiniest", description="The Tiniest CIFAR-10 classifier.")
    parser.add_argument("--version", action="version", version=f"tiniest {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the command owns its process: let batches reuse freed activation memory
    try:
        return int(args.run(args))
    except (OSError, ValueError, RuntimeError) as error:
        print(f"tiniest {args.command}: error: {error}", file=sys.stderr)
        return 1
