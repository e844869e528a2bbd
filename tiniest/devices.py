"""Devices: the device a user names, as a ``torch.device`` this machine has, or one line saying what it has.

torch accepts any well-formed name (``torch.device("cuda:3")`` on a machine without a GPU) and
fails later, deep inside, with errors such as ``module 'torch._C' has no attribute
'_cuda_setDevice'``. ``resolve_device`` checks the name first, so that every entry point
(``predict``, ``evaluate``, ``train`` and their ``--device``) refuses it in one ``UsageError``.
"""

from __future__ import annotations

import torch

from tiniest.errors import UsageError

__all__ = ["available_devices", "resolve_device"]

ACCEPTED = "cpu, cuda, cuda:N, mps, xpu or xpu:N"


def _count(kind: str) -> int:
    """How many devices of ``kind`` torch can use here (0 when this torch was built without them)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    xpu = getattr(torch, "xpu", None)  # absent from older torch
    return xpu.device_count() if xpu is not None and xpu.is_available() else 0


def available_devices() -> list[str]:
    """The devices tiniest can run on here, e.g. ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        count = _count(kind)
        names += ["mps"] if kind == "mps" and count else [f"{kind}:{i}" for i in range(count)]
    return names


_NAMES = {"cuda": "CUDA", "mps": "MPS (Apple GPU)", "xpu": "XPU (Intel GPU)"}


def _why_missing(kind: str, count: int) -> str:
    """Why the ``kind`` device asked for is not here: fewer devices than asked, none found, or a build without them."""
    if count:
        listed = ", ".join(available for available in available_devices() if available.startswith(kind))
        return f"{count} {_NAMES[kind]} device{'' if count == 1 else 's'} ({listed})"
    if kind == "cuda" and torch.version.cuda is None and torch.version.hip is None:
        return f"this torch ({torch.__version__}) was built without CUDA"
    if kind == "mps" and not torch.backends.mps.is_built():
        return f"this torch ({torch.__version__}) was built without MPS"
    hint = " (no driver, or CUDA_VISIBLE_DEVICES hides them)" if kind == "cuda" else ""
    return f"this torch ({torch.__version__}) finds no {_NAMES[kind]} device{hint}"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has; ``None`` is the CPU.

    Raises:
        UsageError: in one line, for a name that is not a device, a device tiniest does not run
            on (``meta``...), or one this machine or this build of torch lacks, naming what is available.
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise UsageError(f"expected a device name such as 'cpu' or 'cuda:0', got {type(device).__name__} {device!r}")
    available = f"available: {', '.join(available_devices())}"
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"device {str(device)!r} is not a device name: expected {ACCEPTED}; {available}") from None
    asked = str(device)
    if chosen.type == "cpu":
        return chosen
    if chosen.type not in ("cuda", "mps", "xpu"):
        raise UsageError(f"device {asked!r} is not one tiniest runs on: expected {ACCEPTED}; {available}")
    count = _count(chosen.type)
    if (chosen.index or 0) >= count:
        raise UsageError(f"device {asked!r} is not available: {_why_missing(chosen.type, count)}; {available}")
    return chosen
