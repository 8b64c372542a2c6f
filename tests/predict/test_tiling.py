"""Sliding windows through MONAI's ``sliding_window_inference``, checked against the hand-written tiling it replaced.

The reference below is the project's former implementation (evenly spaced
windows, nnU-Net's Gaussian importance map), kept here as the oracle.  MONAI
places windows on a stride grid (``int(size * (1 - overlap))``, the last one
moved to the edge) and centres its Gaussian on ``size // 2``: where the grids
coincide the blended probabilities agree to the last digits of the importance
map; elsewhere only pixels whose classes are near a tie can differ.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslseg.data.batches import Normalizer, frames_to_tensor
from sslseg.evaluate.inference import tiled_probabilities
from sslseg.models.build import build_model
from sslseg.predict.run import Predictor


def _window_starts(length: int, size: int, overlap: float) -> list[int]:
    if length <= size:
        return [0]
    stride = max(1, int(size * (1.0 - overlap)))
    n = math.ceil((length - size) / stride) + 1
    return [int(round(v)) for v in np.linspace(0, length - size, n)]


def _gaussian(h: int, w: int, sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    def axis(n: int) -> torch.Tensor:
        c = (n - 1) / 2.0
        return torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - c) / max(n * sigma_scale, 1e-3)) ** 2)

    g = axis(h)[:, None] * axis(w)[None, :]
    g = g / g.max()
    return g.clamp_min(max(float(g[g > 0].min()), 1e-6))


@torch.inference_mode()
def _reference_tiled(model, x: torch.Tensor, size: int, overlap: float = 0.5, weight=None) -> torch.Tensor:
    """The former ``Predictor._tiled``: Gaussian-weighted mean of window softmaxes ``(B, K, H, W)``.

    ``weight``: another importance map (of the window's size) in place of the Gaussian.
    """
    b, _, h, w = x.shape
    wh, ww = min(size, h), min(size, w)
    g = _gaussian(wh, ww) if weight is None else weight
    acc, wsum = None, torch.zeros(h, w)
    for t in _window_starts(h, size, overlap):
        for left in _window_starts(w, size, overlap):
            p = F.softmax(model(x[..., t : t + wh, left : left + ww]).float(), dim=1) * g
            if acc is None:
                acc = torch.zeros((b, p.shape[1], h, w))
            acc[..., t : t + wh, left : left + ww] += p
            wsum[t : t + wh, left : left + ww] += g
    return acc / wsum


def _unet(seed: int = 0, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", in_channels=1, num_classes=classes, base_channels=4, depth=2).eval()


def _probabilities(p: Predictor, frames: np.ndarray) -> torch.Tensor:
    x = p.normalizer(frames_to_tensor(frames, None))
    with torch.inference_mode():
        return tiled_probabilities(p.model, x, p.image_size, p.batch_size, p.overlap, p.tta)[0]


@pytest.mark.parametrize("shape", [(2, 64, 96), (1, 48, 80), (1, 24, 96)])
def test_monai_windows_equal_the_reference_where_the_grids_coincide(shape):
    """(L - 32) divisible by the stride 16 (or L <= 32): the same windows.

    With MONAI's importance map the reference gives MONAI's result exactly; with
    its own Gaussian (centred half a pixel away) the labels are the same.
    """
    from monai.data.utils import compute_importance_map

    model = _unet()
    p = Predictor(model, Normalizer(0.2, 0.2), 32, tile=True, batch_size=5)
    frames = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    x = p.normalizer(frames_to_tensor(frames, None))
    roi = (min(32, shape[1]), min(32, shape[2]))
    monai_map = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125).float()
    got = _probabilities(p, frames)
    torch.testing.assert_close(got, _reference_tiled(model, x, 32, weight=monai_map), atol=1e-5, rtol=1e-5)
    # the two Gaussians, peak 1: the same to 1e-3
    assert (monai_map / monai_map.max() - _gaussian(*roi)).abs().max() < 2e-3
    ref = _reference_tiled(model, x, 32)
    assert (got - ref).abs().mean() < 1e-3
    np.testing.assert_array_equal(p.predict(frames).labels, ref.argmax(1).numpy())


@pytest.mark.parametrize("shape", [(2, 70, 97), (1, 33, 95)])
def test_monai_windows_agree_with_the_reference_elsewhere(shape):
    """Other sizes: windows shifted by a few pixels; the labels still agree almost everywhere."""
    model = _unet(1)
    p = Predictor(model, Normalizer(0.2, 0.2), 32, tile=True, batch_size=5)
    frames = np.random.default_rng(1).integers(0, 255, shape).astype(np.uint8)
    ref = _reference_tiled(model, p.normalizer(frames_to_tensor(frames, None)), 32)
    got = _probabilities(p, frames)
    assert (got - ref).abs().mean() < 2e-3
    assert (p.predict(frames).labels == ref.argmax(1).numpy()).mean() > 0.99


def test_tiling_with_tta_blends_the_variance(threshold):
    """The TTA variance goes through the same windows; a mirror-symmetric pointwise model has none."""
    frames = np.random.default_rng(2).integers(0, 255, (2, 50, 77)).astype(np.uint8)
    pred = threshold(tile=True, tta=True, batch_size=3).predict(frames)
    np.testing.assert_array_equal(pred.labels, frames >= 52)
    assert pred.uncertainty.shape == (2, 50, 77) and np.abs(pred.uncertainty).max() < 1e-6
