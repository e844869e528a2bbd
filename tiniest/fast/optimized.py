"""``tiniest.optimize``: an inference-only Tiniest with the same predictions, faster on CPU.

Two layers, each exact up to float rounding:

* :class:`FastTiniest` rewrites the network for inference: activations stay NHWC end to end
  (no layout copies around LayerNorm), each LayerNorm's affine is folded into the following
  1x1 convolution (which becomes a plain matrix product), the 3x3 and 7x7 depthwise branches
  are one depthwise convolution (the 3x3 kernel zero-padded to 7x7), and the residual scale is
  one ``addcmul``.
* :func:`optimize` runs that module compiled ahead of time by AOTInductor (C++ code, weights
  frozen as constants), built once per machine and cached on disk (:mod:`tiniest.fast.compiled`),
  with a symbolic batch so that no batch size triggers a recompilation. Without a C++
  compiler, or if compilation fails, it keeps the eager :class:`FastTiniest` and warns.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from tiniest.fast.compiled import Runner, find_compiler, load_cached, load_or_build
from tiniest.model import Block, Tiniest

# Large batches run in chunks of this many images: a chunk's activations (about 6 MB at the
# widest layer) stay close to the cores between layers. Measured at batch 2,000 on 2 cores, chunks
# of 15-16 run 5-15% faster than chunks of 8 or 32, and 1.5x faster than whole batches of 256.
# It stays below 16: torch picks convolution kernels differently from batch 16 on, so a package
# compiled at 32 is declared for 16-32 images only; at 15 it is declared for 2-15 (export's lower
# bound; a single image runs the same size-generic code, tested against the eager model).
CHUNK = 15
# Below this many images a run does not wait for a package to be built. Measured on 2 cores: a
# build takes about 30 s and saves about 1.3 ms per image against the eager FastTiniest (about
# 1,000 against 440 images/s), so 10,000 images (CIFAR-10's test split) repay it by their second
# run, 20,000 within the first; a picture or a small folder is done before a build would be.
BUILD_MIN_IMAGES = 10_000

__all__ = [
    "BUILD_MIN_IMAGES",
    "CHUNK",
    "FastBlock",
    "FastTiniest",
    "OptimizedTiniest",
    "compiler_available",
    "optimize",
    "worth_building",
]


def _fold_ln_into_conv(ln: nn.LayerNorm, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of ``conv(gamma * n + beta)`` as one matrix product of the normalized ``n``.

    Computed in float64 (on the weights' device; MPS has no float64) so that folding adds no
    rounding beyond the final cast.
    """
    wide = torch.float32 if conv.weight.device.type == "mps" else torch.float64
    weight = conv.weight.detach().to(wide).flatten(1)
    gamma, beta = ln.weight.detach().to(wide), ln.bias.detach().to(wide)
    bias = conv.bias.detach().to(wide) if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return (weight * gamma).float(), (bias + weight @ beta).float()


