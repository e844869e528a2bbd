"""The ``tiniest`` entry point shared by torch.hub (``hubconf.py``) and pip users: the model built with its weights.

The weights code (:mod:`tiniest.weights`) checks bytes and keys; the architecture is checked here,
where the model and the weights meet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from tiniest.errors import UsageError
from tiniest.model import Tiniest
from tiniest.weights import TiniestWeights, load_strictly, load_weights
from tiniest.weights.metadata import loaded_meta, model_from_weights

__all__ = ["check_architecture", "tiniest"]


def tiniest(
    pretrained: bool = True,
    *,
    weights: str | os.PathLike[str] | TiniestWeights | None = None,
    sources: str | Iterable[str] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    offline: bool | None = None,
) -> Tiniest:
    """Tiniest CIFAR-10 classifier (97,530 parameters, 94.63% top-1 on the CIFAR-10 test set).

    The model takes ``(N, 3, 32, 32)`` RGB in [0, 1] minus 0.5 and returns ``(N, 10)`` logits
    for ``tiniest.CLASSES`` (airplane ... truck). It comes back in eval mode. Other weights bring
    their own task: ``model.labels`` are their class names (from the file's metadata; for a run's
    ``model.pt``, from its ``checkpoint.pt``), one per output, and ``model.meta`` what the file says.

    Args:
        pretrained: load the published weights (default). ``False`` gives random initialisation.
        weights: which weights: ``None`` for the pinned release (``TiniestWeights.DEFAULT``), a
            ``TiniestWeights`` member or its name (``"DEFAULT"``, ``"CIFAR10_V1"``), or a
            path or http(s) URL of a ``.safetensors`` or state_dict ``.pt`` file. A file that is not
            the pinned release loads with an ``UnverifiedWeightsWarning``. The environment variable
            ``TINIEST_WEIGHTS`` plays the same role when this is ``None``.
        sources: where to look for the pinned release, in order; a subset of
            ``"local"`` (the checkout's ``weights/`` folder), ``"cache"`` (torch.hub's checkpoints
            folder, then the Hugging Face cache), ``"github"`` (the release asset; base URL from
            ``TINIEST_GITHUB_URL``), ``"huggingface"`` (``hf_hub_download``; honours ``HF_ENDPOINT``,
            ``HF_HOME``, tokens) and ``"original"`` (the publisher's .pt, converted in memory).
            Default: all of them, in that order. A list or a comma-separated string.
        progress: name each download on stderr, with a progress bar where ``tqdm`` is installed.
        device: where to put the model (e.g. ``"cuda"``); default: stays on the CPU.
        offline: never touch the network. Default: ``True`` when ``TINIEST_OFFLINE=1`` or
            ``HF_HUB_OFFLINE=1`` is set.

    Returns:
        A :class:`tiniest.Tiniest` in eval mode, on ``device``.
    """
    if pretrained:
        loaded = load_weights(weights, sources=sources, progress=progress, offline=offline)
        model = model_from_weights(Tiniest, loaded.state_dict, loaded_meta(loaded), origin=loaded.location)
    elif weights is not None:
        raise UsageError("weights= was given with pretrained=False; drop one of them")
    else:
        model = Tiniest()
    model.eval()
    return model.to(device) if device is not None else model


def check_architecture(state_dict: dict[str, torch.Tensor], origin: str = "weights") -> None:
    """Refuse a state_dict that is not Tiniest's (of any class count) before it becomes a release file."""
    fc = state_dict.get("fc.weight")
    num_classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.dim() == 2 else 10
    load_strictly(Tiniest(num_classes), state_dict, origin)
