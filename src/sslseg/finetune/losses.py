"""Supervised segmentation losses (MONAI underneath)."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from ..errors import UserError

LOSSES = ("dice", "dice_ce", "ce")


def segmentation_loss(name: str) -> nn.Module:
    """``dice``, ``dice_ce`` or ``ce``, on logits ``(B, K, H, W)`` and int64 targets ``(B, H, W)``.

    Dice includes the background class, as Chaitanya et al.'s ``--dsc_loss=2``
    and the ISMRM abstract's Dice-loss fine-tuning.
    """
    if name == "dice":
        inner: nn.Module = DiceLoss(to_onehot_y=True, softmax=True)
    elif name == "dice_ce":
        inner = DiceCELoss(to_onehot_y=True, softmax=True)
    elif name == "ce":
        return _CE()
    else:
        raise UserError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return _WithChannel(inner)


class _WithChannel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # MONAI expects the target with a channel axis: (B, 1, H, W)
        return self.inner(logits, target[:, None])


class _CE(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target)
