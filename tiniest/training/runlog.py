"""What a training run reports: one record per epoch, as a JSON-lines log, a console line and a plot."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiniest.storage import save_atomically

__all__ = ["console_line", "plot_curves", "read_log", "write_log"]

LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"


def write_log(run_dir: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Rewrite the whole log from the checkpoint's history, so log and checkpoint always agree."""
    target = run_dir / LOG_NAME
    save_atomically(target, "".join(json.dumps(record, sort_keys=True) + "\n" for record in history).encode())
    return target


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def console_line(record: dict[str, Any]) -> str:
    return (
        f"epoch {record['epoch']}/{record['epochs']}  loss {record['loss']:.4f}  lr {record['lr']:.5f}  "
        f"{record.get('split', 'test')} accuracy (averaged weights) {100 * record['test_accuracy']:.2f}% of "
        f"{record['test_total']}  "
        f"{record['images_per_second']:.0f} img/s  ({record['train_seconds']:.1f} s train, "
        f"{record['eval_seconds']:.1f} s test)"
    )


def plot_curves(run_dir: Path, history: Sequence[dict[str, Any]]) -> Path:
    """``curves.png``: loss, learning rate, test accuracy and speed against the epoch.

    Drawn on a figure of its own, without pyplot, so that the caller's backend is left alone.
    """
    from matplotlib.figure import Figure

    epochs = [record["epoch"] for record in history]
    panels = [
        ("loss", "training loss (mix-up)", 1.0),
        ("lr", "learning rate (end of epoch)", 1.0),
        ("test_accuracy", f"{history[-1].get('split', 'test')} accuracy of the averaged weights (%)", 100.0),
        ("images_per_second", "training images per second", 1.0),
    ]
    figure = Figure(figsize=(10, 7), layout="constrained")
    axes = figure.subplots(2, 2)
    for axis, (key, title, scale) in zip(axes.flat, panels, strict=True):
        axis.plot(epochs, [record[key] * scale for record in history], marker="." if len(epochs) < 50 else None)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    target = run_dir / PLOT_NAME
    save_atomically(target, buffer.getvalue())
    return target
