"""The one model contract: ``encoder -> decoder -> head``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Wires an encoder, a decoder and a 1x1 head; returns logits ``(B, K, H, W)``.

    ``model.encoder(x)`` returns the list of stage features and declares
    ``encoder.out_channels``; pretraining methods train ``model.encoder`` (and
    the decoder for local contrastive and regression pretext tasks).

    Inputs whose height or width is not a multiple of ``encoder.reduction`` are
    padded (reflect) and the logits cropped back, so any size works.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        r = int(getattr(self.encoder, "reduction", 1))
        ph, pw = (-h) % r, (-w) % r
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        features = self.encoder(x)
        decoded = self.decoder(features)
        logits = self.head(decoded)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
