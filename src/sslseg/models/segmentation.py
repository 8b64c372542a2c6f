"""The one model contract: ``encoder -> decoder -> head``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The parts of every segmentation model, in the order data flows through them.
PARTS = ("encoder", "decoder", "head")


class SegmentationModel(nn.Module):
    """Wires an encoder, a decoder and a 1x1 head; returns logits ``(B, K, H, W)``.

    ``model.encoder(x)`` returns the list of stage features and declares
    ``encoder.out_channels``; pretraining methods train ``model.encoder`` (and
    the decoder for local contrastive and regression pretext tasks).

    Inputs whose height or width is not a multiple of ``encoder.reduction`` are
    padded (reflect) and the logits cropped back, so any size works.

    ``part_of(key)`` names the part a state_dict key belongs to (here its first
    component); a model that keeps other module names overrides it, as
    :class:`sslseg.models.deeplabv3.DeepLabV3` does for torchvision's naming.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def part_of(self, key: str) -> str | None:
        """``encoder``, ``decoder`` or ``head`` for a state_dict key; None for a key of no part."""
        first = key.split(".", 1)[0]
        return first if first in PARTS else None

    def forward(self, x: torch.Tensor, perturb=None) -> torch.Tensor:
        """Logits of ``x``; ``perturb(features) -> features`` (optional) acts between encoder and decoder
        and may return more samples than it got (UniMatch's feature-perturbation branch)."""
        h, w = x.shape[-2:]
        r = int(getattr(self.encoder, "reduction", 1))
        ph, pw = (-h) % r, (-w) % r
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        features = self.encoder(x)
        if perturb is not None:
            features = perturb(features)
        decoded = self.decoder(features)
        logits = self.head(decoded)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
