"""SimCLR (Chen et al., ICML 2020) on a segmentation model's encoder.

"A stochastic data augmentation module ... transforms any given data example
randomly resulting in two correlated views ... A neural network base encoder f(.)
... A small neural network projection head g(.) ... A contrastive loss function"
[0].  contrastive-echo pretrained the UNet / ResNet-50 encoder this way with
temperature 0.1, Adam, lr 1e-3 [1].

Here the encoder is ``model.encoder``; its deepest stage is global-average
pooled and fed to a projection head (Linear -> BN -> ReLU -> Linear, as in [1]).
Deviation: the head's hidden width defaults to the encoder's deepest width
(contrastive-echo: 2048 for ResNet-50, 512 for its UNet), output 128.

[0] https://arxiv.org/abs/2002.05709
[1] https://github.com/BioMedIA-MBZUAI/contrastive-echo (src/models/simclr_model.py)
"""

from __future__ import annotations

import torch
from torch import nn

from ..augment.views import ViewAugment
from ..models.heads import ProjectionHead
from .contract import PretextBase
from .losses import check_temperature, nt_xent


class SimCLR(PretextBase):
    """SimCLR pretext task. ``forward(images) -> {"loss": ...}``.

    Args:
        model: a ``SegmentationModel``; only ``model.encoder`` is trained.
        temperature: NT-Xent temperature (0.1, contrastive-echo's value).
        proj_hidden: hidden width of the projection head (default: encoder's deepest width).
        proj_dim: output width of the projection head (128, as in SimCLR).
        augment: the view recipe (see :class:`ViewAugment`).
        gather_distributed: on several processes, negatives come from every rank's
            views (SimCLR's global batch); no effect on one process.

    Shape: ``images`` is ``(B, C, H, W)``, normalised.
    """

    trains = ("encoder",)
    partitions = None  # plain frames drawn across cases (the contract: sslseg.pretrain.contract)

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.1,
        proj_hidden: int | None = None,
        proj_dim: int = 128,
        augment: ViewAugment | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        feat = self.encoder.out_channels[-1]
        self.projector = ProjectionHead(feat, proj_hidden or feat, proj_dim)
        self.temperature = check_temperature(temperature)
        self.augment = augment or ViewAugment()
        self.gather_distributed = gather_distributed

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        v1, v2 = self.augment.views(images, 2)
        # both views through the encoder in one batch: (2B, C, H, W)
        h = self.encoder(torch.cat([v1, v2]))[-1]
        z = self.projector(h)
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.temperature, self.gather_distributed)
        return {"loss": loss}
