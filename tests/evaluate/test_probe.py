import math

import pytest
import torch
from torch import nn

from sslseg.evaluate.probe import probe_encoder, ridge_fit_predict


def test_ridge_without_penalty_is_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    y = x @ torch.randn(5, 2, generator=g, dtype=torch.float64) + 0.1 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    xt = torch.randn(30, 5, generator=g, dtype=torch.float64)
    got = ridge_fit_predict(x, y, xt, ridge=0.0)
    a = torch.cat([x, torch.ones(200, 1, dtype=x.dtype)], 1)  # standardising does not change an OLS fit's predictions
    w = torch.linalg.lstsq(a, y).solution
    assert torch.allclose(got, torch.cat([xt, torch.ones(30, 1, dtype=x.dtype)], 1) @ w, atol=1e-8)
    # a penalty shrinks the fit towards the mean
    shrunk = ridge_fit_predict(x, y, xt, ridge=10.0)
    assert (shrunk - y.mean(0)).norm() < (got - y.mean(0)).norm()


class _Fixed(nn.Module):
    """An "encoder" with two stages: one that is the image, one of noise unrelated to it."""

    def __init__(self):
        super().__init__()
        self.g = torch.Generator().manual_seed(7)

    def forward(self, x):
        return [x, torch.randn(x.shape[0], 3, x.shape[2] // 2, x.shape[3] // 2, generator=self.g)]


def _discs(n, seed):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    masks = torch.zeros(n, 32, 32, dtype=torch.long)
    for i in range(n):
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([12.0, 12.0, 4.0]) + torch.tensor([10.0, 10.0, 5.0]))
        masks[i] = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).long()
    images = masks[:, None].float() + 0.1 * torch.randn(n, 1, 32, 32, generator=g)
    return images, masks


def test_probe_finds_the_stage_that_carries_the_mask():
    enc = _Fixed().train()
    (xa, ya), (xb, yb) = _discs(12, 0), _discs(6, 1)
    scores = probe_encoder(enc, xa, ya, xb, yb, grid=32)
    assert list(scores) == ["stage0", "stage1", "all"]
    assert scores["stage0"] > 0.95  # the image is the mask plus a little noise
    assert scores["stage1"] == 0.0  # noise: the fit predicts the foreground fraction (< 0.5) everywhere
    assert scores["all"] > 0.95
    assert enc.training  # the caller's mode is restored


def test_effective_rank_counts_equal_orthogonal_directions():
    from sslseg.evaluate.probe import effective_rank

    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for k in (1, 3, 7):
        rows = torch.cat([q[:k], -q[:k]]) * 5.0  # +-v_i: zero mean, k directions of equal energy
        assert effective_rank(rows) == pytest.approx(k, abs=1e-9)
        assert effective_rank(q[:k], center=False) == pytest.approx(k, abs=1e-9)
    # singular values 3 : 1 -> p = (0.75, 0.25), erank = exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548
    rows = torch.cat([3 * q[:1], -3 * q[:1], q[1:2], -q[1:2]])
    assert effective_rank(rows) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), abs=1e-9)
    # a common offset is no direction once centred; uncentred it is one more
    offset = torch.cat([q[:2], -q[:2]]) + 100 * q[5]
    assert effective_rank(offset) == pytest.approx(2, abs=1e-9)
    assert effective_rank(offset, center=False) < 1.5  # dominated by the offset
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def test_pooled_features_of_an_encoder():
    from sslseg.evaluate.probe import pooled_features
    from sslseg.models.build import build_model

    torch.manual_seed(0)
    model = build_model("unet", base_channels=4, depth=3).train()
    x = torch.randn(5, 1, 32, 32)
    got = pooled_features(model.encoder, x, batch=2)
    assert got.shape == (5, model.encoder.out_channels[-1]) and model.encoder.training
    model.encoder.eval()
    assert torch.allclose(got, model.encoder(x)[-1].mean(dim=(2, 3)), atol=1e-6)
