"""Heads: segmentation and projection heads."""

from __future__ import annotations

import torch
from torch import nn


class SegmentationHead(nn.Conv2d):
    """1x1 convolution from decoder features to ``num_classes`` logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, kernel_size=1)


class ProjectionHead(nn.Module):
    """Global-pool + MLP projection used by SimCLR / BYOL.

    "We use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2) sigma(W(1) h_i)" [0];
    contrastive-echo's head is Linear -> BN1d -> ReLU -> Linear (no bias) [1].

    [0] SimCLR, Chen et al. 2020, https://arxiv.org/abs/2002.05709
    [1] contrastive-echo, src/models/simclr_model.py

    Shape: ``(B, C, H, W)`` or ``(B, C)`` -> ``(B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, bias_last: bool = False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=bias_last),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            # global average pool: reduce only the spatial dimensions
            x = x.mean(dim=(2, 3))
        return self.net(x)
