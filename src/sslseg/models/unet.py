"""UNet (Ronneberger et al., MICCAI 2015) split into a reachable encoder and a decoder.

"The contracting path follows the typical architecture of a convolutional network
... Every step in the expansive path consists of an upsampling of the feature map
followed by ... a concatenation with the correspondingly cropped feature map from
the contracting path, and two 3x3 convolutions" [0].

Deviations: padded convolutions (output size = input size), normalisation after
each convolution (batch by default), bilinear upsampling followed by a 1x1 conv
instead of transposed convolutions, and a configurable base width and depth.
contrastive-echo used the same shape (milesial Pytorch-UNet, bilinear=True).

[0] https://arxiv.org/abs/1505.04597
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DoubleConv


class UNetEncoder(nn.Module):
    """Contracting path. ``forward(x)`` returns the stage features, finest first.

    Args:
        in_channels: image channels (1 for grayscale echo / MRI).
        base_channels: width of the first stage; each deeper stage doubles it.
        depth: number of downsamplings; there are ``depth + 1`` stages.
        norm: ``batch``, ``instance``, ``group`` or ``none``.

    Shape:
        input ``(B, C, H, W)`` with H and W divisible by ``2**depth``;
        output list of ``depth + 1`` tensors ``(B, out_channels[i], H / 2**i, W / 2**i)``.
    """

    def __init__(
        self, in_channels: int = 1, base_channels: int = 32, depth: int = 4, norm: str = "batch"
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"UNet depth must be at least 1, got {depth}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.out_channels: list[int] = widths
        self.reduction = 2**depth
        self.stages = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.stages.append(DoubleConv(prev, w, norm))
            prev = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """Expansive path, sized from ``encoder_channels`` (finest first).

    ``forward(features, num_blocks=None)`` runs the first ``num_blocks`` up-steps
    (all by default) and returns the last feature map; local contrastive
    pretraining uses a partial decoder.
    """

    def __init__(self, encoder_channels: list[int], norm: str = "batch") -> None:
        super().__init__()
        chans = list(encoder_channels)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.out_channels: list[int] = []
        prev = chans[-1]
        for skip in reversed(chans[:-1]):
            # 1x1 conv after bilinear upsampling halves the width before concatenation
            self.ups.append(nn.Conv2d(prev, skip, 1))
            self.blocks.append(DoubleConv(2 * skip, skip, norm))
            self.out_channels.append(skip)
            prev = skip

    def forward(self, features: list[torch.Tensor], num_blocks: int | None = None) -> torch.Tensor:
        x = features[-1]
        skips = features[-2::-1]
        n = len(self.blocks) if num_blocks is None else num_blocks
        for up, block, skip in list(zip(self.ups, self.blocks, skips, strict=True))[:n]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([up(x), skip], dim=1))
        return x
