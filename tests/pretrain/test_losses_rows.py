"""Distributed contrastive losses without the full matrix: each rank's rows, W ranks simulated in one process.

On W processes each rank computes only its own anchors' rows (2n x 2Wn) against
every rank's gathered keys. Here the W ranks are simulated in one process: the
batch is split, each simulated rank's share is computed against the keys of the
whole batch, and the shares are averaged. The keys are not detached: on W
processes a rank's rows get, through the gather's backward, the gradients every
rank's share sends them, which is what one autograd graph over all the shares gives.
The two-process run itself is tested in tests/engine/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslseg.pretrain.losses import (
    global_contrastive,
    global_contrastive_rows,
    nt_xent,
    nt_xent_rows,
)

W, N, D, TAU = 3, 4, 6, 0.3


def _batch():
    g = torch.Generator().manual_seed(7)
    z1 = torch.randn(W * N, D, generator=g, requires_grad=True)
    z2 = torch.randn(W * N, D, generator=g, requires_grad=True)
    # partitions of different sizes: under G^D the ranks hold different numbers of (anchor, positive) pairs
    partition = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # 6, 4 and 2 images
    return z1, z2, partition


def _simulated(z1, z2, partition, strategy):
    keys = F.normalize(torch.cat([z1, z2]), dim=1)  # [view 1 of every rank; view 2 of every rank]
    shares = []
    for rank in range(W):
        mine = slice(rank * N, (rank + 1) * N)
        z = F.normalize(torch.cat([z1[mine], z2[mine]]), dim=1)
        if strategy is None:
            shares.append(nt_xent_rows(z, keys, rank, TAU))
        else:
            shares.append(global_contrastive_rows(z, keys, partition, rank, strategy, TAU))
        assert shares[-1].shape == ()
    return torch.stack(shares).mean()


@pytest.mark.parametrize("strategy", [None, "GR", "GD-", "GD"])
def test_rank_rows_average_to_the_global_loss_and_gradient(strategy):
    z1, z2, partition = _batch()
    if strategy is None:
        full = nt_xent(z1, z2, TAU)
    else:
        full = global_contrastive(z1, z2, partition, strategy, TAU)
    g_full = torch.autograd.grad(full, (z1, z2))
    ranks = _simulated(z1, z2, partition, strategy)
    g_ranks = torch.autograd.grad(ranks, (z1, z2))
    assert abs(float((ranks - full).detach())) < 1e-6, (float(ranks.detach()), float(full.detach()))
    for a, b in zip(g_ranks, g_full, strict=True):
        assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())


def test_a_rank_block_is_its_rows_of_the_full_matrix():
    """The rows themselves: rank 1's NT-Xent share is the mean over its anchors of the full matrix's rows."""
    z1, z2, _ = _batch()
    z_all = F.normalize(torch.cat([z1, z2]), dim=1).detach()
    sim = z_all @ z_all.t() / TAU
    sim.fill_diagonal_(float("-inf"))
    m = W * N
    target = torch.cat([torch.arange(m, 2 * m), torch.arange(0, m)])
    per_anchor = F.cross_entropy(sim, target, reduction="none")
    rows = torch.cat([torch.arange(N, 2 * N), torch.arange(m + N, m + 2 * N)])  # rank 1's anchors, both views
    z = torch.cat([z_all[N:2 * N], z_all[m + N:m + 2 * N]])
    assert torch.allclose(nt_xent_rows(z, z_all, 1, TAU), per_anchor[rows].mean(), atol=1e-6)
