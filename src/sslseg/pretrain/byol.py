"""BYOL (Grill et al., NeurIPS 2020) on a segmentation model's encoder.

"BYOL uses two neural networks ... the online and target networks ... we train
the online network to predict the target network representation of the same
image under a different augmented view ... the target network ... parameters
are an exponential moving average of the online parameters" [0].
contrastive-echo pretrained ResNet-50 / UNet encoders this way [1].

Deviations: the projector and predictor are sized for small medical encoders
(hidden = 2 x the encoder's deepest width, output 128; the paper uses 4096 / 256);
AdamW instead of LARS; grayscale-native views (see :class:`ViewAugment`).

[0] https://arxiv.org/abs/2006.07733
[1] https://github.com/BioMedIA-MBZUAI/contrastive-echo (src/models/byol_model.py)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..augment.views import ViewAugment
from ..models.heads import ProjectionHead
from .ema import cosine_momentum, update_momentum
from .losses import byol_loss


class BYOL(nn.Module):
    """BYOL pretext task. ``forward(images) -> {"loss": ...}``; call ``after_step`` for the EMA.

    Args:
        model: a ``SegmentationModel``; only ``model.encoder`` is trained.
        proj_hidden, proj_dim: projector (and predictor) widths.
        momentum: base EMA momentum tau_base (0.996, the paper's), raised to 1 by a cosine schedule.
        augment: the view recipe.
    """

    trains = ("encoder",)
    partitions = None  # plain frames drawn across cases (the batch interface: see sslseg.pretrain.build)

    def __init__(
        self,
        model: nn.Module,
        proj_hidden: int | None = None,
        proj_dim: int = 128,
        momentum: float = 0.996,
        augment: ViewAugment | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        feat = self.encoder.out_channels[-1]
        hidden = proj_hidden or 2 * feat
        self.projector = ProjectionHead(feat, hidden, proj_dim, bias_last=True)
        self.predictor = ProjectionHead(proj_dim, hidden, proj_dim, bias_last=True)
        # the target never receives gradients: it follows the online network by EMA only
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum = momentum
        self.augment = augment or ViewAugment()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        v1, v2 = self.augment.views(images, 2)
        both = torch.cat([v1, v2])
        p1, p2 = self.predictor(self.projector(self.encoder(both)[-1])).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(both)[-1]).chunk(2)
        # symmetric: each view's prediction regresses the target projection of the other view
        loss = byol_loss(p1, z2.detach()) + byol_loss(p2, z1.detach())
        return {"loss": loss}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(step, total_steps, self.base_momentum)
        update_momentum(self.encoder, self.target_encoder, m)
        update_momentum(self.projector, self.target_projector, m)
