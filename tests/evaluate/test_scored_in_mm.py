"""The scorer's HD95 is in millimetres: per frame with the case's (row, column) spacing, per volume with the slice's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslseg.data.batches import Normalizer
from sslseg.data.sample import Case
from sslseg.evaluate.inference import score_cases

S = 32


class Fixed(torch.nn.Module):
    """Predicts the same label map for every frame, whatever the input."""

    def __init__(self, label: np.ndarray):
        super().__init__()
        self.label = torch.as_tensor(label)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, S, S)
        logits[:, 1] = (self.label == 1).float() * 10 - 5
        return logits


def _score(truth: np.ndarray, pred: np.ndarray, spacing, volume: bool = False, slice_mm: float = 1.0):
    frames = np.zeros((len(truth), S, S), np.uint8)
    case = Case("c", frames, {i: t.astype(np.int64) for i, t in enumerate(truth)}, spacing, "test",
                volume=volume, slice_spacing=slice_mm if volume else None)
    return score_cases(Fixed(pred), [case], Normalizer(0.0, 1.0), S, 2)


def _line(row=None, col=None) -> np.ndarray:
    m = np.zeros((S, S), np.int64)
    if row is not None:
        m[row, 6:26] = 1
    else:
        m[6:26, col] = 1
    return m


@pytest.mark.parametrize("spacing", [(2.0, 0.5), (0.5, 2.0), (1.0, 1.0)])
def test_frame_hd95_is_the_shift_in_mm(spacing):
    # a line shifted by 4 rows: every point is 4 rows from the other line, 4 x row mm
    frames, cases = _score([_line(row=10)], _line(row=14), spacing)
    assert frames[0]["hd95"] == pytest.approx(4 * spacing[0], rel=1e-5)
    assert cases[0]["hd95"] == pytest.approx(4 * spacing[0], rel=1e-5)
    # shifted by 3 columns: 3 x column mm
    frames, _ = _score([_line(col=10)], _line(col=13), spacing)
    assert frames[0]["hd95"] == pytest.approx(3 * spacing[1], rel=1e-5)


def test_frame_hd95_of_two_points_is_their_distance_in_mm():
    a, b = np.zeros((S, S), np.int64), np.zeros((S, S), np.int64)
    a[5, 5], b[8, 9] = 1, 1
    frames, _ = _score([a], b, (2.0, 0.5))
    assert frames[0]["hd95"] == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5), rel=1e-5)  # 6.32 mm, not 5 pixels


def test_volume_hd95_uses_the_slice_spacing():
    # the truth on slice 0 only; the prediction (the same on every slice) adds the same line on slice 1:
    # those points are one slice away from the truth
    truth = [_line(row=10), np.zeros((S, S), np.int64)]
    frames, cases = _score(truth, _line(row=10), (0.7, 0.7), volume=True, slice_mm=3.5)
    assert cases[0]["convention"] == "volume"
    assert cases[0]["hd95"] == pytest.approx(3.5, rel=1e-5)
