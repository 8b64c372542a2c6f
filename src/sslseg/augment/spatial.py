"""Batched spatial augmentations on tensors.

Parameters are drawn once per sample and the *same* warp is applied to the image
(bilinear) and to its mask (nearest), so labels stay aligned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine_matrices(
    batch: int,
    *,
    rotate_deg: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    translate: float = 0.0,
    hflip_p: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``(B, 2, 3)`` affine matrices in normalised coordinates (output -> input).

    ``scale`` > 1 zooms in (the sampled region is smaller than the image).
    """
    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=generator).to(device)

    angle = u(-rotate_deg, rotate_deg) * math.pi / 180
    s = u(*scale)
    tx, ty = u(-translate, translate), u(-translate, translate)
    flip = torch.where(torch.rand(batch, generator=generator).to(device) < hflip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta


def warp(
    images: torch.Tensor, theta: torch.Tensor, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply per-sample affine ``theta`` to images ``(B, C, H, W)`` and masks ``(B, H, W)``."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_mask = None
    if masks is not None:
        m = masks[:, None].float()
        out_mask = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        out_mask = out_mask[:, 0].long()
    return out, out_mask


def random_resized_crop_matrices(
    batch: int,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(B, 2, 3)`` matrices for a random resized crop (area fraction ``scale``), as in SimCLR."""
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(batch, generator=generator)
    log_r = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(batch, generator=generator) < hflip_p, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 1, 1] = h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta.to(device)
