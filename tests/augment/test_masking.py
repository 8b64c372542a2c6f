import pytest
import torch

from sslseg.augment.masking import noise_mask


def test_noise_mask_fraction_and_untouched_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 64, 64, generator=g)
    y, m = noise_mask(x, 0.25, 1.0, generator=g)
    assert m.shape == (4, 1, 64, 64) and m.dtype == torch.bool
    assert abs(m.float().mean().item() - 0.25) < 0.02
    keep = ~m.expand_as(x)
    assert torch.equal(y[keep], x[keep])  # uncorrupted pixels are the input
    assert not torch.equal(y[~keep], x[~keep])


def test_noise_mask_rejects_bad_fraction():
    with pytest.raises(ValueError):
        noise_mask(torch.zeros(1, 1, 4, 4), 1.5)
