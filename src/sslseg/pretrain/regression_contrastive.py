"""Masked-noise regression and global contrastive learning in one run.

Beyond both source papers: the ISMRM abstract compares a regression pretext
(whole UNet) with a contrastive one (encoder, then decoder) as alternatives.
Here both losses are optimised together, ``w_reg * masked L1 + w_con * global
contrastive``: the reconstruction trains encoder and decoder on local
structure, the contrastive term shapes the encoder's global representation.
The default weights (1 and 0.1) put the two terms on similar gradient scales
at the start (L1 ~ 0.5, NT-Xent ~ log(2N)).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batches import images_and_partitions
from .contract import PretextBase
from .global_local import GlobalContrastive
from .regression import MaskedRegression


class RegressionContrastive(PretextBase):
    """``forward(batch) -> {"loss", "regression", "contrastive"}``: the weighted sum of both losses; trains
    encoder and decoder (the contract's defaults otherwise: one parameter group, no restart)."""

    trains = ("encoder", "decoder")

    def __init__(self, model: nn.Module, w_reg: float = 1.0, w_con: float = 0.1, mask_fraction: float = 0.25,
                 noise_std: float = 1.0, strategy: str = "GR", temperature: float = 0.1, n_parts: int = 4,
                 mask_patch: int = 1, gather_distributed: bool = True) -> None:
        super().__init__()
        self.regression = MaskedRegression(model, mask_fraction, noise_std, mask_patch)
        self.contrastive = GlobalContrastive(model, strategy, temperature, n_parts,
                                             gather_distributed=gather_distributed)
        self.n_parts = n_parts
        self.w_reg, self.w_con = w_reg, w_con

    @property
    def partitions(self) -> int | None:
        """Partitions per case of the batch (None under G^R, this method's default)."""
        return self.contrastive.partitions

    def forward(self, batch) -> dict[str, torch.Tensor]:
        images, partition = images_and_partitions(batch)
        reg = self.regression(images)["loss"]
        con = self.contrastive.global_loss(images, partition)
        return {"loss": self.w_reg * reg + self.w_con * con, "regression": reg.detach(), "contrastive": con.detach()}
