"""Noise masking for the regression pretext task (Umapathy et al., ISMRM 2022)."""

from __future__ import annotations

import torch

from ..errors import UserError


def noise_mask(
    x: torch.Tensor,
    fraction: float = 0.25,
    noise_std: float = 1.0,
    generator: torch.Generator | None = None,
    patch: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random ``fraction`` of the pixels by Gaussian noise.

    "using a mask M, a percentage of the pixels in the input image are replaced
    by Gaussian noise" (Umapathy et al.). The same pixels are replaced in every
    channel. ``noise_std`` is in normalised intensity units (images have unit
    variance after normalisation).

    ``patch`` > 1 masks aligned ``patch x patch`` squares instead of single
    pixels (each square on a grid anchored at the top-left corner is drawn
    with probability ``fraction``; squares cut by the image border are kept
    partially). The abstract masks pixels (``patch=1``); with squares the
    missing content can no longer be interpolated from the next pixel, which
    forces the network to use wider context.

    Shape: ``x`` ``(B, C, H, W)`` -> corrupted ``(B, C, H, W)``, mask ``(B, 1, H, W)`` bool.
    """
    if not 0 < fraction < 1:
        raise UserError(f"mask fraction must be in (0, 1), got {fraction}")
    if int(patch) != patch or patch < 1:
        raise UserError(f"mask patch must be a whole number of pixels >= 1, got {patch}")
    b, c, h, w = x.shape
    patch = int(patch)
    gh, gw = -(-h // patch), -(-w // patch)
    mask = torch.rand((b, 1, gh, gw), generator=generator) < fraction
    if patch > 1:
        mask = mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
    mask = mask.to(x.device)
    noise = (torch.randn((b, c, h, w), generator=generator) * noise_std).to(x.device, x.dtype)
    return torch.where(mask, noise, x), mask
