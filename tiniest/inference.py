"""Inference: class names and probabilities for your own pictures (``tiniest.predict``).

``tiniest.predict(x)`` takes everything ``tiniest.preprocess`` does (paths, bytes, binary files,
PIL images, numpy arrays, tensors, lists of them) and returns one ``Prediction`` per image. Inputs are read and
reduced to the model's size a chunk at a time (JPEGs decoded at reduced scale), so a folder of
large photos costs the memory of one photo, not of the folder. With ``errors="report"`` an input
that cannot be read gives a ``Prediction`` whose ``error`` says why, and the others still
get their answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from tiniest.devices import resolve_device
from tiniest.env import env_text
from tiniest.errors import PreprocessError, UsageError
from tiniest.hub import Weights, tiniest
from tiniest.transforms import ImageInput, Images, Preprocess, image_items, preprocess_for
from tiniest.weights import CLASSES, NOT_GIVEN, NotGiven, TiniestWeights

if TYPE_CHECKING:  # the fast path is imported when asked for
    from tiniest.fast import OptimizeMode

__all__ = ["Prediction", "predict"]

CHUNK = 64  # inputs read, reduced to the model's size and classified at a time (bounds activation memory)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The ``top`` classes of one image, most probable first, as ``(name, probability)`` pairs.

    With ``predict(..., errors="report")``, an input that could not be read has ``error`` (the
    message) and an empty ``top``; ``label`` and ``probability`` then raise a ``ValueError``.
    """

    top: tuple[tuple[str, float], ...]
    error: str | None = None

    @property
    def label(self) -> str:
        return self._best()[0]

    @property
    def probability(self) -> float:
        return self._best()[1]

    def _best(self) -> tuple[str, float]:
        if self.error is not None:
            raise ValueError(f"no prediction: {self.error}")
        return self.top[0]


def _model_for(weights: Weights | NotGiven, fast: OptimizeMode | None, device: torch.device) -> nn.Module:
    """The ``weights``' model on ``device``, made by ``tiniest.optimize`` in ``fast`` mode where asked.

    Built anew for each call: a caller who predicts again passes ``model=`` (kept by them, not by the process).
    The fast path is CPU code: on another device the plain model runs (said once).
    """
    model: nn.Module = tiniest(weights=weights, progress=False, device=device)
    if fast is not None and device.type != "cpu":
        logger.warning("tiniest.predict: the fast path (tiniest.optimize) is CPU-only; on %s the plain model runs",
                       device)
    elif fast is not None:
        from tiniest.fast import optimize

        model = optimize(model, mode=fast)
    return model


def _release_of(weights: Weights | NotGiven) -> TiniestWeights | None:
    """The release ``weights`` name (a member or a member's name), whose record states their preprocessing.

    ``None`` for a file or URL: what it expects is known once it is loaded.
    """
    chosen = (env_text("TINIEST_WEIGHTS") or TiniestWeights.DEFAULT) if weights is NOT_GIVEN else weights
    if isinstance(chosen, TiniestWeights):
        return chosen
    if isinstance(chosen, str) and chosen.removeprefix(f"{TiniestWeights.__name__}.") in TiniestWeights.__members__:
        return TiniestWeights.from_name(chosen)
    return None


def _check_arguments(
    top_k: int,
    weights: Weights | NotGiven | None,
    classes: Sequence[str] | None,
    errors: str,
    device: str | torch.device | None,
) -> torch.device:
    """Refuse bad arguments before any input is read; the device to run on."""
    if top_k < 1 or (classes is not None and top_k > len(classes)):
        raise UsageError(f"expected top_k between 1 and {len(classes or CLASSES)}, got {top_k}")
    if errors not in ("raise", "report"):
        raise UsageError(f"expected errors='raise' or 'report', got {errors!r}")
    if weights is None:
        raise UsageError(
            "predict(weights=None): expected weights to predict with (a TiniestWeights member, its name, a path "
            "or URL), got None; leave weights out for the default release, or pass model="
        )
    return resolve_device(device)  # a device this machine lacks is refused before any input is read


@dataclass
class _Chunk:
    """Some inputs, read: their images as batches, and per input its number of images or its error."""

    batches: list[torch.Tensor]
    slots: list[int | str]


