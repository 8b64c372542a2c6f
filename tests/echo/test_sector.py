"""Echo sector preparation on synthetic screens of known geometry: found, cropped, resized, mapped back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslseg.echo.sector import (
    Sector,
    find_sector,
    prepare_frames,
    prepared_spacing,
    restore_probabilities,
    sector_box,
)

H, W = 120, 160
APEX, RADIUS, HALF_ANGLE = (10, 80), 100, np.deg2rad(40)


def fan() -> np.ndarray:
    """The true sector: apex at the top centre, radius 100 px, 80 degrees wide."""
    r, c = np.mgrid[:H, :W].astype(np.float64)
    dr, dc = r - APEX[0], c - APEX[1]
    return (np.hypot(dr, dc) <= RADIUS) & (np.abs(np.arctan2(dc, dr)) <= HALF_ANGLE) & (dr >= 0)


def screen(frames: int = 8, seed: int = 0, doppler: bool = False) -> np.ndarray:
    """A scanner screen: speckle that changes in the fan, static text, a moving ECG trace and frame counter.

    Inside the fan a dark blood pool that never changes and a static bright marker (both inside the sector).
    """
    rng = np.random.default_rng(seed)
    sector = fan()
    r, c = np.mgrid[:H, :W]
    pool = ((r - 60) / 18) ** 2 + ((c - 80) / 10) ** 2 <= 1
    out = np.zeros((frames, H, W), np.uint8)
    for t in range(frames):
        f = np.where(sector, rng.integers(30, 200, (H, W)), 0)
        f[pool] = 0
        f[40:43, 100:103] = 255  # static marker inside the sector
        f[20:61:10, 125] = 255  # depth-scale dots beside the sector
        f[2:9, 2:40] = 220  # static text block (patient name)
        f[2:9, 120:158] = 180  # static logo
        # ECG trace: a 1-pixel line with a moving blip, below the sector
        f[114, 10:150] = 160
        blip = 20 + 15 * t
        f[111:114, blip] = 160
        # frame counter: thin strokes that change every frame
        f[104:112, 150 + t % 3] = 255
        if doppler:  # a thick, varying strip (a Doppler trace) touching the bottom of the sector
            f[109:119, 60:100] = rng.integers(0, 255, (10, 40))
        out[t] = f
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_sector_found_from_motion_ignores_overlays():
    s = find_sector(screen())
    truth = fan()
    assert s.source == "image" and not s.notes
    assert iou(s.mask, truth) > 0.95
    # the overlays are outside; the static marker and the unchanging blood pool inside are filled in
    assert not s.mask[2:9, 2:40].any() and not s.mask[2:9, 120:158].any()
    assert not s.mask[114, :].any() and not s.mask[104:112, 150:153].any()
    assert s.mask[40:43, 100:103].all() and s.mask[55:65, 75:85].all()
    top, bottom, left, right = s.bbox
    # the opening (3 x 3 here) trims the apex's point, narrower than the square, by a pixel or two
    assert 0 <= top - APEX[0] <= 3 and abs(bottom - (APEX[0] + RADIUS)) <= 2
    half = RADIUS * np.sin(HALF_ANGLE)
    assert abs(left - (APEX[1] - half)) <= 3 and abs(right - (APEX[1] + half)) <= 3  # acute corners, trimmed too


def test_calibrated_region_bounds_the_search():
    frames = screen(doppler=True)
    # the strip varies, is thick and touches the sector: from the image alone it joins the sector ...
    assert find_sector(frames).mask[111:119, 60:100].any()
    # ... and the calibrated 2D region (the sector's bounding box) leaves it out
    s = find_sector(frames, region=(15, 10, 145, 110))
    assert s.source == "ultrasound region + image" and iou(s.mask, fan()) > 0.95
    assert not s.mask[111:119, 60:100].any()
    # a calibration that does not fit the frame (the file was resized afterwards) is not trusted
    s = find_sector(frames[:, :, :], region=(84, 31, 595, 414))
    assert s.source == "image" and "does not fit the 160 x 120 frame" in s.notes[0]


def test_single_frame_and_blank_clip():
    s = find_sector(screen(frames=1))
    assert iou(s.mask, fan()) > 0.9
    blank = find_sector(np.zeros((5, H, W), np.uint8))
    assert blank.source == "whole frame" and blank.mask.all() and "no imaging sector" in blank.notes[0]


@pytest.mark.parametrize(
    "rows, cols, box",
    [
        ((10, 29), (5, 54), (10, 20, 20)),  # wide: side = height, centred: the lateral edges are cut
        ((0, 49), (10, 19), (0, -10, 50)),  # tall: centred left-right (the square may leave the frame)
        ((3, 12), (7, 16), (3, 7, 10)),  # square
        ((3, 12), (7, 17), (3, 7, 10)),  # one column wider: the extra column is cut on the right
    ],
)
def test_sector_box(rows, cols, box):
    m = np.zeros((60, 60), bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    assert sector_box(m) == box


def test_prepare_and_restore_geometry():
    """A column ramp through the crop and resize, and back: the analytic pixel mapping both ways."""
    h, w = 50, 90
    sector = Sector(np.ones((h, w), bool), (5, 20, 40), "image", [])
    cols = np.tile(np.arange(w, dtype=np.float32), (2, h, 1))  # value = column index
    out = prepare_frames(cols, sector, 20)
    assert out.shape == (2, 20, 20) and out.dtype == np.float32
    # output pixel j samples input column left + (j + 0.5) * side / size - 0.5; cubic reproduces a ramp
    j = np.arange(2, 18)
    np.testing.assert_allclose(out[0, 10, j], 20 + (j + 0.5) * 2 - 0.5, atol=1e-3)
    # back: a two-class map that is a ramp in the prepared frame lands on the original columns
    ramp = torch.linspace(0, 1, 20).expand(1, 20, 20)
    prob = torch.stack([1 - ramp, ramp], 1)
    back = restore_probabilities(prob, sector, (h, w))
    assert back.shape == (1, 2, h, w)
    torch.testing.assert_close(back.sum(1), torch.ones(1, h, w))
    assert (back[0, 0, :, :20] == 1).all() and (back[0, 0, :, 60:] == 1).all()  # outside the square: background
    assert back[0, 1, 20, 21] < 0.1 and back[0, 1, 20, 58] > 0.9


def test_masked_crop_resize_of_a_fan_round_trip():
    clip = screen()
    s = find_sector(clip)
    out = prepare_frames(clip, s, 64)
    assert out.shape == (8, 64, 64) and out.dtype == np.uint8
    # the overlays inside the square are gone: the depth-scale dot at (40, 125), beside the fan, is black
    top, left, side = s.box
    r, c = (round((v - o + 0.5) * 64 / side - 0.5) for v, o in ((40, top), (125, left)))
    assert prepare_frames(clip, Sector(np.ones((H, W), bool), s.box, "image", []), 64)[:, r, c].min() > 0
    assert out[:, r - 1 : r + 2, c - 1 : c + 2].max() == 0
    # a 'model' that labels the prepared sector pixels: mapped back, it covers the sector, nothing outside
    inside = torch.from_numpy(prepare_frames(s.mask[None].astype(np.uint8) * 200, s, 64) > 100).float()
    prob = restore_probabilities(torch.stack([1 - inside, inside], 1), s, (H, W))
    assert (prob[0, 1][torch.from_numpy(~s.mask)] == 0).all()
    torch.testing.assert_close(prob.sum(1), torch.ones(1, H, W))
    back = prob.argmax(1)[0].numpy()
    seen = s.mask.copy()
    seen[:, : max(left, 0)] = False  # the fan's lateral tips, outside the square, are not shown to the model
    seen[:, left + side :] = False
    assert not back[~seen].any() and iou(back.astype(bool), seen) > 0.97
    assert prepared_spacing((0.3, 0.2), s, 64) == pytest.approx((0.3 * s.box[2] / 64, 0.2 * s.box[2] / 64))
    assert prepared_spacing(None, s, 64) is None