def _const(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone().float()


def _dilated_by_phases(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The depthwise 7x7 convolution with dilation 3 ('same' padding) as an undilated one.

    Each of the 3x3 sampling phases of the image is its own small image (space-to-batch);
    oneDNN's undilated depthwise kernel is about 6x faster here than its dilated one.
    """
    n, c, h, w = x.shape
    qh, qw = -(-h // 3), -(-w // 3)
    phases = F.pad(x, (0, 3 * qw - w, 0, 3 * qh - h)).view(n, c, qh, 3, qw, 3)
    phases = phases.permute(0, 3, 5, 1, 2, 4).reshape(n * 9, c, qh, qw)
    out = F.conv2d(phases, weight, bias, padding=3, groups=c).view(n, 3, 3, c, qh, qw)
    return out.permute(0, 3, 4, 1, 5, 2).reshape(n, c, 3 * qh, 3 * qw)[:, :, :h, :w]


def _tanh_exp(v: torch.Tensor) -> torch.Tensor:
    """``v * tanh(exp(v))`` as ``v - 2v / (exp(2 exp(v)) + 1)``, about 3x cheaper once compiled.

    The vectorized ``tanh`` is the costly part of the gating; this identity needs two ``exp`` and
    a division, saturates cleanly (``exp`` overflows to inf, the fraction to 0), and differs by a
    few ulps of ``v``.
    """
    return v - 2 * v / (torch.exp(2 * torch.exp(v)) + 1)


class FastBlock(nn.Module):
    """A :class:`tiniest.Block` on NHWC tensors with LayerNorm's affine folded into ``fc1``."""

    mixer_w: torch.Tensor
    mixer_b: torch.Tensor
    dilated_w: torch.Tensor
    dilated_b: torch.Tensor
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor
    rs: torch.Tensor

    def __init__(self, block: Block) -> None:
        super().__init__()
        part = block.dwconv1.in_channels
        self.part, self.dim, self.eps = part, 4 * part, block.ln.ln.eps
        self.hidden = block.fc2.in_channels
        # 3x3 and 7x7 branches as one depthwise 7x7: the 3x3 kernel sits in the centre, zeros around it.
        mixer = block.dwconv2.weight.new_zeros(2 * part, 1, 7, 7)
        mixer[:part, :, 2:5, 2:5] = block.dwconv1.weight.detach()
        mixer[part:] = block.dwconv2.weight.detach()
        self.register_buffer("mixer_w", mixer)
        self.register_buffer("mixer_b", _const(torch.cat([block.dwconv1.bias, block.dwconv2.bias])))  # type: ignore[list-item]
        self.register_buffer("dilated_w", _const(block.dwconv3.weight))
        self.register_buffer("dilated_b", _const(block.dwconv3.bias))  # type: ignore[arg-type]
        fc1_w, fc1_b = _fold_ln_into_conv(block.ln.ln, block.fc1)
        self.register_buffer("fc1_w", fc1_w)
        self.register_buffer("fc1_b", fc1_b)
        self.register_buffer("fc2_w", _const(block.fc2.weight.flatten(1)))
        self.register_buffer("fc2_b", _const(block.fc2.bias))  # type: ignore[arg-type]
        self.register_buffer("rs", _const(block.rs.flatten()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, H, W, C)`` contiguous; returns the same layout."""
        p = self.part
        planar = x.permute(0, 3, 1, 2)  # a channels-last NCHW view, no copy
        mixed = F.conv2d(planar[:, p : 3 * p], self.mixer_w, self.mixer_b, padding=3, groups=2 * p)
        pooled = F.avg_pool2d(planar[:, 3 * p :], 3, stride=1, padding=1)
        dilated = _dilated_by_phases(pooled, self.dilated_w, self.dilated_b)
        tokens = torch.cat([planar[:, :p], mixed, dilated], dim=1).permute(0, 2, 3, 1)
        value, gate = F.linear(F.layer_norm(tokens, (self.dim,), eps=self.eps), self.fc1_w, self.fc1_b).split(
            self.hidden, dim=-1
        )
        hidden = _tanh_exp(value) * gate
        return torch.addcmul(F.linear(hidden, self.fc2_w, self.fc2_b), x, self.rs)


class FastTiniest(nn.Module):
    """Inference-only rewrite of :class:`tiniest.Tiniest` (NHWC, folded); same logits up to rounding.

    Built on the model's device.
    """

    def __init__(self, model: Tiniest) -> None:
        super().__init__()
        model = copy.deepcopy(model).float().eval()
        self.labels = model.labels  # the class names of the outputs, as on the model
        self.conv1 = model.conv1.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ln1 = model.ln1.ln
        self.stage1 = nn.Sequential(*(FastBlock(block) for block in (model.l1, model.l2, model.l3)))
        self.dsconv = model.dsconv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ln2 = model.ln2.ln
        self.stage2 = nn.Sequential(*(FastBlock(block) for block in (model.l4, model.l5, model.l6)))
        self.fc = model.fc
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        x = self.stage1(self.ln1(x))
        x = self.dsconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.stage2(self.ln2(x))
        return self.fc(x.mean(dim=(1, 2)))


def compiler_available() -> bool:
    """Whether TorchInductor's CPU backend can build code here (it needs a C++ compiler)."""
    if os.environ.get("TINIEST_NO_COMPILE") == "1":
        return False
    return bool(find_compiler())


class OptimizedTiniest(nn.Module):
    """What :func:`optimize` returns: ``forward`` runs the compiled package, or the eager fallback.

    Inputs are copied once into a channels-last float32 tensor and cut into chunks of at most
    :data:`CHUNK` images, the batch range the package was built for. Outputs are inference
    tensors (no autograd).
    """

    def __init__(self, fast: FastTiniest, compile: bool, *, build: bool = True) -> None:
        super().__init__()
        self.fast = fast
        self.labels = fast.labels
        self._compiled: Runner | None = None
        if compile:
            try:
                self._compiled = load_or_build(fast, CHUNK) if build else load_cached(fast, CHUNK)
            except Exception as error:  # a failed build must not cost the user their predictions
                warnings.warn(
                    f"tiniest.optimize: no usable AOTInductor package ({type(error).__name__}: {error}); "
                    "using the eager optimized model",
                    RuntimeWarning,
                    stacklevel=3,
                )

    @property
    def compiled(self) -> bool:
        """Whether calls run the AOTInductor package (``False``: eager :class:`FastTiniest`)."""
        return self._compiled is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = self._compiled or self.fast
        with torch.inference_mode():
            x = x.to(torch.float32).clone(memory_format=torch.channels_last)
            if x.shape[0] <= CHUNK:
                return run(x)
            return torch.cat([run(chunk) for chunk in x.split(CHUNK)])  # each chunk stays channels-last


def worth_building(expected_images: int) -> bool:
    """Whether a run over ``expected_images`` images should wait for a package build (see :data:`BUILD_MIN_IMAGES`)."""
    return expected_images >= BUILD_MIN_IMAGES


@torch.no_grad()
def optimize(model: nn.Module, *, compile: bool | None = None, build: bool = True) -> OptimizedTiniest:
    """An inference-only copy of ``model`` (a :class:`tiniest.Tiniest`) with the same predictions, faster.

    Args:
        model: the model to speed up; it is copied, not modified.
        compile: use the AOTInductor package. Default: when a C++ compiler is found,
            ``TINIEST_NO_COMPILE`` is not ``1`` and the model is on the CPU (the package is
            CPU code; on another device the eager :class:`FastTiniest` stays there, with a warning).
            Its parallel loops keep the thread count of the build (``torch.get_num_threads()``,
            part of the cache key).
        build: whether to build the package if this machine has none (announced in one log line:
            about 30 s on 2 cores). Later ``optimize`` calls, in any process, load it from
            :func:`tiniest.fast.compiled.compiled_cache_dir` in milliseconds. ``False``: use a
            package already built, else run eagerly; pass ``worth_building(number_of_images)``.

    Returns:
        An eval-mode float32 module on ``model``'s device, mapping ``(N, 3, 32, 32)`` to
        ``(N, num_classes)`` logits.
    """
    if not isinstance(model, Tiniest):
        raise TypeError(f"optimize() expects a tiniest.Tiniest, got {type(model).__name__}")
    device = model.conv1.weight.device
    if device.type != "cpu" and compile is not False:
        warnings.warn(
            f"tiniest.optimize: the compiled fast path is CPU-only; the model stays on {device} "
            "and runs the folded module uncompiled",
            stacklevel=3,  # the caller of the no_grad wrapper
        )
        compile = False
    if compile is None:
        compile = compiler_available()
    fast = FastTiniest(model)
    return OptimizedTiniest(fast, compile=compile, build=build).eval()
