"""Masked-noise regression pretraining (Umapathy et al., ISMRM 2022 #3914).

"using a mask M, a percentage of the pixels in the input image are replaced by
Gaussian noise. The objective is to minimize the L1 reconstruction loss
evaluated only at corrupted pixels to prevent the CNN from learning identity
relationship" [0] (after Noise2Void [1]). The whole UNet, encoder and decoder,
is trained; a 1x1 reconstruction head of its own maps the decoder output back
to image channels (the segmentation head is left for fine-tuning).

Defaults (the abstract gives no numbers): 25% of the pixels corrupted with
N(0, 1) noise in normalised units, so that the network must use context.
Deviation: by default the noise replaces aligned 8x8 squares, not single
pixels (``mask_patch=8``; ``mask_patch=1`` is the abstract's pixel mask). A
single masked pixel can be filled in from its neighbours by the first stages
and the skip connections alone; on synthetic-echo the pixel mask lost to
random init (-0.079 Dice at 1 labelled video after 1600 steps) and squares
gained (+0.046 over 6 labelled subsets). README "Does it pay off?".

[0] https://doi.org/10.58530/2022/3914
[1] Krull et al., Noise2Void, CVPR 2019
"""

from __future__ import annotations

import torch
from torch import nn

from ..augment.masking import noise_mask
from ..errors import UserError
from .contract import PretextBase
from .losses import masked_l1


def reconstruction_head(model: nn.Module, out_channels: int) -> nn.Conv2d:
    """A 1x1 conv from the model's decoder output to image channels."""
    width = model.head.in_channels
    return nn.Conv2d(width, out_channels, 1)


class MaskedRegression(PretextBase):
    """``forward(images) -> {"loss": masked L1}``; trains encoder and decoder.

    Args:
        model: a ``SegmentationModel`` (encoder, decoder, head).
        mask_fraction: fraction of pixels replaced by noise.
        noise_std: standard deviation of the replacement noise (normalised units).
        mask_patch: side of the masked squares in pixels (default 8; 1: single pixels, as in the abstract).
    """

    trains = ("encoder", "decoder")
    partitions = None  # plain frames drawn across cases (the contract: sslseg.pretrain.contract)

    def __init__(self, model: nn.Module, mask_fraction: float = 0.25, noise_std: float = 1.0,
                 mask_patch: int = 8) -> None:
        super().__init__()
        self.model = model
        in_ch = _in_channels(model)
        self.recon = reconstruction_head(model, in_ch)
        self.mask_fraction = mask_fraction
        self.noise_std = noise_std
        self.mask_patch = mask_patch

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        out = self.recon(self.model.decoder(self.model.encoder(x)))
        if out.shape[-2:] != x.shape[-2:]:
            # decoders that stop at a coarser stride (DeepLabV3: 1/8) are upsampled like their logits
            out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        corrupted, mask = noise_mask(images, self.mask_fraction, self.noise_std, patch=self.mask_patch)
        pred = self.reconstruct(corrupted)
        return {"loss": masked_l1(pred, images, mask)}


def _in_channels(model: nn.Module) -> int:
    for m in model.encoder.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise UserError("the model's encoder has no convolution")