def _read(items: Sequence[ImageInput], errors: str, transform: Preprocess) -> _Chunk:
    """Each input as the model's input; one that cannot be read raises, or with ``errors="report"`` keeps its error."""
    chunk = _Chunk([], [])
    for item in items:
        try:
            chunk.batches.append(transform(item))
        except PreprocessError as error:
            if errors == "raise":
                raise
            chunk.slots.append(str(error))
        else:
            chunk.slots.append(chunk.batches[-1].shape[0])
    return chunk


def _answer(chunk: _Chunk, model: nn.Module | None, top_k: int, classes: Sequence[str] | None) -> list[Prediction]:
    """One ``Prediction`` per image of ``chunk``, and one per input that could not be read, in order."""
    names = classes if classes is not None else getattr(model, "labels", CLASSES)
    if top_k > len(names):
        raise UsageError(f"expected top_k between 1 and {len(names)} (the model's classes), got {top_k}")
    found = _classify(model, torch.cat(chunk.batches), top_k, names) if model is not None and chunk.batches else []
    answers = iter(found)
    results: list[Prediction] = []
    for slot in chunk.slots:
        if isinstance(slot, str):
            results.append(Prediction((), error=slot))
        else:
            results.extend(next(answers) for _ in range(slot))
    return results


@torch.inference_mode()
def predict(
    images: Images,
    *,
    top_k: int = 1,
    model: nn.Module | None = None,
    weights: Weights | NotGiven = NOT_GIVEN,
    fast: OptimizeMode | None = None,
    classes: Sequence[str] | None = None,
    errors: Literal["raise", "report"] = "raise",
    device: str | torch.device | None = None,
) -> list[Prediction]:
    """Classify ``images`` (any input ``tiniest.preprocess`` accepts); one ``Prediction`` per image.

    ``images``: paths, an image file's ``bytes``, binary file objects (``io.BytesIO``, an open file, a web
    upload's ``.file``), PIL images, numpy arrays, tensors, or a list of them; bytes and files are decoded
    as paths are (JPEGs at reduced scale). ``model`` defaults to ``tiniest.tiniest(weights=weights)``
    (``weights``: anything ``tiniest.tiniest`` takes but ``None``; left out, as there), loaded for this
    call only: to predict again, build the model once and pass it. ``fast``: make that model with
    ``tiniest.optimize`` in this mode (``"compiled"`` builds native code, once per machine; ``"cached"``
    uses a package already built, else the folded module; ``"eager"`` the folded module); default: the
    plain model, nothing built, nothing kept. ``classes`` name the outputs; default: the model's ``labels``
    (the weights' own class names). ``errors``: ``"raise"`` stops at the first input that cannot be read (a
    ``tiniest.errors.PreprocessError``); ``"report"`` gives that input (a file, or one
    item of a list) a ``Prediction`` with ``error`` set instead, in its place, and goes on.
    ``device`` (``"cuda"``, ``"cuda:1"``, ``"mps"``...): where the model runs; a ``model`` given is
    moved there (``model.to``, in place). Default: the CPU, or the device of the ``model`` given.
    The fast path is CPU-only: elsewhere the plain model runs. Results are on the CPU. Inputs are
    read as the weights' own metadata says (``model.meta["preprocessing"]``, or the release's record:
    ``tiniest.transforms.preprocess_for``), so weights of another size or normalization get theirs.
    """
    target = _check_arguments(top_k, weights, classes, errors, device)
    if model is not None and device is not None:
        model.to(target)
    items = image_items(images)
    release = _release_of(weights) if model is None else None
    if model is None and release is None:  # a file or URL: its metadata says how to read the inputs
        model = _model_for(weights, fast, target)
    # the weights' own contract: the model's metadata, or the record of the release it is about to load
    transform = release.transforms() if release is not None else preprocess_for(getattr(model, "meta", None))
    results: list[Prediction] = []
    for start in range(0, len(items), CHUNK):  # read, reduced and classified a chunk at a time
        chunk = _read(items[start : start + CHUNK], errors, transform)
        if chunk.batches and model is None:  # loaded only once some input could be read
            model = _model_for(weights, fast, target)
        results.extend(_answer(chunk, model, top_k, classes))
    return results


def _classify(model: nn.Module, batch: torch.Tensor, top_k: int, classes: Sequence[str]) -> list[Prediction]:
    device = next(iter(model.parameters()), torch.empty(0)).device
    probabilities = torch.softmax(model(batch.to(device)).float(), dim=1).cpu()
    values, indices = probabilities.topk(top_k, dim=1)
    return [
        Prediction(tuple((classes[i], float(p)) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)))
        for row_p, row_i in zip(values, indices, strict=True)
    ]
