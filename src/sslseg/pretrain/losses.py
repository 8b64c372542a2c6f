"""Pretraining losses as pure functions (no state, no modules)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy (SimCLR's NT-Xent).

    "We randomly sample a minibatch of N examples and define the contrastive
    prediction task on pairs of augmented examples derived from the minibatch,
    resulting in 2N data points ... the other 2(N - 1) augmented examples within
    a minibatch [are treated] as negative examples." [0]  The loss is averaged
    over all 2N anchors, as in SimCLR.

    [0] Chen et al., SimCLR, ICML 2020, https://arxiv.org/abs/2002.05709

    Args:
        z1: ``(N, D)`` projections of the first views.
        z2: ``(N, D)`` projections of the second views (row i pairs with z1 row i).
        temperature: tau; contrastive-echo used 0.1.

    Returns:
        scalar loss. For N identical vectors the value is ``log(2N - 1)``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent expects two (N, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    # (2N, D) @ (D, 2N) -> (2N, 2N) cosine similarities / tau; the diagonal is masked
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    # anchor i's positive is i + N (and i + N's is i)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim.float(), target)


def nt_xent_aligned_value(n: int) -> float:
    """Analytic NT-Xent for N identical vectors: every logit is equal, so log(2N - 1)."""
    return math.log(2 * n - 1)
