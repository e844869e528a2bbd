"""What commands share: ``--device``, and reading ``--metrics`` (export, release)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tiniest.errors import UsageError
from tiniest.weights.metadata import check_metrics


def add_device_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--device``, checked by :func:`tiniest.devices.resolve_device` where it is used."""
    parser.add_argument("--device", help=f"where the model runs: cpu, cuda, cuda:1, mps, xpu ... (default: {default})")


def read_metrics(path: Path | None) -> dict[str, Any] | None:
    """The JSON object in the ``--metrics`` file, its scores checked (before anything is written), or None."""
    if path is None:
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UsageError(f"--metrics {path}: expected a JSON object ({error})") from None
    return check_metrics(metrics, f"--metrics {path}")

