"""The export formats by name: file suffix, what loads the file, what it needs installed.

Apart from ``tiniest.export`` (which writes them, with torch) so that ``tiniest export --help``
lists them without importing torch. The formats other than ``safetensors`` are programs that run
without this package.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FORMATS", "Format"]


@dataclass(frozen=True)
class Format:
    """One export format: its file suffix, what loads it, and the pip extra that brings its ``modules``."""

    suffix: str
    loaded_by: str
    program: bool = True  # False: the release file, made from the checkpoint's bytes, not from a model
    extra: str | None = None
    modules: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {
    "safetensors": Format(".safetensors", "tiniest.tiniest(weights=PATH)", program=False),
    "onnx": Format(".onnx", "ONNX Runtime", extra="onnx", modules=("onnx", "onnxscript")),
    "torchscript": Format(".torchscript.pt", "torch.jit.load"),
    "exported-program": Format(".pt2", "torch.export.load"),
}
