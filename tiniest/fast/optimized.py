"""``tiniest.optimize``: an inference-only Tiniest with the same predictions, faster on CPU.

Two layers, each exact up to float rounding:

* ``FastTiniest`` rewrites the network for inference: activations stay NHWC end to end
  (no layout copies around LayerNorm), each LayerNorm's affine is folded into the following
  1x1 convolution (which becomes a plain matrix product), the 3x3 and 7x7 depthwise branches
  are one depthwise convolution (the 3x3 kernel zero-padded to 7x7), and the residual scale is
  one ``addcmul``.
* ``optimize`` runs that module compiled ahead of time by AOTInductor (C++ code, weights
  frozen as constants), built once per machine and cached on disk (``tiniest.fast.compiled``),
  with a symbolic batch so that no batch size triggers a recompilation. Without a C++
  compiler, or if compilation fails, it keeps the eager ``FastTiniest`` and warns.

Its ``mode`` names what runs (``OptimizeMode``), one word per choice.
"""

from __future__ import annotations

import copy
import operator
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as hooks  # where the global forward hooks live

from tiniest.env import env_flag
from tiniest.errors import FastPathWarning, UsageError, warn
from tiniest.fast.compiled import Runner, find_compiler, load_cached, load_or_build, why_no_build
from tiniest.fast.threads import run_chunks
from tiniest.model import Block, Tiniest
from tiniest.transforms import preprocess_for

# Large batches run in chunks of this many images: a chunk's activations (about 6 MB at the
# widest layer) stay close to the cores between layers. Measured at batch 2,000 on 2 cores, chunks
# of 15-16 run 5-15% faster than chunks of 8 or 32, and 1.5x faster than whole batches of 256.
# It stays below 16: torch picks convolution kernels differently from batch 16 on, so a package
# compiled at 32 is declared for 16-32 images only. A single image runs a package of its own
# (tiniest.fast.compiled: weights prepacked for that shape).
CHUNK = 15
# Below this many images a run does not wait for a package to be built. Measured on 2 cores: a
# build takes about 40 s (its two packages) and saves about 1.3 ms per image against the eager
# FastTiniest (about 1,000 against 440 images/s), so 10,000 images (CIFAR-10's test split) repay it by
# their third run, 30,000 within the first; a picture or a small folder is done before a build would be.
BUILD_MIN_IMAGES = 10_000

OptimizeMode = Literal["compiled", "cached", "eager"]
"""What ``optimize`` runs: ``"compiled"``, the AOTInductor package, built first (tens of seconds,
once per machine and weights) where this machine has none; ``"cached"``, the package if it is
already built, else the folded module eagerly, at once; ``"eager"``, the folded module."""

