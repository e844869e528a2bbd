"""The weights: the pinned release, where its bytes come from, the file format and Hub model folders.

* :mod:`~tiniest.weights._record`: the pinned record (``release.json``), :class:`TiniestWeights`, :data:`CLASSES`;
* :mod:`~tiniest.weights.sources`: :func:`load_weights`, each source in turn until one yields the pinned bytes;
  :mod:`~tiniest.weights.download` (HTTP) and :mod:`~tiniest.weights.huggingface` (the Hub) serve it;
* :mod:`~tiniest.weights.artifact`: the safetensors release file; :mod:`~tiniest.weights.metadata`: what
  weights say about themselves; :mod:`~tiniest.weights.run_files`: a training run's files as weights;
* :mod:`~tiniest.weights.hub_mixin` and :mod:`~tiniest.weights.hub_folder`: ``from_pretrained`` /
  ``save_pretrained``.

This package checks bytes and keys; it never imports the model: callers pass the model class.
"""

from tiniest.weights._record import CLASSES, RECORD_PATH, Release, TiniestWeights
from tiniest.weights.sources import (
    SOURCES,
    LoadedWeights,
    build_artifact,
    load_strictly,
    load_weights,
    torch_cache_path,
)

__all__ = [
    "CLASSES",
    "RECORD_PATH",
    "SOURCES",
    "LoadedWeights",
    "Release",
    "TiniestWeights",
    "build_artifact",
    "load_strictly",
    "load_weights",
    "torch_cache_path",
]
