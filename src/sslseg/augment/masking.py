"""Noise masking for the regression pretext task (Umapathy et al., ISMRM 2022)."""

from __future__ import annotations

import torch


def noise_mask(
    x: torch.Tensor, fraction: float = 0.25, noise_std: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random ``fraction`` of the pixels by Gaussian noise.

    "using a mask M, a percentage of the pixels in the input image are replaced
    by Gaussian noise" (Umapathy et al.). The same pixels are replaced in every
    channel. ``noise_std`` is in normalised intensity units (images have unit
    variance after normalisation).

    Shape: ``x`` ``(B, C, H, W)`` -> corrupted ``(B, C, H, W)``, mask ``(B, 1, H, W)`` bool.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"mask fraction must be in (0, 1), got {fraction}")
    b, c, h, w = x.shape
    mask = (torch.rand((b, 1, h, w), generator=generator) < fraction).to(x.device)
    noise = (torch.randn((b, c, h, w), generator=generator) * noise_std).to(x.device, x.dtype)
    return torch.where(mask, noise, x), mask
