"""``tiniest export``: a state_dict checkpoint to the release file, or to ONNX / TorchScript / torch.export.

The command reads its arguments; ``tiniest.export`` does the work (formats, shapes, metadata).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiniest.commands._common import read_metrics
from tiniest.export_formats import FORMATS


def _formats_help() -> str:
    kinds = [f"{name} ({spec.suffix}, for {spec.loaded_by})" for name, spec in FORMATS.items()]
    return (
        f"{kinds[0]}: the release file (default); {', '.join(kinds[1:])}: a program with a dynamic batch "
        "dimension that carries its input contract and provenance in its metadata"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a state_dict .pt (read with weights_only=True) or .safetensors")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write into")
    parser.add_argument("--metrics", type=Path, help="JSON file of measured metrics, for a new checkpoint")
    parser.add_argument("--license", help="licence of a new checkpoint, for its metadata (default: unknown)")
    parser.add_argument("--filename", help="output file name (default: the release name or tiniest-<sha8>)")
    parser.add_argument("--format", choices=list(FORMATS), default="safetensors", help=_formats_help())


def run(args: argparse.Namespace) -> int:
    from tiniest.export import export  # torch: imported to run, not for --help
    from tiniest.weights.formats import sha256_hex

    target = export(
        args.checkpoint, args.output, args.format,
        filename=args.filename, metrics=read_metrics(args.metrics), license=args.license,
    )  # fmt: skip
    data = target.read_bytes()
    print(f"{target}\nsha256 {sha256_hex(data)}\nsize {len(data)} bytes")
    return 0
