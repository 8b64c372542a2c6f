import math

import pytest
import torch
import torch.nn.functional as F

from sslseg.pretrain.losses import (
    byol_loss,
    global_contrastive,
    local_contrastive,
    masked_l1,
    nt_xent,
)


def test_byol_loss_identities():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 8, generator=g)
    assert byol_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(z, -z).item() == pytest.approx(4.0, abs=1e-6)
    assert byol_loss(z, 3 * z).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant
    # orthogonal vectors: cos = 0 -> 2
    assert byol_loss(torch.eye(4)[:2], torch.eye(4)[2:]).item() == pytest.approx(2.0)


def test_masked_l1_only_counts_masked_pixels():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 1, 8, 8, generator=g)
    pred = target.clone()
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:4, 2:4] = True
    pred[~mask] += 5.0  # errors outside the mask are ignored
    assert masked_l1(pred, target, mask).item() == pytest.approx(0.0)
    pred[mask] += 0.5
    assert masked_l1(pred, target, mask).item() == pytest.approx(0.5)


def _global_reference(z1, z2, part, strategy, t):
    """Per-anchor loop, straight from the definitions."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    p2 = torch.cat([part, part])
    terms = []
    for i in range(n2):
        view = (i + n) % n2
        same = [j for j in range(n2) if j != i and p2[j] == p2[i]]
        if strategy == "GR":
            pos, neg = [view], [j for j in range(n2) if j not in (i, view)]
        elif strategy == "GD-":
            pos, neg = [view], [j for j in range(n2) if j != i and p2[j] != p2[i]]
        else:
            pos, neg = same, [j for j in range(n2) if p2[j] != p2[i]]
        for p in pos:
            s_p = z[i] @ z[p] / t
            denom = torch.exp(s_p) + sum(torch.exp(z[i] @ z[k] / t) for k in neg)
            terms.append(-torch.log(torch.exp(s_p) / denom))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("strategy", ["GR", "GD-", "GD"])
def test_global_contrastive_matches_loop(strategy):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    part = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ours = global_contrastive(z1, z2, part, strategy, 0.5)
    assert ours.item() == pytest.approx(_global_reference(z1, z2, part, strategy, 0.5).item(), rel=1e-5)


def test_global_gr_is_nt_xent():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    assert torch.allclose(global_contrastive(z1, z2, None, "GR", 0.1), nt_xent(z1, z2, 0.1), atol=1e-5)


def test_gd_reduces_to_gr_when_partitions_distinct():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    part = torch.arange(4)
    gr = global_contrastive(z1, z2, part, "GR")
    assert torch.allclose(global_contrastive(z1, z2, part, "GD"), gr, atol=1e-6)
    assert torch.allclose(global_contrastive(z1, z2, part, "GD-"), gr, atol=1e-6)
    shared = torch.tensor([0, 0, 1, 1])
    assert not torch.allclose(global_contrastive(z1, z2, shared, "GD-"), gr, atol=1e-4)
    assert not torch.allclose(global_contrastive(z1, z2, shared, "GD"), gr, atol=1e-4)


def test_unknown_global_strategy():
    with pytest.raises(ValueError, match="GR, GD-, GD"):
        global_contrastive(torch.zeros(2, 2), torch.zeros(2, 2), None, "GX")


def test_local_contrastive_is_per_image_nt_xent():
    g = torch.Generator().manual_seed(6)
    v1, v2 = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    ref = torch.stack([nt_xent(v1[b], v2[b], 0.1) for b in range(3)]).mean()
    assert torch.allclose(local_contrastive(v1, v2, 0.1), ref, atol=1e-5)


def test_gd_at_collapse_is_log_one_plus_negatives():
    # 6 cases x 4 partitions, two views: each anchor has 11 positives and 36 negatives; with every
    # embedding equal, each term is -s + log(e^s + 36 e^s) = log 37 (the plateau seen on echo cines)
    z = torch.ones(24, 8)
    part = torch.arange(24) % 4
    assert global_contrastive(z, z, part, "GD").item() == pytest.approx(math.log(37), rel=1e-6)
    assert global_contrastive(z, z, part, "GR").item() == pytest.approx(math.log(47), rel=1e-6)
    # and G^D does better than collapse when embeddings follow the partition
    spread = torch.nn.functional.one_hot(part, 8).float()
    assert global_contrastive(spread, spread, part, "GD").item() < math.log(37) - 1
