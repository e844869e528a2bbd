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
    """Tiniest CIFAR-10 classifier (97,530 parameters, 94.63% test accuracy).

    ``tiniest()``: the published weights, verified, in eval mode.
    ``tiniest(weights=None)``: a random initialisation.
    ``tiniest(num_classes=N)``: the published trunk with a new head of N outputs.

    Input ``(N, 3, 32, 32)``: RGB in [0, 1] minus 0.5 (``weights.transforms()``
    makes it from pictures). Output ``(N, classes)`` logits, named by
    ``model.labels`` (``tiniest.CLASSES`` for the published weights);
    ``model.meta`` is what the weights file says of itself.

    Args:
        weights: a ``TiniestWeights`` member or its name (``"DEFAULT"``,
            ``"CIFAR10_V1"``), a path or http(s) URL of a ``.safetensors`` or
            ``.pt`` file, or ``None``. Left out: ``TINIEST_WEIGHTS`` where it
            is set, else ``TiniestWeights.DEFAULT``; weights passed always
            win. A file that is not the pinned release loads with an
            ``UnverifiedWeightsWarning``.
        progress: name each download on stderr (a progress bar with tqdm).
        sources: where to look for the pinned release, in order: some of
            ``local``, ``cache``, ``github``, ``huggingface``, ``original``
            (a list or a comma-separated string; docs/weights.md). Default: all.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...; a device this
            machine lacks is refused in one line. Default: the CPU.
        offline: never touch the network. Default: ``True`` where
            ``TINIEST_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.
        num_classes: outputs of the model. Where the weights have another
            count, their trunk gets a new, randomly initialised head (labels
            ``class_0``...; ``model.meta["head"]`` says so). Default: theirs.

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
