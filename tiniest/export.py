"""Tiniest weights as files for other programs: the safetensors release file, ONNX, TorchScript, torch.export.

``FORMATS`` (``tiniest.export_formats``, which imports no torch) is the one registry of formats: the
command line's choices and the file suffixes come from it; each program format has its writer here.
The safetensors release file is the default and its bytes are pinned
in ``release.json``. The other formats are programs that run without this package.

Shapes, the same in every program: input ``image``, ``[batch, 3, height, width]`` float32 (NCHW; the size the
weights' preprocessing states, 32x32 for the published ones), any
batch of 1 or more (no upper bound); output ``logits``, ``[batch, classes]``. Other image sizes are
refused (by ONNX Runtime's and torch.export's own shape checks, and by a check scripted into the
TorchScript module): the weights were trained on 32x32 pictures and answer other sizes wrongly
without an error, so the resize belongs to the preprocessing.

Each program describes itself in its format's own metadata (ONNX ``metadata_props``, the
TorchScript and ``.pt2`` extra files), with the same JSON document, ``tiniest.json``
(``export_info``: the input contract, the class names, the weights' sha256 and file name,
tiniest's version, the licence and credit). The input contract reads: RGB pixels, resized to the
input size, ``x = (pixel / 255 - mean) / std``, channels first. Programs take the licence of the
weights they are made from: export a new ``.pt`` checkpoint as safetensors with a licence first,
then the program from that file.

ONNX goes through the torch.export-based exporter: the older TorchScript-based one turns the
dilated 'same' padding into an ``auto_pad`` that ONNX Runtime refuses.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tiniest import __version__
from tiniest.errors import UsageError
from tiniest.export_formats import FORMATS, Format
from tiniest.extras import require_extra
from tiniest.files import read_regular
from tiniest.model import Tiniest
from tiniest.storage import save_atomically
from tiniest.transforms import Preprocess, preprocess_for
from tiniest.weights import TiniestWeights
from tiniest.weights.artifact import build_artifact
from tiniest.weights.fetch import max_download_bytes
from tiniest.weights.formats import read_state_dict, sha256_hex
from tiniest.weights.loading import load_strictly, model_from_weights
from tiniest.weights.metadata import (
    ARCHITECTURE_CREDIT,
    UNKNOWN_LICENSE,
    checkpoint_meta,
    is_published,
)

__all__ = [
    "FORMATS",
    "INFO_KEY",
    "Format",
    "artifact_bytes",
    "check_architecture",
    "export",
    "export_info",
    "export_program",
    "export_safetensors",
    "load_model",
]

ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
INFO_KEY = "tiniest.json"  # the input contract and provenance (export_info), in every program's metadata

Writer = Callable[[Tiniest, Path, Mapping[str, str]], None]  # model, target, metadata documents by key


def check_architecture(state_dict: dict[str, torch.Tensor], origin: str = "weights") -> None:
    """Refuse a state_dict that is not Tiniest's (of any class count) before it becomes a release file."""
    fc = state_dict.get("fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.dim() == 2 else 10
    load_strictly(Tiniest(num_classes), state_dict, origin)


def artifact_bytes(
    checkpoint: bytes, state_dict: dict[str, torch.Tensor], meta: dict[str, Any], *, origin: str
) -> bytes:
    """The release file of ``checkpoint``: as is if it is the pinned release already, else built with ``meta``.

    Weights that are not Tiniest's are refused first (``check_architecture``).
    """
    if sha256_hex(checkpoint) == TiniestWeights.DEFAULT.release.sha256:
        return checkpoint
    check_architecture(state_dict, origin)
    return build_artifact(checkpoint, meta, origin=origin)


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
    checkpoint = _read_checkpoint(checkpoint_path)
    state_dict = read_state_dict(checkpoint, origin=str(checkpoint_path))
    meta = checkpoint_meta(checkpoint, state_dict, path=checkpoint_path, metrics=metrics, license=license)
    artifact = artifact_bytes(checkpoint, state_dict, meta, origin=str(checkpoint_path))
    if filename is None:
        suffix = FORMATS["safetensors"].suffix
        filename = release.filename if is_published(checkpoint) else f"tiniest-{sha256_hex(artifact)[:8]}{suffix}"
    target = output_dir / filename
    save_atomically(target, artifact)
    return target


def _read_checkpoint(path: Path) -> bytes:
    """The bytes of the weights file ``path``: a regular file (a FIFO would block for ever) of at most
    ``TINIEST_MAX_DOWNLOAD_MB``, the cap on weights from anywhere; an ``OSError`` saying which not."""
    return read_regular(path, max_download_bytes())


def load_model(checkpoint: bytes, origin: str) -> Tiniest:
    """The eval-mode model, with its class count, labels and metadata, of ``.pt`` or ``.safetensors`` bytes."""
    state_dict = read_state_dict(checkpoint, origin=origin)
    meta = checkpoint_meta(checkpoint, state_dict, path=Path(origin))
    return model_from_weights(Tiniest, state_dict, meta, origin=origin)


def program_stem(checkpoint: bytes) -> str:
    """``tiniest-cifar10-v1`` for the published checkpoint or release file, else ``tiniest-<sha8 of the file>``."""
    release = TiniestWeights.DEFAULT.release
    return Path(release.filename).stem if is_published(checkpoint) else f"tiniest-{sha256_hex(checkpoint)[:8]}"


def _input_policy(model: Tiniest) -> Preprocess:
    """The weights' preprocessing (the default contract if they state none); refused if this version cannot
    describe it (or it is not a mapping)."""
    return preprocess_for(model.meta)


def export_info(model: Tiniest, *, weights_file: str, sha256: str) -> dict[str, Any]:
    """What a program says of itself (``tiniest.json``): input contract, classes and provenance.

    ``weights_file`` is the name (no folder) of the file the program was made from, ``sha256`` its hash.
    """
    preprocess = _input_policy(model)
    meta = model.meta
    return {
        "model": meta.get("architecture", "Tiniest"),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, *preprocess.size],
            "dtype": "float32",
            "layout": "NCHW",
            "preprocessing": preprocess.contract,  # numbers: x = (pixel / 255 - mean) / std
        },
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(model.labels)], "classes": list(model.labels)},
        "weights": {"file": weights_file, "sha256": sha256},
        "license": meta.get("license", UNKNOWN_LICENSE),
        **{key: meta[key] for key in ("copyright",) if key in meta},
        "credit": meta.get("credit", ARCHITECTURE_CREDIT),
        "tiniest_version": __version__,
    }


