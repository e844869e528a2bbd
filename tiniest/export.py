"""``tiniest export``: a state_dict checkpoint to the release artifact (and other formats)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tiniest.artifact import sha256_hex
from tiniest.release import Release, TiniestWeights
from tiniest.weights import build_artifact, save_atomically

HELP = "turn a state_dict checkpoint into the release file (safetensors with metadata)"


def release_meta(checkpoint: bytes, release: Release, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The pinned metadata for the published checkpoint; for another one, its own metrics."""
    meta = dict(release.meta)
    if sha256_hex(checkpoint) != release.source_sha256:
        meta["metrics"] = metrics if metrics is not None else {"note": "not measured"}
    elif metrics is not None:
        raise ValueError("--metrics is for new checkpoints; the published one carries its pinned metrics")
    return meta


def export_safetensors(
    checkpoint_path: Path,
    output_dir: Path,
    *,
    metrics: dict[str, Any] | None = None,
    filename: str | None = None,
) -> Path:
    """Write the release artifact for ``checkpoint_path`` into ``output_dir``; return its path."""
    release = TiniestWeights.DEFAULT.release
    checkpoint = checkpoint_path.read_bytes()
    artifact = build_artifact(checkpoint, release_meta(checkpoint, release, metrics), origin=str(checkpoint_path))
    if filename is None:
        published = sha256_hex(checkpoint) == release.source_sha256
        filename = release.filename if published else f"tiniest-{sha256_hex(artifact)[:8]}.safetensors"
    target = output_dir / filename
    save_atomically(target, artifact)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a state_dict .pt (read with weights_only=True) or .safetensors")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write into")
    parser.add_argument("--metrics", type=Path, help="JSON file of measured metrics, for a new checkpoint")
    parser.add_argument("--filename", help="output file name (default: the release name or tiniest-<sha8>)")


def run(args: argparse.Namespace) -> int:
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    target = export_safetensors(args.checkpoint, args.output, metrics=metrics, filename=args.filename)
    data = target.read_bytes()
    print(f"{target}\nsha256 {sha256_hex(data)}\nsize {len(data)} bytes")
    return 0