__all__ = [
    "BUILD_MIN_IMAGES",
    "CHUNK",
    "FastBlock",
    "FastTiniest",
    "OptimizeMode",
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
    """A ``tiniest.Block`` on NHWC tensors with LayerNorm's affine folded into ``fc1``."""

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
    """Inference-only rewrite of ``tiniest.Tiniest`` (NHWC, folded); same logits up to rounding.

    Built on the model's device.
    """

    def __init__(self, model: Tiniest) -> None:
        super().__init__()
        model = copy.deepcopy(model).float().eval()
        self.labels = model.labels  # the class names of the outputs, as on the model
        self.meta = model.meta  # its input contract decides the package's input shape
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
        logits: torch.Tensor = self.fc(x.mean(dim=(1, 2)))
        return logits


def compiler_available() -> bool:
    """Whether TorchInductor's CPU backend can build code here (it needs a C++ compiler)."""
    return not env_flag("TINIEST_NO_COMPILE") and bool(find_compiler())


@dataclass(frozen=True)
class _FastPath:
    """What runs for the inputs the fast path serves, and the weights it was made from.

    ``tensors`` and ``versions``: each parameter and buffer, and its version counter, when the path
    was made; an in-place change (``load_state_dict``, an optimizer step) or a replaced tensor makes
    it stale.
    """

    tensors: tuple[torch.Tensor, ...]
    versions: list[int]
    fast: FastTiniest
    device: torch.device
    runner: Runner | None

    def is_current(self, tensors: list[torch.Tensor]) -> bool:
        return (
            len(tensors) == len(self.tensors)
            and all(map(operator.is_, tensors, self.tensors))
            and _versions(tensors) == self.versions
        )


def _walk(root: nn.Module) -> list[nn.Module]:
    """``root`` and every module below it, each once, as ``root.modules()`` yields them (in another order).

    Walked on every call: 12 us for this model, against 30 for ``modules()``, which builds a name for each.
    """
    modules, seen = [root], {id(root)}
    for module in modules:  # the list grows as children are found
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
    return modules


def _tensors(modules: list[nn.Module], *, buffers: bool = True) -> list[torch.Tensor]:
    """The parameters (and buffers) that ``modules`` hold directly, in order: what ``parameters()`` and
    ``buffers()`` walk the tree for, a tenth of their cost for a model this small (shared ones repeat)."""
    found: list[torch.Tensor] = [t for m in modules for t in m._parameters.values() if t is not None]
    if buffers:
        found += [t for m in modules for t in m._buffers.values() if t is not None]
    return found


def _versions(tensors: list[torch.Tensor]) -> list[int]:
    try:
        return [t._version for t in tensors]
    except RuntimeError:  # an inference tensor keeps no version counter (it changes only inside inference_mode)
        return [-1 if t.is_inference() else t._version for t in tensors]


def _serves(x: object, size: tuple[int, int]) -> bool:
    """Whether ``x`` is an input the folded module (and its package) was made for: anything else runs the plain forward.

    The package is native code built for ``(1..CHUNK, 3, *size)`` float32 CPU tensors (``size``: the
    weights' preprocessing's, 32x32 for the published ones) and trusts
    its input: another size corrupts memory. Other dtypes, layouts, tensor subclasses (tracing's
    fake tensors among them) and inputs that need gradients go to the plain model, which computes
    or refuses them as it always does. The device is checked against the weights' by the caller.
    """
    return (
        type(x) in (torch.Tensor, nn.Parameter)
        and isinstance(x, torch.Tensor)
        and x.layout == torch.strided
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[0] > 0
        and tuple(x.shape[1:]) == (3, *size)
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
    )


class OptimizedTiniest(Tiniest):
    """What ``optimize`` returns: a ``tiniest.Tiniest`` whose forward runs the compiled package where it can.

    It is the model (same parameters, ``state_dict``, ``labels``), with a faster path for the
    inputs the package was built for: ``(N, 3, 32, 32)`` float32 tensors (the size the weights'
    preprocessing states) on the weights' device
    (CPU for the package; the eager ``FastTiniest`` elsewhere), without gradients and without
    forward hooks on its layers. Every other input runs ``Tiniest.forward``, so the answer,
    or the error, is the plain model's. The fast path follows the weights: after
    ``load_state_dict``, an in-place change or ``.to(...)``, it is remade from them at the next
    call (with the package already built for the new weights, if any; else eagerly). Pickling
    keeps the weights and remakes the fast path on the other side. Outputs are ordinary tensors.
    """

    def __init__(
        self, num_classes: int = 10, *, labels: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(num_classes, labels=labels, meta=meta)
        self._input_size = preprocess_for(self.meta).size  # what the package is built for
        self._use_package = False  # whether the fast path on the CPU loads the compiled package
        self._path: _FastPath | None = None
        self._lock = threading.Lock()

    @property
    def compiled(self) -> bool:
        """Whether the fast path runs the AOTInductor package (``False``: the eager ``FastTiniest``)."""
        path = self._fast_path()
        return path is not None and path.runner is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _serves(x, self._input_size):
            return super().forward(x)
        modules = _walk(self)  # once per call, for both checks below
        if self._needs_layers(modules):
            return super().forward(x)
        path = self._fast_path(modules)
        if path is None or x.device != path.device:
            return super().forward(x)
        with torch.no_grad():
            # Each chunk is copied to the package's layout (never the caller's tensor), on threads chosen
            # from the free cores (tiniest.fast.threads).
            if path.device.type == "cpu":
                outputs = run_chunks(path.runner or path.fast, x.split(CHUNK))
            else:
                outputs = [path.fast(chunk.clone(memory_format=torch.channels_last)) for chunk in x.split(CHUNK)]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _needs_layers(self, modules: list[nn.Module]) -> bool:
        """Whether the layers themselves must run: forward hooks watch them (as a recorder of activations
        does), or gradients are wanted for parameters that ask for them (fine-tuning this model)."""
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return True
        if torch.is_grad_enabled() and any(p.requires_grad for p in _tensors(modules, buffers=False)):
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in modules if m is not self)

    def _fast_path(self, modules: list[nn.Module] | None = None) -> _FastPath | None:
        """The fast path for the current weights, remade if they changed; None if they are not float32."""
        tensors = _tensors(_walk(self) if modules is None else modules)
        path = self._path
        if path is not None and path.is_current(tensors):
            return path
        with self._lock:  # one remake, however many threads call at once
            path = self._path
            if path is None or not path.is_current(tensors):
                path = self._path = self._make_path(tensors)
            return path

    def _attach_package(self, build: bool) -> None:
        """Run the CPU fast path from the compiled package: the one already built, else (``build``) a new one.

        Where none can be had, the eager ``FastTiniest`` runs, and one line says why if a
        build was wanted and could not happen (or failed).
        """
        self._use_package = True
        path = self._fast_path()
        if path is None or path.runner is not None or not build or path.device.type != "cpu":
            return
        reason = why_no_build()
        if reason is not None:
            warn(f"tiniest.optimize: running uncompiled: {reason}", FastPathWarning)
            return
        try:
            runner = load_or_build(path.fast, CHUNK)
        except Exception as error:  # a failed build must not cost the user their predictions
            warn(
                f"tiniest.optimize: no usable AOTInductor package ({type(error).__name__}: {error}); "
                "using the eager optimized model",
                FastPathWarning,
            )
            return
        with self._lock:
            if self._path is path:
                self._path = replace(path, runner=runner)

    def _make_path(self, tensors: list[torch.Tensor]) -> _FastPath | None:
        devices = {t.device for t in tensors}
        if len(devices) != 1 or any(t.dtype != torch.float32 or t.layout != torch.strided for t in tensors):
            return None  # a half, double or scattered model: the plain forward, as it is
        (device,) = devices
        with torch.no_grad(), torch.inference_mode(False):
            with torch.device("meta"):  # the weights come next (and the caller's random numbers stay untouched)
                plain = Tiniest(len(self.labels), labels=self.labels)
            plain.load_state_dict(self.state_dict(), assign=True)
            fast = FastTiniest(plain)
        runner = _cached_package(fast) if self._use_package and device.type == "cpu" else None
        return _FastPath(tuple(tensors), _versions(tensors), fast, device, runner)

    def _apply(self, fn: Any, recurse: bool = True) -> OptimizedTiniest:
        self._path = None  # new device or dtype: remade at the next call
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_path": None, "_lock": None}  # native code and locks stay here; the weights travel

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({**state, "_lock": threading.Lock()})  # type: ignore[no-untyped-call]


def _cached_package(fast: FastTiniest) -> Runner | None:
    """The package already built for these weights, if any; never builds."""
    try:
        return load_cached(fast, CHUNK)
    except Exception:  # the eager fast path is the answer where no package can be read
        return None


def worth_building(expected_images: int) -> bool:
    """Whether a run over ``expected_images`` images should wait for a package build (see ``BUILD_MIN_IMAGES``)."""
    return expected_images >= BUILD_MIN_IMAGES


def optimize(model: nn.Module, *, mode: OptimizeMode = "compiled") -> OptimizedTiniest:
    """A copy of ``model`` (a ``tiniest.Tiniest``) with the same answers, faster for inference.

    Args:
        model: the model to speed up; it is copied, not modified.
        mode: what runs (``OptimizeMode``). ``"compiled"``: the AOTInductor package, built
            first if this machine has none for these weights (announced in one log line: about
            40 s on 2 cores); later ``optimize`` calls, in any process and under any thread count,
            load it from ``tiniest.fast.compiled.compiled_cache_dir`` in milliseconds.
            ``"cached"``: the package if already built, else the eager ``FastTiniest`` at
            once (``"compiled" if worth_building(number_of_images) else "cached"`` is the
            commands' choice). ``"eager"``: the ``FastTiniest`` alone. Where the package is
            wanted and cannot be had (a model on another device: the package is CPU code; no
            C++ compiler; a torch that cannot build packages; a failed build), one warning line
            says why and the eager module runs. ``TINIEST_NO_COMPILE=1`` makes every mode
            ``"eager"``, silently: the machine's owner has chosen.

    Returns:
        An ``OptimizedTiniest`` in eval mode, on ``model``'s device and dtype, without
        gradients on its parameters: ``(N, 3, 32, 32)`` float32 inputs take the fast path, any
        other input the plain forward (see ``OptimizedTiniest``).
    """
    if not isinstance(model, Tiniest):
        raise TypeError(f"optimize() expects a tiniest.Tiniest, got {type(model).__name__}")
    if mode not in get_args(OptimizeMode):
        raise UsageError(f"optimize: mode must be one of {', '.join(get_args(OptimizeMode))}; got {mode!r}")
    if env_flag("TINIEST_NO_COMPILE"):
        mode = "eager"
    device = model.conv1.weight.device
    reason = None
    if mode != "eager" and device.type != "cpu":
        reason = f"the compiled fast path is CPU-only; the model stays on {device} and runs the folded module"
    elif mode != "eager" and not find_compiler():  # (TINIEST_NO_COMPILE made the mode "eager" above)
        reason = "no C++ compiler (Inductor uses $CXX, else g++); the folded module runs uncompiled"
    if reason is not None:
        warn(f"tiniest.optimize: {reason}", FastPathWarning)
        mode = "eager"
    with torch.no_grad(), torch.inference_mode(False):  # ordinary tensors, even for a caller in inference mode
        with torch.device("meta"):  # no random initialization: the weights come next
            optimized = OptimizedTiniest(len(model.labels), labels=model.labels, meta=model.meta)
        optimized.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, assign=True)
    optimized.requires_grad_(False).eval()
    if mode != "eager":
        optimized._attach_package(build=mode == "compiled")
    return optimized
