"""Make SSL views and supervised augmentations from a whole batch at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import intensity, spatial


@dataclass
class ViewAugment:
    """SimCLR-style view recipe for grayscale images, applied to a batch.

    contrastive-echo used pl_bolts' ``SimCLRTrainDataTransform``: random resized
    crop, horizontal flip, colour jitter (p=0.8), grayscale, Gaussian blur.
    Here colour jitter becomes brightness/contrast/gamma (grayscale-native) and
    Gaussian noise is added; the crop scale floor is 0.3 rather than 0.08 so that
    a crop of a 112-pixel echo frame still holds anatomy.
    """

    crop_scale: tuple[float, float] = (0.3, 1.0)
    hflip_p: float = 0.5
    brightness: float = 0.4
    contrast: tuple[float, float] = (0.6, 1.4)
    jitter_p: float = 0.8
    gamma_p: float = 0.5
    blur_p: float = 0.5
    noise_std: float = 0.1
    noise_p: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        theta = spatial.random_resized_crop_matrices(
            x.shape[0], self.crop_scale, hflip_p=self.hflip_p, generator=generator, device=x.device
        )
        # pad with the image minimum so crops near the border look like background
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        v, _ = spatial.warp(x - lo, theta)
        v = v + lo
        v = intensity.brightness_contrast(v, self.brightness, self.contrast, self.jitter_p, generator)
        v = intensity.gamma(v, 0.3, self.gamma_p, generator)
        v = intensity.gaussian_blur(v, (0.1, 1.5), self.blur_p, generator)
        v = intensity.gaussian_noise(v, self.noise_std, self.noise_p, generator)
        return v

    def views(self, x: torch.Tensor, k: int = 2, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``k`` independently augmented views of the batch ``x``."""
        return [self(x, generator) for _ in range(k)]


@dataclass
class SegAugment:
    """Supervised augmentation: one affine warp shared by image and mask, then intensity."""

    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    hflip_p: float = 0.0  # apical views have a left/right convention; flips off by default
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.8, 1.2)
    jitter_p: float = 0.5
    gamma_p: float = 0.3
    noise_std: float = 0.05
    noise_p: float = 0.3
    strength: float = 1.0

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.strength
        if s <= 0:
            return x, mask
        theta = spatial.random_affine_matrices(
            x.shape[0],
            rotate_deg=self.rotate_deg * s,
            scale=(1 - (1 - self.scale[0]) * s, 1 + (self.scale[1] - 1) * s),
            translate=self.translate * s,
            hflip_p=self.hflip_p,
            generator=generator,
            device=x.device,
        )
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        x, mask = spatial.warp(x - lo, theta, mask)
        x = x + lo
        x = intensity.brightness_contrast(x, self.brightness * s, self.contrast, self.jitter_p, generator)
        x = intensity.gamma(x, 0.2 * s, self.gamma_p, generator)
        x = intensity.gaussian_noise(x, self.noise_std * s, self.noise_p, generator)
        return x, mask
