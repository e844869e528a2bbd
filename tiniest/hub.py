"""The ``tiniest`` entry point shared by torch.hub (``hubconf.py``) and pip users: the model built with its weights.

The weights code (:mod:`tiniest.weights`) checks bytes and keys; the architecture is checked here,
where the model and the weights meet. As torchvision's builders, ``weights=`` says which weights
(``None``: a random initialisation), and the older ``pretrained=`` still works for a while, with a
:class:`~tiniest.errors.TiniestDeprecationWarning` naming its replacement.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeAlias, cast

import torch

from tiniest.errors import TiniestDeprecationWarning, UsageError, warn
from tiniest.model import Tiniest
from tiniest.weights import TiniestWeights, load_strictly, load_weights
from tiniest.weights.loading import model_from_weights

__all__ = ["Weights", "check_architecture", "tiniest"]

Weights: TypeAlias = "TiniestWeights | str | os.PathLike[str]"
"""What ``weights=`` takes: a release (member or name), or a path or http(s) URL of a weights file."""

_Arguments = ParamSpec("_Arguments")


def _pretrained_to_weights(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The deprecated ``pretrained`` (keyword, or the one positional argument) as the ``weights=`` it stands for."""
    if len(args) > 1 or (args and "pretrained" in kwargs):
        raise UsageError(f"tiniest() takes keyword arguments (weights=, progress=...), got {len(args)} positional")
    pretrained = args[0] if args else kwargs.pop("pretrained")
    if pretrained not in (True, False):
        raise UsageError(
            f"expected pretrained=True or False (deprecated: say weights= instead), got {pretrained!r}; "
            "weights are chosen by keyword: tiniest(weights=...)"
        )
    replacement = "weights=TiniestWeights.DEFAULT" if pretrained else "weights=None"
    if "weights" in kwargs:
        raise UsageError(f"pretrained= and weights= were both given: drop pretrained= (deprecated; {replacement})")
    warn(
        f"tiniest(pretrained={bool(pretrained)}) is deprecated and will be removed in tiniest 2.0: "
        f"use tiniest({replacement})",
        TiniestDeprecationWarning,
    )
    return {**kwargs, "weights": TiniestWeights.DEFAULT if pretrained else None}


def _accepting_pretrained(build: Callable[_Arguments, Tiniest]) -> Callable[_Arguments, Tiniest]:
    """``build``, still taking the deprecated ``pretrained`` (its signature, docstring and types stay ``build``'s)."""

    by_keyword = cast(Callable[..., Tiniest], build)

    @functools.wraps(build)
    def entry(*args: Any, **kwargs: Any) -> Tiniest:
        if args or "pretrained" in kwargs:
            kwargs = _pretrained_to_weights(args, kwargs)
        return by_keyword(**kwargs)

    return cast(Callable[_Arguments, Tiniest], entry)


@_accepting_pretrained
def tiniest(
    *,
    weights: Weights | None = TiniestWeights.DEFAULT,
    progress: bool = True,
    sources: str | Iterable[str] | None = None,
    device: str | torch.device | None = None,
    offline: bool | None = None,
) -> Tiniest:
    """Tiniest CIFAR-10 classifier (97,530 parameters, 94.63% top-1 on the CIFAR-10 test set).

    The model takes ``(N, 3, 32, 32)`` RGB in [0, 1] minus 0.5 and returns ``(N, 10)`` logits
    for ``tiniest.CLASSES`` (airplane ... truck). It comes back in eval mode. Other weights bring
    their own task: ``model.labels`` are their class names (from the file's metadata; for a run's
    ``model.pt``, from its ``checkpoint.pt``), one per output, and ``model.meta`` what the file says.

    Args:
        weights: which weights, as torchvision's ``weights=``: ``TiniestWeights.DEFAULT`` (the
            default: the pinned release), another ``TiniestWeights`` member or its name as a string
            (``"DEFAULT"``, ``"CIFAR10_V1"``), a path or http(s) URL of a ``.safetensors`` or
            state_dict ``.pt`` file, or ``None`` for a random initialisation. A file that is not the
            pinned release loads with an ``UnverifiedWeightsWarning``. The environment variable
            ``TINIEST_WEIGHTS`` (a path, URL or release name), when set, stands in for the member
            ``TiniestWeights.DEFAULT`` (``CIFAR10_V1`` is the same member), whether left as the default
            or passed; a release named by a string (``weights="CIFAR10_V1"``) and ``None`` ignore it.
        progress: name each download on stderr, with a progress bar where ``tqdm`` is installed.
        sources: where to look for the pinned release, in order; a subset of
            ``"local"`` (the checkout's ``weights/`` folder), ``"cache"`` (torch.hub's checkpoints
            folder, then the Hugging Face cache), ``"github"`` (the release asset; base URL from
            ``TINIEST_GITHUB_URL``), ``"huggingface"`` (``hf_hub_download``; honours ``HF_ENDPOINT``,
            ``HF_HOME``, tokens) and ``"original"`` (the publisher's .pt, verified by its own sha256).
            Default: all of them, in that order. A list or a comma-separated string.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...); a device
            this machine lacks is refused in one line. Default: stays on the CPU.
        offline: never touch the network. Default: ``True`` when ``TINIEST_OFFLINE=1`` or
            ``HF_HUB_OFFLINE=1`` is set.

    The ``pretrained=`` of earlier versions (keyword, or the one positional argument) still works
    until tiniest 2.0, with a ``TiniestDeprecationWarning``: ``pretrained=True`` is
    ``weights=TiniestWeights.DEFAULT``, ``pretrained=False`` is ``weights=None``; it is refused
    together with ``weights=``.

    Returns:
        A :class:`tiniest.Tiniest` in eval mode, on ``device``.
    """
    target = None
    if device is not None:  # refused before any download
        from tiniest.devices import resolve_device

        target = resolve_device(device)
    if weights is None:
        model = Tiniest()
    else:  # the default member: None lets TINIEST_WEIGHTS stand in for it
        loaded = load_weights(
            None if weights is TiniestWeights.DEFAULT else weights, sources=sources, progress=progress, offline=offline
        )
        model = model_from_weights(Tiniest, loaded.state_dict, loaded.meta, origin=loaded.location)
    model.eval()
    return model.to(target) if target is not None else model


def check_architecture(state_dict: dict[str, torch.Tensor], origin: str = "weights") -> None:
    """Refuse a state_dict that is not Tiniest's (of any class count) before it becomes a release file."""
    fc = state_dict.get("fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.dim() == 2 else 10
    load_strictly(Tiniest(num_classes), state_dict, origin)
