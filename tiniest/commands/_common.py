"""What commands share: ``--device``, ``--weights`` and ``--eager`` (predict, evaluate), checking a file to
write (``--json``, ``--plot``), reading ``--metrics`` (export, release)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiniest.errors import UsageError
from tiniest.storage import check_output_folder

if TYPE_CHECKING:
    from tiniest.weights import NotGiven

# (what imports torch is imported where it is used: adding the arguments, for --help, imports none)


def add_device_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--device``, checked by ``tiniest.devices.resolve_device`` where it is used."""
    parser.add_argument("--device", help=f"where the model runs: cpu, cuda, cuda:1, mps, xpu ... (default: {default})")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights`` (read with ``chosen_weights``) and ``--eager``."""
    parser.add_argument("--weights", help="weights file or URL (default: the pinned release, or $TINIEST_WEIGHTS)")
    parser.add_argument("--eager", action="store_true", help="run the plain model instead of tiniest.optimize's")


def chosen_weights(args: argparse.Namespace) -> str | NotGiven:
    """``--weights``, else nothing named: ``$TINIEST_WEIGHTS`` where it is set, else the default release."""
    from tiniest.weights import NOT_GIVEN

    return NOT_GIVEN if args.weights is None else str(args.weights)


def check_output_file(path: Path, flag: str) -> None:
    """Refuse, before any work, a file to write that is a folder or whose folder cannot be made or written."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; expected a file name")
    check_output_folder(path.absolute().parent, f"{flag} {path}: the folder")


def check_plot_file(path: Path) -> None:
    """Refuse, before any work, a ``--plot`` that could not be drawn or written: no matplotlib, a format it
    cannot write, a folder that cannot be written."""
    from tiniest import plots

    plots.require_matplotlib("--plot")
    plots.file_format(path)
    check_output_file(path, "--plot")


def read_metrics(path: Path | None) -> dict[str, Any] | None:
    """The JSON object in the ``--metrics`` file, its scores checked (before anything is written), or None."""
    from tiniest.weights.metadata import check_metrics

    if path is None:
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UsageError(f"--metrics {path}: expected a JSON object ({error})") from None
    return check_metrics(metrics, f"--metrics {path}")

