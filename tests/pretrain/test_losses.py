import math

import pytest
import torch
from monai.losses import ContrastiveLoss

from sslseg.pretrain.losses import nt_xent


@pytest.mark.parametrize("n,d,t", [(4, 8, 0.1), (16, 32, 0.5), (7, 3, 1.0)])
def test_nt_xent_matches_monai(n, d, t):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    ours = nt_xent(z1, z2, t)
    ref = ContrastiveLoss(temperature=t)(z1, z2)
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)


@pytest.mark.parametrize("n", [2, 5, 32])
def test_nt_xent_identical_vectors_is_log_2n_minus_1(n):
    z = torch.ones(n, 4)
    assert nt_xent(z, z.clone(), 0.1).item() == pytest.approx(math.log(2 * n - 1), rel=1e-5)


def test_nt_xent_symmetric_in_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert torch.allclose(nt_xent(z1, z2), nt_xent(z2, z1), atol=1e-6)


def test_nt_xent_prefers_matching_pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g))
    shuffled = nt_xent(z, z[torch.randperm(8, generator=g)])
    assert aligned < shuffled


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(4, 3), torch.zeros(5, 3))
