"""Training with the published recipe: :func:`train` a run folder, resumable, one or many processes.

* :mod:`~tiniest.training.recipe`: what decides the weights (:class:`Recipe`) and its optimizer, schedule, average;
* :mod:`~tiniest.training.augment`: batch augmentation and mix-up (kornia);
* :mod:`~tiniest.training.loop`: the loop, its checkpoints and ``torchrun`` processes;
* :mod:`~tiniest.training.rundata`: the images a run trains on and the held-out ones it scores;
* :mod:`~tiniest.training.start`: the weights a run starts from (``init``, fine-tuning);
* :mod:`~tiniest.training.runlog`: the per-epoch log, console line and curves.

The files a run leaves are read as weights by :mod:`tiniest.weights.run_files`.
"""

from tiniest.training.loop import RunOptions, train
from tiniest.training.recipe import Recipe

__all__ = ["Recipe", "RunOptions", "train"]
