"""What the ``export`` and ``release`` commands share: reading ``--metrics``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tiniest.errors import UsageError


def read_metrics(path: Path | None) -> dict[str, Any] | None:
    """The JSON object in the ``--metrics`` file, or None without one."""
    if path is None:
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UsageError(f"--metrics {path}: expected a JSON object ({error})") from None
    if not isinstance(metrics, dict):
        raise UsageError(f"--metrics {path}: expected a JSON object, got {type(metrics).__name__}")
    return metrics

