"""BYOL (Grill et al., NeurIPS 2020) on a segmentation model's encoder.

"BYOL uses two neural networks ... the online and target networks ... we train
the online network to predict the target network representation of the same
image under a different augmented view ... the target network ... parameters
are an exponential moving average of the online parameters" [0].
contrastive-echo pretrained ResNet-50 / UNet encoders this way [1].

Deviations: the projector and predictor are sized for small medical encoders
(hidden = 2 x the encoder's deepest width, output 128; the paper uses 4096 / 256);
AdamW instead of LARS; grayscale-native views (see :class:`ViewAugment`).

Against collapse (an option, off by default): "we hypothesize that the main
role of BYOL's moving-averaged target network is to ensure the near-optimality
of the predictor over training" [0]; Tian et al. [2] show that a larger
learning rate for the predictor than for the rest shrinks the basin of the
collapsed solution. ``predictor_lr_ratio`` trains the predictor at that multiple
of the stage's learning rate (10 is the usual cure; on synthetic-echo it did
not lift the effective rank, 13.0 -> 13.9 against ~30 for random encoders, and
Dice fell: README, "Does it pay off?"; so the default stays 1). The projector and
predictor already hold BatchNorm (Linear-BN-ReLU-Linear, as the paper's), and
the target runs in training mode, so both branches use batch statistics.

[0] https://arxiv.org/abs/2006.07733
[1] https://github.com/BioMedIA-MBZUAI/contrastive-echo (src/models/byol_model.py)
[2] Tian, Chen & Ganguli, "Understanding self-supervised learning dynamics
    without contrastive pairs", ICML 2021, https://arxiv.org/abs/2102.06810
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..augment.views import ViewAugment
from ..errors import UserError
from ..models.heads import ProjectionHead
from .contract import PretextBase
from .ema import cosine_momentum, update_momentum
from .losses import byol_loss


class BYOL(PretextBase):
    """BYOL pretext task. ``forward(images) -> {"loss": ...}``; call ``after_step`` for the EMA.

    Args:
        model: a ``SegmentationModel``; only ``model.encoder`` is trained.
        proj_hidden, proj_dim: projector (and predictor) widths.
        momentum: base EMA momentum tau_base (0.996, the paper's), raised to 1 by a cosine schedule.
        predictor_lr_ratio: the predictor's learning rate as a multiple of the stage's (1: the
            paper's single rate; 10 against collapse, see the module docstring).
        augment: the view recipe.
    """

    trains = ("encoder",)
    partitions = None  # plain frames drawn across cases (the contract: sslseg.pretrain.contract)

    def __init__(
        self,
        model: nn.Module,
        proj_hidden: int | None = None,
        proj_dim: int = 128,
        momentum: float = 0.996,
        predictor_lr_ratio: float = 1.0,
        augment: ViewAugment | None = None,
    ) -> None:
        super().__init__()
        if not predictor_lr_ratio > 0:
            raise UserError(f"byol: predictor_lr_ratio must be > 0, got {predictor_lr_ratio!r}")
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
        self.predictor_lr_ratio = float(predictor_lr_ratio)
        self.augment = augment or ViewAugment()

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups: the predictor at ``lr * predictor_lr_ratio``, the rest at ``lr``.

        Only parameters that take gradients (the target networks never do).
        """
        pred = [p for p in self.predictor.parameters() if p.requires_grad]
        ids = {id(p) for p in pred}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": pred, "lr": lr * self.predictor_lr_ratio}]

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
