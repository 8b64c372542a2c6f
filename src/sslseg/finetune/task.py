"""Supervised fine-tuning as a task for the shared loop."""

from __future__ import annotations

import torch
from torch import nn

from ..augment.views import SegAugment
from .contract import FinetuneBase


class SupervisedTask(FinetuneBase):
    """``forward((images, masks)) -> {"loss": ...}`` with batched augmentation on the device."""

    def __init__(self, model: nn.Module, loss: nn.Module, augment: SegAugment | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.augment = augment

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, masks = batch
        if self.augment is not None and self.training:
            images, masks = self.augment(images, masks)
        logits = self.model(images)
        return {"loss": self.loss(logits, masks)}
