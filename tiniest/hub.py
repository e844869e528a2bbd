"""The ``tiniest`` entry point shared by torch.hub (``hubconf.py``) and pip users: the model built with its weights.

The weights code (``tiniest.weights``) checks bytes and keys, and loads them into the model class
this module passes it (it never imports the model). As torchvision's builders, ``weights=`` says which weights
(``None``: a random initialisation) and ``num_classes=`` gives the published trunk a new head.
``pretrained=``, which torch.hub users type from habit, is refused in one line naming ``weights=``:
one spelling, one meaning.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeAlias

import torch

from tiniest.errors import UsageError
from tiniest.model import Tiniest
from tiniest.weights import NOT_GIVEN, NotGiven, TiniestWeights, load_weights
from tiniest.weights.loading import model_from_weights, num_outputs

__all__ = ["Weights", "tiniest"]

Weights: TypeAlias = "TiniestWeights | str | os.PathLike[str]"
"""What ``weights=`` takes: a release (member or name), or a path or http(s) URL of a weights file."""

_Arguments = ParamSpec("_Arguments")


def _refusing_pretrained(build: Callable[_Arguments, Tiniest]) -> Callable[_Arguments, Tiniest]:
    """``build``, answering torchvision's older ``pretrained=`` with the ``weights=`` to write instead."""

    @functools.wraps(build)
    def entry(*args: _Arguments.args, **kwargs: _Arguments.kwargs) -> Tiniest:
        if "pretrained" in kwargs:
            instead = "weights=TiniestWeights.DEFAULT" if kwargs["pretrained"] else "weights=None"
            raise UsageError(
                f"tiniest() takes weights=, not pretrained=: got pretrained={kwargs['pretrained']!r}; pass {instead}"
            )
        return build(*args, **kwargs)

    return entry


@_refusing_pretrained
def tiniest(
    *,
    weights: Weights | NotGiven | None = NOT_GIVEN,
    progress: bool = True,
    sources: str | Iterable[str] | None = None,
    device: str | torch.device | None = None,
    offline: bool | None = None,
    num_classes: int | None = None,
) -> Tiniest:
    """Tiniest CIFAR-10 classifier (97,530 parameters, 94.63% top-1 on the CIFAR-10 test set).

    The model takes ``(N, 3, 32, 32)`` RGB in [0, 1] minus 0.5 and returns ``(N, 10)`` logits
    for ``tiniest.CLASSES`` (airplane ... truck). It comes back in eval mode. Other weights bring
    their own task: ``model.labels`` are their class names (from the file's metadata; for a run's
    ``model.pt``, from its ``checkpoint.pt``), one per output, and ``model.meta`` what the file says.

    Args:
        weights: which weights, as torchvision's ``weights=``: a ``TiniestWeights`` member
            (``TiniestWeights.DEFAULT`` is the pinned release, ``CIFAR10_V1``) or its name as a string
            (``"DEFAULT"``, ``"CIFAR10_V1"``), a path or http(s) URL of a ``.safetensors`` or
            state_dict ``.pt`` file, or ``None`` for a random initialisation. Left out: what the
            environment variable ``TINIEST_WEIGHTS`` names (a path, URL or release name) where it is
            set, else ``TiniestWeights.DEFAULT``; weights passed always win. A file that is not the
            pinned release loads with an ``UnverifiedWeightsWarning``.
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
        num_classes: outputs of the model, to fine-tune for other classes. Where the weights have
            another count, the model is their trunk with a new, randomly initialised head: its
            ``labels`` are ``class_0``... and ``model.meta["head"]`` says it is new. Default: the weights' own.

    Returns:
        A ``tiniest.Tiniest`` in eval mode, on ``device``.
    """
    target = None
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UsageError(f"num_classes: expected a positive int, got {num_classes!r}")
    if device is not None:  # refused before any download
        from tiniest.devices import resolve_device

        target = resolve_device(device)
    if weights is None:
        model = Tiniest(num_classes if num_classes is not None else 10)
    else:
        loaded = load_weights(weights, sources=sources, progress=progress, offline=offline)
        origin = loaded.location
        if num_classes is None or num_outputs(loaded.state_dict, origin) == num_classes:
            model = model_from_weights(Tiniest, loaded.state_dict, loaded.meta, origin=origin)
        else:
            from tiniest.weights.heads import model_with_new_head

            model = model_with_new_head(Tiniest, loaded, num_classes)
    model.eval()
    return model.to(target) if target is not None else model
