"""Pieces the semi-supervised fine-tuning modes share: a masked Dice + CE, CutMix boxes,
copy-paste masks, the strong intensity view.

Pure functions of tensors; random draws use torch's generator (the loop's
snapshot holds its state, so a resumed run draws what an uninterrupted one would).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import intensity

#: MONAI's DiceLoss smoothing (smooth_nr = smooth_dr = 1e-5), so that an all-ones weight gives its value
SMOOTH = 1e-5


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   ce_over: str = "all", pooled: bool = False) -> torch.Tensor:
    """Soft Dice (background included) plus cross-entropy, each pixel counted with ``weight``.

    Dice per sample and class, as MONAI's ``DiceLoss(softmax=True)``, or ``pooled`` over
    the batch per class, as UniMatch's and BCP's masked Dice: on pseudo-labels a sample
    often has no confident pixel of a class, and a per-sample Dice then pushes that
    class's probability to zero wherever it is confident of anything else.

    Args:
        logits: ``(B, K, H, W)``.
        target: ``(B, H, W)`` int64 class indices (labels or pseudo-labels).
        weight: ``(B, H, W)`` in [0, 1] (a confidence mask, a copy-paste region); None = every pixel 1.
        ce_over: the cross-entropy's denominator: ``"all"`` pixels (UniMatch: unconfident pixels count as
            zero loss) or the ``"weight"`` sum (BCP: the mean over the region).

    Returns:
        A scalar; with ``weight`` None equal to MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``.
    """
    logits = logits.float()
    k = logits.shape[1]
    w = torch.ones(target.shape, device=logits.device) if weight is None else weight.float()
    ce = F.cross_entropy(logits, target, reduction="none") * w
    ce = ce.sum() / (w.numel() if ce_over == "all" else w.sum() + 1e-16)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).float()
    w = w[:, None]
    # reducing the spatial dimensions (and the batch when pooled): one Dice per (sample and) class, then their mean
    dims = (0, 2, 3) if pooled else (2, 3)
    inter = (prob * onehot * w).sum(dims)
    denom = (prob * w).sum(dims) + (onehot * w).sum(dims)
    dice = 1 - (2 * inter + SMOOTH) / (denom + SMOOTH)
    return dice.mean() + ce


def cutmix_boxes(batch: int, height: int, width: int, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3), device=None) -> torch.Tensor:
    """``(B, H, W)`` bool: one random box per sample (with probability ``p``; else all False).

    UniMatch's ``obtain_cutmix_box``: box area a uniform share ``area`` of the image,
    aspect ratio uniform in ``ratio``, position uniform where it fits.
    """
    a = (area[0] + (area[1] - area[0]) * torch.rand(batch)) * height * width
    r = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(batch)
    bw = torch.sqrt(a / r).clamp(1, width).floor()
    bh = torch.sqrt(a * r).clamp(1, height).floor()
    x0 = (torch.rand(batch) * (width - bw + 1)).floor()
    y0 = (torch.rand(batch) * (height - bh + 1)).floor()
    on = torch.rand(batch) < p
    xs = torch.arange(width).view(1, 1, width)
    ys = torch.arange(height).view(1, height, 1)
    box = ((xs >= x0.view(-1, 1, 1)) & (xs < (x0 + bw).view(-1, 1, 1))
           & (ys >= y0.view(-1, 1, 1)) & (ys < (y0 + bh).view(-1, 1, 1)))
    return (box & on.view(-1, 1, 1)).to(device)


def paste_masks(batch: int, height: int, width: int, side: float = 2 / 3, device=None) -> torch.Tensor:
    """``(B, H, W)`` float: 0 inside one square-ish patch per sample, 1 outside (BCP's ``generate_mask``).

    The patch is ``side`` of each image side (BCP's beta = 2/3), at a position uniform where it fits.
    """
    ph, pw = max(1, int(round(height * side))), max(1, int(round(width * side)))
    y0 = torch.randint(0, height - ph + 1, (batch,))
    x0 = torch.randint(0, width - pw + 1, (batch,))
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    inside = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + ph).view(-1, 1, 1))
              & (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + pw).view(-1, 1, 1)))
    return (~inside).float().to(device)


def strong_view(x: torch.Tensor) -> torch.Tensor:
    """UniMatch's strong perturbation for grayscale images: colour jitter (p = 0.8) and blur (p = 0.5).

    Their medical recipe is torchvision's ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` then a blur of sigma
    0.1-2; for one channel, brightness / contrast and gamma stand in for the jitter.
    """
    x = intensity.brightness_contrast(x, 0.5, (0.5, 1.5), 0.8)
    x = intensity.gamma(x, 0.4, 0.5)
    return intensity.gaussian_blur(x, (0.1, 2.0), 0.5)


def confident(prob: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo-labels of softmax ``prob`` ``(B, K, H, W)``: (labels, confidence, weight = confidence >= threshold)."""
    conf, labels = prob.max(1)
    return labels, conf, (conf >= threshold).float()


def partner(n: int, device=None) -> torch.Tensor:
    """Each sample's mixing partner within the batch: the next one (a cyclic shift; itself when alone)."""
    return torch.roll(torch.arange(n, device=device), -1) if n > 1 else torch.zeros(1, dtype=torch.long,
                                                                                    device=device)



@contextlib.contextmanager
def running_stats_kept(model: nn.Module):
    """BatchNorm normalises with the batch's statistics but leaves its running ones as they are.

    For the passes over perturbed inputs (strong views, dropped features): validation and
    prediction normalise clean images with the running statistics, which must describe them.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
