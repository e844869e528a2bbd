"""The weights: the pinned release, where its bytes come from, and how files become tensors.

* :mod:`~tiniest.weights.releases`: the pinned record (``release.json``), :class:`TiniestWeights`, :data:`CLASSES`,
  :data:`NOT_GIVEN` (``weights=`` left out);
* :mod:`~tiniest.weights.sources`: :func:`load_weights`, each source in turn until one yields the pinned bytes,
  served by :mod:`~tiniest.weights.fetch` (HTTP) and :mod:`~tiniest.weights.huggingface` (the Hub);
* :mod:`~tiniest.weights.formats`: safetensors and ``.pt`` bytes as tensors (the library, else
  :mod:`~tiniest.weights.safetensors_fallback`); :mod:`~tiniest.weights.loading`: tensors into a model;
* publishing: :mod:`~tiniest.weights.artifact` (the release file), :mod:`~tiniest.weights.metadata`,
  :mod:`~tiniest.weights.run_files`, and :mod:`~tiniest.weights.hub_mixin` / :mod:`~tiniest.weights.hub_folder`
  (``from_pretrained`` / ``save_pretrained``). None of these is imported to load the weights.

This package checks bytes and keys; it never imports the model: callers pass the model class.
"""

from tiniest.weights.loading import LoadedWeights, load_strictly
from tiniest.weights.releases import CLASSES, NOT_GIVEN, RECORD_PATH, NotGiven, Release, TiniestWeights
from tiniest.weights.sources import SOURCES, load_weights, torch_cache_path

__all__ = [
    "CLASSES",
    "NOT_GIVEN",
    "RECORD_PATH",
    "SOURCES",
    "LoadedWeights",
    "NotGiven",
    "Release",
    "TiniestWeights",
    "load_strictly",
    "load_weights",
    "torch_cache_path",
]
