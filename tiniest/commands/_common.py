"""What commands share: ``--device``; reading ``--metrics`` and making the release file (export, release)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from tiniest.errors import UsageError
from tiniest.hub import check_architecture
from tiniest.weights import TiniestWeights, build_artifact
from tiniest.weights.artifact import sha256_hex


def add_device_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--device``, checked by :func:`tiniest.devices.resolve_device` where it is used."""
    parser.add_argument("--device", help=f"where the model runs: cpu, cuda, cuda:1, mps, xpu ... (default: {default})")


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


def artifact_bytes(
    checkpoint: bytes, state_dict: dict[str, torch.Tensor], meta: dict[str, Any], *, origin: str
) -> bytes:
    """The release file of ``checkpoint``: as is if it is the pinned release already, else built with ``meta``.

    Weights that are not Tiniest's are refused first (:func:`tiniest.hub.check_architecture`).
    """
    if sha256_hex(checkpoint) == TiniestWeights.DEFAULT.release.sha256:
        return checkpoint
    check_architecture(state_dict, origin)
    return build_artifact(checkpoint, meta, origin=origin)
