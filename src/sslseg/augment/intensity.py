"""Batched, grayscale-native intensity augmentations on normalised tensors ``(B, C, H, W)``.

No ImageNet colour jitter: ultrasound and MRI are single-channel, so brightness,
contrast, gamma, blur and noise stand in for SimCLR's colour distortions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(batch: int, lo: float, hi: float, g: torch.Generator | None, device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(batch, generator=g)).to(device).view(batch, 1, 1, 1)


def brightness_contrast(
    x: torch.Tensor,
    brightness: float = 0.3,
    contrast: tuple[float, float] = (0.7, 1.3),
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x * c + b`` around each image's mean, with b ~ U(-brightness, brightness)·std."""
    b = x.shape[0]
    apply = (torch.rand(b, generator=generator) < p).to(x.device).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True) + 1e-6
    c = _rand(b, *contrast, generator, x.device)
    shift = _rand(b, -brightness, brightness, generator, x.device) * std
    out = (x - mean) * c + mean + shift
    return torch.where(apply, out, x)


def gamma(
    x: torch.Tensor, log_range: float = 0.3, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gamma on the per-image min-max range, gamma = exp(U(-r, r)); preserves the range."""
    b = x.shape[0]
    apply = (torch.rand(b, generator=generator) < p).to(x.device).view(b, 1, 1, 1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    unit = ((x - lo) / (hi - lo + 1e-6)).clamp(0, 1)
    g = torch.exp(_rand(b, -log_range, log_range, generator, x.device))
    out = unit.pow(g) * (hi - lo) + lo
    return torch.where(apply, out, x)


def gaussian_blur(
    x: torch.Tensor, sigma: tuple[float, float] = (0.1, 1.5), p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample Gaussian blur with sigma ~ U(sigma); separable, done as grouped convs."""
    b, c, h, w = x.shape
    apply = (torch.rand(b, generator=generator) < p).to(x.device).view(b, 1, 1, 1)
    s = (sigma[0] + (sigma[1] - sigma[0]) * torch.rand(b, generator=generator)).to(x.device)
    radius = max(1, int(round(3 * sigma[1])))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * s[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # (B, K)
    # one kernel per (sample, channel): fold the batch into channels for a grouped conv
    kk = k.repeat_interleave(c, dim=0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kk[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kk[:, None, :, None], groups=b * c)
    return torch.where(apply, y.reshape(b, c, h, w), x)


def gaussian_noise(
    x: torch.Tensor, std: float = 0.1, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Additive noise with standard deviation ``std`` (in normalised units)."""
    b = x.shape[0]
    apply = (torch.rand(b, generator=generator) < p).to(x.device).view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator).to(x.device) * std
    return torch.where(apply, x + noise, x)
