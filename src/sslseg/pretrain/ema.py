"""Exponential moving averages for target networks (BYOL)."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """BYOL's schedule: "tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2" [0], from ``base`` to 1.

    [0] Grill et al., BYOL, NeurIPS 2020, https://arxiv.org/abs/2006.07733
    """
    k = min(max(step, 0), total_steps)
    return 1 - (1 - base) * (math.cos(math.pi * k / max(1, total_steps)) + 1) / 2


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, m: float) -> None:
    """``target = m * target + (1 - m) * online`` for parameters; buffers (BN statistics) copied."""
    for po, pt in zip(online.parameters(), target.parameters(), strict=True):
        pt.mul_(m).add_(po.detach(), alpha=1 - m)
    for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
        bt.copy_(bo)
