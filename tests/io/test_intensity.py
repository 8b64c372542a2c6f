"""The one intensity normaliser: per case, per channel, and the value range of a trained model."""

from __future__ import annotations

import numpy as np
import pytest

from sslseg.io.intensity import normalise_intensity, training_range


def test_uint8_is_kept_and_other_data_scaled():
    u8 = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    assert normalise_intensity(u8) is u8
    x = np.random.default_rng(0).normal(5, 2, (3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(normalise_intensity(x), x / np.float32(np.percentile(np.abs(x), 99.5)))
    z = normalise_intensity(x, "zscore")
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    np.testing.assert_array_equal(normalise_intensity(x.astype(np.int16), "none"), x.astype(np.int16))
    assert normalise_intensity(np.zeros((1, 2, 2), np.float32)).max() == 0  # nothing to divide by


def test_channels_get_their_own_statistics():
    rng = np.random.default_rng(1)
    a = rng.random((4, 6, 6)).astype(np.float32)
    two = np.stack([a, 100 * a], axis=1)  # (N, C, H, W): one channel 100 times the other
    for how in ("scale", "zscore"):
        out = normalise_intensity(two, how)
        np.testing.assert_allclose(out[:, 0], out[:, 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[:, 0], normalise_intensity(a, how), rtol=1e-5, atol=1e-6)


def test_bad_values_and_names():
    with pytest.raises(ValueError, match="scan: 1 NaN or Inf"):
        normalise_intensity(np.array([[[np.inf, 1.0]]], np.float32), where="scan")
    with pytest.raises(ValueError, match="intensity must be one of scale, zscore, none, got 'minmax'"):
        normalise_intensity(np.zeros((1, 1, 1), np.uint8), "minmax")


def test_training_range_is_the_readers_normaliser_for_float_models():
    x = np.random.default_rng(2).normal(0, 3, (2, 5, 5)).astype(np.float32)
    for how in ("scale", "zscore", "none"):
        np.testing.assert_array_equal(training_range(x, 1.0, how), normalise_intensity(x, how))
