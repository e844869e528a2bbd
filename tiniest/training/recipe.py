"""The published training recipe (github.com/xvel/cifar10-tiniest), as data plus builders.

The defaults are the recipe the published weights came from: AdamW at a peak learning rate
of 0.02, batch 256, a one-cycle schedule (1% warm-up, cosine annealing, ``final_div_factor``
0.4, no momentum cycling), 300 epochs, an exponential moving average of the weights (decay
0.999) used as the final model, mix-up whose maximum strength grows linearly with the epoch
up to 0.5, and batch-level augmentation (``tiniest.training.augment``). Inputs are normalized as
the input contract new weights are written with says (``tiniest.transforms.PREPROCESSING``): no
recipe field restates it, as the trained weights are stamped with that contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import OneCycleLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tiniest.errors import UsageError

__all__ = ["Recipe", "build_ema", "build_optimizer", "build_scheduler"]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; stored in every checkpoint."""

    epochs: int = 300
    batch_size: int = 256  # global: split evenly between the processes of a distributed run
    lr: float = 0.02
    warmup: float = 0.01  # fraction of the steps spent rising to ``lr`` (OneCycleLR's pct_start)
    final_div_factor: float = 0.4  # final lr = (lr / 25) / 0.4
    ema_decay: float = 0.999
    mixup: float = 0.5  # cap of the mix-up strength, reached at epoch ``mixup * epochs``
    augment: bool = True
    seed: int = 0
    limit_train: int | None = None  # a seeded random subset of the train split
    val_fraction: float | None = None  # held out of the train split (seeded, stratified) and scored instead of test

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        positive["final_div_factor"] = self.final_div_factor
        bad = [f"{name}={value} (expected a positive value)" for name, value in positive.items() if value <= 0]
        if not 0.0 <= self.warmup < 1.0:
            bad.append(f"warmup={self.warmup} (expected a fraction in [0, 1))")
        if not 0.0 <= self.ema_decay < 1.0:
            bad.append(f"ema_decay={self.ema_decay} (expected [0, 1))")
        if not 0.0 <= self.mixup <= 1.0:
            bad.append(f"mixup={self.mixup} (expected [0, 1])")
        if self.limit_train is not None and self.limit_train <= 0:
            bad.append(f"limit_train={self.limit_train} (expected a positive number of images)")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            bad.append(f"val_fraction={self.val_fraction} (expected a fraction in (0, 1))")
        if bad:
            raise UsageError(f"invalid training recipe: {', '.join(bad)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def mixup_strength(self, epoch: int) -> float:
        """Maximum mix-up weight in ``epoch`` (0-based): grows linearly, capped at ``mixup``."""
        return min(epoch / self.epochs, self.mixup)


def build_optimizer(model: nn.Module, recipe: Recipe) -> Optimizer:
    return AdamW(model.parameters(), lr=recipe.lr)


def build_scheduler(optimizer: Optimizer, recipe: Recipe, steps_per_epoch: int) -> OneCycleLR:
    """The one-cycle schedule; refused up front where torch's OneCycleLR would divide by zero mid-run."""
    total = recipe.epochs * steps_per_epoch
    if float(recipe.warmup * total) == 1.0:  # OneCycleLR's warm-up phase would last zero steps
        raise UsageError(
            f"warmup {recipe.warmup} of {total} steps ({recipe.epochs} epochs of {steps_per_epoch}) is a warm-up "
            "of exactly one step, which torch's OneCycleLR cannot schedule: choose a warmup of 0 or of 2 steps or"
            " more"
        )
    return OneCycleLR(
        optimizer,
        max_lr=recipe.lr,
        epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=recipe.warmup,
        anneal_strategy="cos",
        cycle_momentum=False,
        final_div_factor=recipe.final_div_factor,
    )


def build_ema(model: nn.Module, recipe: Recipe) -> AveragedModel:
    """The averaged weights, starting from the initial ones (the first update copies them)."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay))
    with torch.no_grad():
        ema.update_parameters(model)
    return ema
