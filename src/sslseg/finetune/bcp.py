"""BCP: bidirectional copy-paste between labelled and unlabelled images in a mean teacher.

"we propose a straightforward method for alleviating the problem - copy-pasting
labeled and unlabeled data bidirectionally, in a simple Mean Teacher architecture.
The method encourages unlabeled data to learn comprehensive common semantics from
the labeled data in both inward and outward directions." [0]

[0] Bai, Chen, Li, Shen, Wang: Bidirectional Copy-Paste for Semi-Supervised Medical Image
    Segmentation, CVPR 2023, https://arxiv.org/abs/2305.00673

What follows their ACDC recipe, and where it deviates (README, "Semi-supervised fine-tuning"):
- a labelled warm-up first (their "pre-train" stage, 10k of 40k iterations: here
  half of the steps, ``warmup_fraction``): labelled images copy-pasted into each other;
  then the teacher starts as a copy of the student and follows it by EMA (0.99).
- one mask per pair, zero on a patch of 2/3 of each side: inward, a labelled patch
  in an unlabelled image; outward, an unlabelled patch in a labelled image; the
  teacher's argmax labels the unlabelled parts, whose loss weighs ``alpha`` = 0.5;
  Dice + CE over each region, the two directions averaged.
- both directions use the whole labelled batch (the partner of each image is the
  next one of its batch) where they split it in halves; the teacher's pseudo-labels
  are not reduced to their largest connected component (their ACDC post-step).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..augment.views import SegAugment
from ..pretrain.ema import update_momentum
from . import semi
from .contract import FinetuneBase


class BCP(FinetuneBase):
    """``forward({"images", "masks", "unlabelled", "step"}) -> {"loss", ...}``; ``after_step`` moves the teacher.

    Args:
        model: the segmentation model being fine-tuned (the student).
        loss: unused beyond its place in the signature: BCP's mixed loss is Dice + CE per region.
        augment: augmentation of both batches before mixing (None: none).
        steps: the run's optimiser steps (the warm-up is a share of them).
        warmup_fraction: share of the steps on labelled copy-paste alone (BCP: 0.25, 10k of 40k iterations;
            here 0.5: after 50 of 200 steps on one labelled video the teacher's labels pulled the student
            from validation Dice 0.62 to 0.44, after 100 it rose to 0.68: README).
        ema_decay: the teacher's EMA decay (BCP: 0.99).
        alpha: weight of the pseudo-labelled region (BCP: 0.5).
        patch: side of the pasted patch relative to the image (BCP: 2/3).
        unlabelled_batch: unlabelled images per step; None = the labelled batch size.
    """

    needs_unlabelled = True

    def __init__(self, model: nn.Module, loss: nn.Module, augment: SegAugment | None = None, steps: int = 1,
                 warmup_fraction: float = 0.5, ema_decay: float = 0.99, alpha: float = 0.5,
                 patch: float = 2 / 3, unlabelled_batch: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.augment = augment
        self.warmup_steps = int(round(float(warmup_fraction) * int(steps)))
        self.ema_decay = float(ema_decay)
        self.alpha = float(alpha)
        self.patch = float(patch)
        self.unlabelled_batch = unlabelled_batch
        # the teacher: never trained by the optimiser, saved with the task (exact resume)
        self.teacher = copy.deepcopy(model)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> BCP:
        super().train(mode)
        self.teacher.eval()  # pseudo-labels from the teacher's running statistics
        return self

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, y, u = batch["images"], batch["masks"], batch["unlabelled"]
        if self.augment is not None and self.training:
            x, y = self.augment(x, y)
            u, _ = self.augment(u, None)
        n = x.shape[0]
        keep = semi.paste_masks(n, *x.shape[-2:], side=self.patch, device=x.device)  # 1 outside the patch
        mate = semi.partner(n, x.device)
        k3 = keep[:, None]
        if int(batch.get("step", self.warmup_steps)) < self.warmup_steps:
            # warm-up: a labelled patch inside another labelled image
            logits = self.model(x[mate] * k3 + x * (1 - k3))
            loss = self._mixed(logits, y[mate], y, keep, 1.0, 1.0)
            return {"loss": loss, "loss_labelled": loss.detach()}
        u = u[:n] if u.shape[0] >= n else u[torch.arange(n, device=u.device) % u.shape[0]]
        with torch.no_grad():
            pseudo = self.teacher(u).argmax(1)
        inward = u * k3 + x * (1 - k3)  # unlabelled around a labelled patch
        outward = x[mate] * k3 + u[mate] * (1 - k3)  # labelled around an unlabelled patch
        logits = self.model(torch.cat([inward, outward]))
        loss_in = self._mixed(logits[:n], pseudo, y, keep, self.alpha, 1.0)
        loss_out = self._mixed(logits[n:], y[mate], pseudo[mate], keep, 1.0, self.alpha)
        loss = (loss_in + loss_out) / 2
        return {"loss": loss, "loss_inward": loss_in.detach(), "loss_outward": loss_out.detach()}

    @staticmethod
    def _mixed(logits, outer, inner, keep, w_outer: float, w_inner: float) -> torch.Tensor:
        """BCP's ``mix_loss``: Dice + CE on the region outside the patch and on the patch, weighted."""
        return (w_outer * semi.masked_dice_ce(logits, outer, keep, ce_over="weight", pooled=True)
                + w_inner * semi.masked_dice_ce(logits, inner, 1 - keep, ce_over="weight", pooled=True))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """At the end of the warm-up the teacher becomes the student; after it, an EMA of the student."""
        if step + 1 == self.warmup_steps:
            self.teacher.load_state_dict(self.model.state_dict())
        elif step + 1 > self.warmup_steps:
            update_momentum(self.model, self.teacher, self.ema_decay)
