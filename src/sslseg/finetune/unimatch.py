"""UniMatch: weak-to-strong consistency with a feature-perturbation branch.

"we propose a UniMatch framework ... Specifically, we first expand the image-level
perturbations with an auxiliary feature perturbation stream ... Then we propose a
dual-stream perturbation technique, enabling two strong views to be simultaneously
guided by a common weak view." [0]

[0] Yang, Qi, Feng, Zhang, Shi: Revisiting Weak-to-Strong Consistency in Semi-Supervised
    Semantic Segmentation, CVPR 2023, https://arxiv.org/abs/2208.09910

What follows their medical (ACDC) recipe, and where it deviates (README, "Semi-supervised fine-tuning"):
- the labelled batch and the weak view of the unlabelled batch in forwards of their own
  (theirs: one forward of both); the feature-perturbation branch decodes the weak
  view's encoder features after channel dropout (p = 0.5), as their UNet's ``need_fp``
  (here a pass of its own); two strong views (colour jitter, blur, CutMix) in one more
  pass; the perturbed passes leave BatchNorm's running statistics alone; pseudo-labels are the weak view's argmax,
  kept where its confidence reaches 0.95; loss ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``.
- the labelled loss is the run's (``finetune.loss``, Dice + CE by default); the
  unlabelled ones are Dice + CE on confident pixels (theirs: Dice alone).
- CutMix pastes a box of another image *of the same unlabelled batch* (and its
  pseudo-label) where they draw a second unlabelled batch and predict it in a third
  forward: one forward pass less per step.
- the weak view is the run's supervised augmentation (rotation, scale, shift,
  intensity), on the unlabelled batch as on the labelled one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.views import SegAugment
from . import semi
from .contract import FinetuneBase


class UniMatch(FinetuneBase):
    """``forward({"images", "masks", "unlabelled"}) -> {"loss", ...}``.

    Args:
        model: the segmentation model being fine-tuned.
        loss: the labelled loss ``(logits, masks) -> scalar``.
        augment: the weak augmentation (None: none).
        steps: the run's optimiser steps (the warm-up is a share of them).
        warmup_fraction: share of the steps on the labelled loss alone, before any pseudo-label counts
            (UniMatch: none; here the pseudo-labels of a network trained on one labelled case for a
            few dozen steps are confident on background alone and pull it there: README).
        threshold: confidence a pseudo-label needs to count (UniMatch: 0.95 on ACDC).
        fp_dropout: channel dropout of the feature-perturbation branch (UniMatch: 0.5).
        cutmix_p: probability of a CutMix box in each strong view (UniMatch: 0.5).
        unlabelled_batch: unlabelled images per step; None = the labelled batch size (as UniMatch).
    """

    needs_unlabelled = True

    def __init__(self, model: nn.Module, loss: nn.Module, augment: SegAugment | None = None,
                 steps: int = 1, warmup_fraction: float = 0.5, threshold: float = 0.95, fp_dropout: float = 0.5,
                 cutmix_p: float = 0.5, unlabelled_batch: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.augment = augment
        self.warmup_steps = int(round(float(warmup_fraction) * int(steps)))
        self.threshold = float(threshold)
        self.fp_dropout = float(fp_dropout)
        self.cutmix_p = float(cutmix_p)
        self.unlabelled_batch = unlabelled_batch

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        x, y, u = batch["images"], batch["masks"], batch["unlabelled"]
        if self.augment is not None and self.training:
            x, y = self.augment(x, y)
            u, _ = self.augment(u, None)  # the weak view
        m = u.shape[0]
        if int(batch.get("step", self.warmup_steps)) < self.warmup_steps:
            loss_x = self.loss(self.model(x), y)
            return {"loss": loss_x, "loss_labelled": loss_x.detach()}
        # labelled and unlabelled in passes of their own: in one BatchNorm batch (as UniMatch) a few
        # labelled frames among many unlabelled ones are told apart by the batch statistics, and the
        # network learns that shortcut instead of the anatomy (measured: README)
        pred_x = self.model(x)
        pred_w = self.model(u)
        with semi.running_stats_kept(self.model):
            # the weak view's features, channel-dropped, decoded
            pred_fp = self.model(u, perturb=lambda fs: [F.dropout2d(f, self.fp_dropout, training=True) for f in fs])
        with torch.no_grad():
            pseudo, conf, keep = semi.confident(pred_w.detach().float().softmax(1), self.threshold)
            mate = semi.partner(m, u.device)
            views, targets, weights = [], [], []
            for _ in range(2):
                s = semi.strong_view(u)
                box = semi.cutmix_boxes(m, *u.shape[-2:], p=self.cutmix_p, device=u.device)
                views.append(torch.where(box[:, None], s[mate], s))
                targets.append(torch.where(box, pseudo[mate], pseudo))
                weights.append(torch.where(box, keep[mate], keep))
        with semi.running_stats_kept(self.model):
            pred_s1, pred_s2 = self.model(torch.cat(views)).chunk(2)
        loss_x = self.loss(pred_x, y)
        loss_s = (semi.masked_dice_ce(pred_s1, targets[0], weights[0], pooled=True)
                  + semi.masked_dice_ce(pred_s2, targets[1], weights[1], pooled=True)) / 2
        loss_fp = semi.masked_dice_ce(pred_fp, pseudo, keep, pooled=True)
        loss = (loss_x + 0.5 * loss_s + 0.5 * loss_fp) / 2
        return {"loss": loss, "loss_labelled": loss_x.detach(), "loss_strong": loss_s.detach(),
                "loss_fp": loss_fp.detach(), "confident": keep.mean()}
