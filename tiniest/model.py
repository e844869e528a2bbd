"""The Tiniest architecture (github.com/xvel/cifar10-tiniest), architecture only.

Module names and registration order follow the published checkpoint and the model
card's torchinfo table, so that ``load_state_dict(strict=True)`` needs no renaming and
layer indices like ``(2, 4)`` mean the same module as in scio's tutorials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tiniest.classes import default_labels
from tiniest.weights.hub_mixin import HubFolderMixin

__all__ = ["Block", "LayerNorm2d", "Tiniest", "tanh_exp"]


def tanh_exp(x: torch.Tensor) -> torch.Tensor:
    """The TanhExp activation ``x * tanh(exp(x))`` used by the gated feed-forward."""
    return x * torch.tanh(torch.exp(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (the ``ln`` child holds the affine)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out


class Block(nn.Module):
    """Split-kernel token mixer followed by a gated 1x1 feed-forward and a scaled residual.

    The channels are split in four: the first passes through, the others see a 3x3, a 7x7
    and (after a 3x3 average pool) a dilated 7x7 depthwise convolution.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        part = dim // 4
        self.dwconv1 = nn.Conv2d(part, part, kernel_size=3, padding="same", groups=part)
        self.dwconv2 = nn.Conv2d(part, part, kernel_size=7, padding="same", groups=part)
        self.pool = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
        self.dwconv3 = nn.Conv2d(part, part, kernel_size=7, dilation=3, padding="same", groups=part)
        self.ln = LayerNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, 2 * hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)
        self.rs = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity, small, large, dilated = torch.chunk(x, 4, dim=1)
        mixed = torch.cat(
            [identity, self.dwconv1(small), self.dwconv2(large), self.dwconv3(self.pool(dilated))],
            dim=1,
        )
        value, gate = torch.chunk(self.fc1(self.ln(mixed)), 2, dim=1)
        # One code path under every grad mode, so that trace, script, FX and export see the same
        # graph; in-place inference tricks belong to tiniest.optimize.
        return torch.addcmul(self.fc2(tanh_exp(value) * gate), x, self.rs)


class Tiniest(HubFolderMixin):
    """CIFAR-10 classifier with 97,530 parameters.

    Input: ``(N, 3, 32, 32)`` RGB in [0, 1] minus 0.5. Output: ``(N, num_classes)`` logits in the
    order of ``labels`` (the weights' class names; ``tiniest.CLASSES`` for the published ones).
    ``meta`` is what the weights' file says of them (empty for a random model): the model built
    from weights keeps it so that ``save_pretrained`` repeats it while the weights are unchanged.
    ``from_pretrained`` / ``save_pretrained`` come from ``tiniest.weights.hub_mixin.HubFolderMixin``.
    """

    def __init__(
        self, num_classes: int = 10, *, labels: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        if labels is None:
            labels = default_labels(num_classes)
        if len(labels) != num_classes:
            raise ValueError(f"expected {num_classes} labels, one per output, got {len(labels)}: {list(labels)}")
        self.labels = tuple(str(name) for name in labels)
        self.meta = dict(meta or {})
        self.conv1 = nn.Conv2d(3, 48, kernel_size=3, padding=1)
        self.ln1 = LayerNorm2d(48)
        self.l1 = Block(48, 48)
        self.l2 = Block(48, 48)
        self.l3 = Block(48, 48)
        self.dsconv = nn.Conv2d(48, 80, kernel_size=4, stride=2, padding=1, groups=16)
        self.ln2 = LayerNorm2d(80)
        self.l4 = Block(80, 80)
        self.l5 = Block(80, 80)
        self.l6 = Block(80, 80)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(80, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(self.conv1(x))
        x = self.l3(self.l2(self.l1(x)))
        x = self.ln2(self.dsconv(x))
        x = self.l6(self.l5(self.l4(x)))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits
