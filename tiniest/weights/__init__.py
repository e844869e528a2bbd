"""The weights: the pinned release, where its bytes come from, and how files become tensors.

* ``releases``: the pinned record (``release.json``), ``TiniestWeights``, ``CLASSES``,
  ``NOT_GIVEN`` (``weights=`` left out);
* ``sources``: ``load_weights``, each source in turn until one yields the pinned bytes,
  served by ``fetch`` (HTTP) and ``huggingface`` (the Hub);
* ``formats``: safetensors and ``.pt`` bytes as tensors (the library, else
  ``safetensors_fallback``); ``loading``: tensors into a model;
* publishing: ``artifact`` (the release file), ``metadata``,
  ``run_files``, and ``hub_mixin`` / ``hub_folder``
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
