"""Fine-tuning augmentation moves image and mask together: a shape painted in both stays aligned."""

from __future__ import annotations

import torch

from sslseg.augment.views import SegAugment
from sslseg.finetune.task import SupervisedTask


def _painted(batch: int = 8, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre, asymmetric L-shape: image 1 inside, 0 outside; the mask is the same shape."""
    mask = torch.zeros(batch, size, size, dtype=torch.long)
    mask[:, 10:34, 12:20] = 1  # the upright bar
    mask[:, 26:34, 20:38] = 1  # the foot, to the right
    return mask[:, None].float(), mask


def _spatial_only(**kw) -> SegAugment:
    # intensity changes off, so that the image stays a picture of its mask
    return SegAugment(brightness=0.0, jitter_p=0.0, gamma_p=0.0, noise_p=0.0, **kw)


def _misaligned(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of the shape's pixels (in image or mask) where the two disagree."""
    inside = images[:, 0] > 0.5
    shape = (masks > 0)
    return (inside ^ shape).flatten(1).sum(1) / (inside | shape).flatten(1).sum(1).clamp(min=1)


def test_warp_moves_image_and_mask_together():
    images, masks = _painted()
    g = torch.Generator().manual_seed(0)
    x, m = _spatial_only(rotate_deg=30.0, translate=0.15, hflip_p=0.5)(images, masks, g)
    mis = _misaligned(x, m)
    # bilinear image against nearest mask: they may differ on the boundary only
    assert mis.max() < 0.08, mis
    moved = (m != masks).flatten(1).float().mean(1)
    assert (moved > 0.01).all()  # every sample was really warped


def test_supervised_task_trains_on_aligned_pairs():
    """What the model and the loss see in a fine-tuning step: the warped image and the mask warped the same way."""
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen["images"] = x.detach().clone()
            return torch.zeros(x.shape[0], 2, *x.shape[-2:], requires_grad=True)

    def loss(logits, masks):
        seen["masks"] = masks.detach().clone()
        return logits.sum()

    images, masks = _painted()
    torch.manual_seed(0)
    task = SupervisedTask(Spy(), loss, _spatial_only(rotate_deg=30.0, translate=0.15)).train()
    task((images, masks))
    mis = _misaligned(seen["images"], seen["masks"])
    assert mis.max() < 0.08, mis
    assert (seen["masks"] != masks).any()  # augmented
