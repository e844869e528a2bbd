"""Training with the published recipe: ``train`` a run folder, resumable, one or many processes.

* ``recipe``: what decides the weights (``Recipe``) and its optimizer, schedule, average;
* ``augment``: batch augmentation and mix-up (kornia);
* ``loop``: the loop, its checkpoints and ``torchrun`` processes;
* ``rundata``: the images a run trains on and the held-out ones it scores;
* ``start``: the weights a run starts from (``init``, fine-tuning);
* ``runlog``: the per-epoch log, console line and curves.

The files a run leaves are read as weights by ``tiniest.weights.run_files``.
"""

from tiniest.training.loop import RunOptions, train
from tiniest.training.recipe import Recipe

__all__ = ["Recipe", "RunOptions", "train"]