def _example_input(model: Tiniest, batch: int = 2) -> torch.Tensor:
    """A batch in the model's input range; batch 2 keeps the exporters from specializing the batch to 1."""
    return _input_policy(model).random_input(batch, torch.Generator().manual_seed(0))


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    """Dimension 0 of ``forward``'s ``x`` is the batch, 1 or more; every other dimension is fixed."""
    return {"x": {0: torch.export.Dim("batch", min=1)}}


def write_onnx(model: Tiniest, target: Path, documents: Mapping[str, str]) -> None:
    """ONNX (opset 18, weights inside the file), ``documents`` in its ``metadata_props``."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
            program = torch.onnx.export(
                model,
                (_example_input(model),),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(_dynamic_batch()["x"],),  # by position: torch 2.6 renames keys after input_names
                opset_version=ONNX_OPSET,
                external_data=False,
                verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    if program is None:  # pragma: no cover - torch < 2.5 returns nothing for dynamo=True
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program; torch>=2.5 is needed")
    program.model.metadata_props.update(documents)
    program.save(str(target), external_data=False)


class _SizeChecked(nn.Module):
    """The model behind a check of the input's shape, so that TorchScript refuses other sizes as the others do."""

    def __init__(self, model: Tiniest, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.height, self.width = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.height or x.shape[3] != self.width:
            raise RuntimeError(
                f"expected an input of shape [batch, 3, {self.height}, {self.width}] (NCHW), got {list(x.shape)}"
            )
        logits: torch.Tensor = self.model(x)
        return logits


def write_torchscript(model: Tiniest, target: Path, documents: Mapping[str, str]) -> None:
    """TorchScript via ``torch.jit.script``, ``documents`` as extra files."""
    preprocess = _input_policy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        scripted = torch.jit.script(_SizeChecked(model, preprocess.size))
        torch.jit.save(scripted, str(target), _extra_files=dict(documents))


def write_exported_program(model: Tiniest, target: Path, documents: Mapping[str, str]) -> None:
    """A ``torch.export`` program (``.pt2``), ``documents`` as extra files."""
    with torch.no_grad():
        program = torch.export.export(model, (_example_input(model),), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(target), extra_files=dict(documents))


_WRITERS: dict[str, Writer] = {  # one for each program of FORMATS (a test holds them equal)
    "onnx": write_onnx,
    "torchscript": write_torchscript,
    "exported-program": write_exported_program,
}


def export_program(checkpoint_path: Path, output_dir: Path, fmt: str, *, filename: str | None = None) -> Path:
    """Write ``checkpoint_path`` as the program format ``fmt`` into ``output_dir``; return the program's path."""
    spec, write = FORMATS.get(fmt), _WRITERS.get(fmt)
    if spec is None or write is None:
        raise UsageError(f"program format: expected one of {', '.join(_WRITERS)}, got {fmt!r}")
    if spec.extra is not None:
        require_extra(spec.extra, *spec.modules, purpose=f"exporting to {fmt}")
    checkpoint = _read_checkpoint(checkpoint_path)
    model = load_model(checkpoint, str(checkpoint_path))
    info = export_info(model, weights_file=checkpoint_path.name, sha256=sha256_hex(checkpoint))
    documents = {INFO_KEY: json.dumps(info, sort_keys=True)}
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / (filename or program_stem(checkpoint) + spec.suffix)
    partial = target.with_name(target.name + ".partial" + spec.suffix)
    try:
        write(model, partial, documents)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def export(
    checkpoint_path: Path,
    output_dir: Path,
    fmt: str = "safetensors",
    *,
    filename: str | None = None,
    metrics: dict[str, Any] | None = None,
    license: str | None = None,
) -> Path:
    """Write the weights of ``checkpoint_path`` (a state_dict ``.pt`` or ``.safetensors``) as ``fmt``; return the path.

    ``metrics`` and ``license`` describe new weights in their release file, so they apply only to
    ``safetensors``; programs take them from the file they are made from.
    """
    if fmt == "safetensors":
        return export_safetensors(checkpoint_path, output_dir, metrics=metrics, license=license, filename=filename)
    if metrics is not None or license is not None:
        raise UsageError(f"metrics and license: expected only with the safetensors format, got them with {fmt!r}")
    return export_program(checkpoint_path, output_dir, fmt, filename=filename)
