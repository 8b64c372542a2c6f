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


@pytest.mark.parametrize("size", [(64, 64), (10, 13)])
def test_noise_mask_patches_are_aligned_squares(size):
    g = torch.Generator().manual_seed(1)
    h, w = size
    x = torch.randn(8, 1, h, w, generator=g)
    y, m = noise_mask(x, 0.3, 1.0, generator=g, patch=4)
    assert m.shape == (8, 1, h, w)
    # every 4x4 cell of the grid anchored at (0, 0) is all masked or all kept, border cells included
    for i in range(0, h, 4):
        for j in range(0, w, 4):
            cell = m[:, :, i:i + 4, j:j + 4].flatten(1)
            assert torch.equal(cell.all(1), cell.any(1))
    keep = ~m
    assert torch.equal(y[keep], x[keep])
    if size == (64, 64):  # 8 x 256 cells, each masked with probability 0.3
        assert abs(m.float().mean().item() - 0.3) < 0.03


def test_noise_mask_default_masks_single_pixels():
    x = torch.randn(2, 1, 16, 16)
    _, m = noise_mask(x, 0.25, 1.0, generator=torch.Generator().manual_seed(3))
    expected = torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(3)) < 0.25  # one draw per pixel
    assert torch.equal(m, expected)


@pytest.mark.parametrize("patch", [0, 2.5, -1])
def test_noise_mask_rejects_bad_patch(patch):
    with pytest.raises(ValueError, match="mask patch"):
        noise_mask(torch.zeros(1, 1, 4, 4), 0.25, patch=patch)
