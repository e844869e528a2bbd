"""Batch-level augmentation and mix-up of the published recipe, run by kornia on the training device.

Augmenting whole batches on the device keeps the CPU out of the data path (the images already
sit in memory as one uint8 tensor). kornia draws its random parameters from torch's global
generator, which the trainer reseeds at the start of every epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tiniest.transforms import default_preprocess

__all__ = ["batch_augmentation", "mix_up", "mixup_loss"]


def batch_augmentation() -> nn.Module:
    """Flip, crop with 4 px replicate padding, rotation, sharpness, colour jitter: the recipe's.

    Crops to the contract's size (that of the datasets' cached images and of the weights trained).
    """
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomHorizontalFlip(),
        K.RandomCrop(default_preprocess().size, padding=4, padding_mode="replicate"),
        K.RandomAffine(degrees=15.0, p=0.95, padding_mode="reflection"),
        K.RandomSharpness((1.0, 2.2), p=0.95),
        K.ColorJiggle(0.1, 0.1, 0.5, 0.05, p=0.9),
    )


def mix_up(images: torch.Tensor, labels: torch.Tensor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image with another of the batch by a weight drawn from ``[0, strength]``.

    Returns the blended images and ``(N, 3)`` targets: first label, second label, weight of the second.
    """
    import kornia.augmentation as K

    mixer = K.RandomMixUpV2(lambda_val=(0.0, strength), data_keys=["input", "class"])
    mixed, targets = mixer(images, labels)
    return mixed, targets


def mixup_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against both labels of each blended image, weighted by the blend."""
    first, second, weight = targets.unbind(dim=1)
    loss_first = F.cross_entropy(logits, first.long(), reduction="none")
    loss_second = F.cross_entropy(logits, second.long(), reduction="none")
    return ((1.0 - weight) * loss_first + weight * loss_second).mean()
