"""``tiniest export``: a state_dict checkpoint to the release artifact, or to ONNX / TorchScript / torch.export.

The safetensors release file is the default and its bytes are pinned in ``release.json``. The
program formats run without this package; all have a dynamic batch dimension. ONNX goes
through the torch.export-based exporter: the older TorchScript-based one turns the dilated
'same' padding into an ``auto_pad`` that ONNX Runtime refuses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from tiniest.commands._common import artifact_bytes, read_metrics
from tiniest.errors import UsageError
from tiniest.model import Tiniest
from tiniest.storage import save_atomically
from tiniest.transforms import INPUT_SHIFT, INPUT_SIZE
from tiniest.weights import TiniestWeights
from tiniest.weights.artifact import read_state_dict, sha256_hex
from tiniest.weights.metadata import checkpoint_meta, is_published, model_from_weights

HELP = "turn a state_dict checkpoint into the release file (safetensors with metadata) or a portable program"

FORMATS = ("safetensors", "onnx", "torchscript", "exported-program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}
ONNX_OPSET = 18
MAX_BATCH = 65536
LABELS_KEY = "labels.json"  # the class names, in output order: ONNX metadata_props, TorchScript/.pt2 extra file


def export_safetensors(
    checkpoint_path: Path,
    output_dir: Path,
    *,
    metrics: dict[str, Any] | None = None,
    license: str | None = None,
    filename: str | None = None,
) -> Path:
    """Write the release artifact for ``checkpoint_path`` into ``output_dir``; return its path."""
    release = TiniestWeights.DEFAULT.release
    checkpoint = checkpoint_path.read_bytes()
    state_dict = read_state_dict(checkpoint, origin=str(checkpoint_path))
    meta = checkpoint_meta(checkpoint, state_dict, path=checkpoint_path, metrics=metrics, license=license)
    artifact = artifact_bytes(checkpoint, state_dict, meta, origin=str(checkpoint_path))
    if filename is None:
        filename = release.filename if is_published(checkpoint) else f"tiniest-{sha256_hex(artifact)[:8]}.safetensors"
    target = output_dir / filename
    save_atomically(target, artifact)
    return target


def load_model(checkpoint: bytes, origin: str) -> Tiniest:
    """The eval-mode model, with its class count and labels, of ``.pt`` or ``.safetensors`` bytes (no hash check)."""
    state_dict = read_state_dict(checkpoint, origin=origin)
    meta = checkpoint_meta(checkpoint, state_dict, path=Path(origin))
    return model_from_weights(Tiniest, state_dict, meta, origin=origin)


def program_stem(checkpoint: bytes) -> str:
    """``tiniest-cifar10-v1`` for the published checkpoint or release file, else ``tiniest-<sha8 of the file>``."""
    release = TiniestWeights.DEFAULT.release
    return Path(release.filename).stem if is_published(checkpoint) else f"tiniest-{sha256_hex(checkpoint)[:8]}"


def _labels_json(model: Tiniest) -> str:
    return json.dumps(list(model.labels))


def example_input(batch: int = 2) -> torch.Tensor:
    """A batch in the model's input range (RGB in [0, 1] minus 0.5); batch 2 keeps the exporters from specializing."""
    return torch.rand(batch, 3, *INPUT_SIZE, generator=torch.Generator().manual_seed(0)) + INPUT_SHIFT


def batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def export_onnx(model: Tiniest, target: Path) -> Path:
    """ONNX (opset 18, weights embedded) with input ``image`` ``[batch, 3, 32, 32]`` and output ``logits``."""
    import logging
    import warnings

    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
            program = torch.onnx.export(
                model,
                (example_input(),),
                dynamo=True,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes={"x": {0: batch_dim()}},
                opset_version=ONNX_OPSET,
                external_data=False,
                verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    if program is None:  # pragma: no cover - torch < 2.5 returns nothing for dynamo=True
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program; torch>=2.5 is needed")
    program.model.metadata_props[LABELS_KEY] = _labels_json(model)
    program.save(str(target), external_data=False)
    return target


def export_torchscript(model: Tiniest, target: Path) -> Path:
    """TorchScript via ``torch.jit.script`` (no batch size baked in); load with ``torch.jit.load``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(target), _extra_files={LABELS_KEY: _labels_json(model)})
    return target


def export_program(model: Tiniest, target: Path) -> Path:
    """A ``torch.export`` program (``.pt2``) with a dynamic batch; load with ``torch.export.load``."""
    with torch.no_grad():
        program = torch.export.export(model, (example_input(),), dynamic_shapes={"x": {0: batch_dim()}})
    torch.export.save(program, str(target), extra_files={LABELS_KEY: _labels_json(model)})
    return target


PROGRAM_EXPORTERS = {"onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program}


def export_format(checkpoint_path: Path, output_dir: Path, fmt: str, *, filename: str | None = None) -> Path:
    """Write ``checkpoint_path`` as ``fmt`` (one of :data:`FORMATS` other than safetensors) into ``output_dir``."""
    if fmt not in PROGRAM_EXPORTERS:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    checkpoint = checkpoint_path.read_bytes()
    model = load_model(checkpoint, str(checkpoint_path))
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / (filename or program_stem(checkpoint) + SUFFIXES[fmt])
    partial = target.with_name(target.name + ".partial" + SUFFIXES[fmt])
    try:
        PROGRAM_EXPORTERS[fmt](model, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a state_dict .pt (read with weights_only=True) or .safetensors")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to write into")
    parser.add_argument("--metrics", type=Path, help="JSON file of measured metrics, for a new checkpoint")
    parser.add_argument("--license", help="licence of a new checkpoint, for its metadata (default: unknown)")
    parser.add_argument("--filename", help="output file name (default: the release name or tiniest-<sha8>)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="safetensors",
        help="safetensors: the release file (default); onnx, torchscript, exported-program: a program with a "
        "dynamic batch dimension",
    )


def run(args: argparse.Namespace) -> int:
    if args.format == "safetensors":
        target = export_safetensors(
            args.checkpoint, args.output, metrics=read_metrics(args.metrics), license=args.license,
            filename=args.filename,
        )
    elif args.metrics or args.license:
        raise UsageError("--metrics and --license only apply to --format safetensors")
    else:
        target = export_format(args.checkpoint, args.output, args.format, filename=args.filename)
    data = target.read_bytes()
    print(f"{target}\nsha256 {sha256_hex(data)}\nsize {len(data)} bytes")
    return 0
