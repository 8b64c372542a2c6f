import math

import numpy as np
import pytest
from scipy import ndimage

from sslseg.evaluate.metrics import dice_per_class, dice_per_frame, hd95_per_class


def square(size, top, left, side):
    m = np.zeros((size, size), np.int64)
    m[top : top + side, left : left + side] = 1
    return m


@pytest.mark.parametrize("shift", [0, 1, 3, 7])
def test_dice_of_shifted_squares(shift):
    # overlap side*(side-shift) over two areas side^2 -> (side - shift) / side
    a, b = square(40, 10, 10, 16), square(40, 10, 10 + shift, 16)
    assert dice_per_class(a, b, [1])[0] == pytest.approx((16 - shift) / 16)


def test_dice_nan_when_ground_truth_empty():
    a = square(20, 2, 2, 5)
    assert math.isnan(dice_per_class(a, np.zeros_like(a), [1])[0])


def test_dice_multiclass_independent():
    gt = square(30, 2, 2, 10) + 2 * square(30, 15, 15, 10)
    pred = square(30, 2, 2, 10)  # class 2 missed entirely
    d1, d2 = dice_per_class(pred, gt, [1, 2])
    assert d1 == pytest.approx(1.0) and d2 == pytest.approx(0.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5), (0.3, 1.7)])
def test_hd95_two_points_is_their_physical_distance(spacing):
    a = np.zeros((30, 30), np.int64)
    b = np.zeros((30, 30), np.int64)
    a[10, 10] = 1
    b[13, 14] = 1
    expected = math.hypot(3 * spacing[0], 4 * spacing[1])
    assert hd95_per_class(a, b, [1], spacing)[0] == pytest.approx(expected, rel=1e-5)


def _hd95_reference(a, b, spacing):
    """Independent implementation: boundary pixels + Euclidean distance transforms."""
    def border(m):
        return m & ~ndimage.binary_erosion(m)

    ba, bb = border(a.astype(bool)), border(b.astype(bool))
    da = ndimage.distance_transform_edt(~bb, sampling=spacing)[ba]
    db = ndimage.distance_transform_edt(~ba, sampling=spacing)[bb]
    return max(np.percentile(da, 95), np.percentile(db, 95))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.6, 1.4)])
def test_hd95_shifted_discs_matches_reference(spacing):
    yy, xx = np.mgrid[:64, :64]
    a = ((yy - 30) ** 2 + (xx - 30) ** 2 < 15**2).astype(np.int64)
    b = ((yy - 33) ** 2 + (xx - 35) ** 2 < 13**2).astype(np.int64)
    ours = hd95_per_class(a, b, [1], spacing)[0]
    assert ours == pytest.approx(_hd95_reference(a, b, spacing), rel=1e-5)
    assert ours > 0


def test_hd95_nan_for_empty_prediction():
    gt = square(20, 2, 2, 5)
    assert math.isnan(hd95_per_class(np.zeros_like(gt), gt, [1])[0])


def test_dice_per_frame_is_each_frames_dice_with_empty_truth_left_out():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, (4, 9, 9))
    gt = rng.integers(0, 3, (4, 9, 9))
    gt[1][gt[1] == 2] = 0  # class 2 absent from frame 1's truth
    pred[2][:] = 0  # frame 2 predicts nothing
    got = dice_per_frame(pred, gt, [1, 2])
    assert got.shape == (4, 2)
    for b in range(4):
        np.testing.assert_allclose(got[b], dice_per_class(pred[b], gt[b], [1, 2]), rtol=1e-6)
    assert math.isnan(got[1, 1]) and got[2, 0] == 0
    p, g = pred[0] == 1, gt[0] == 1
    assert got[0, 0] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))
