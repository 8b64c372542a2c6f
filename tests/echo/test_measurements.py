"""LV measurements against analytic ellipses: area, long axis, area-length volume, ED/ES, FAC, EF."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from sslseg.echo.measurements import (
    area_length_volume,
    ef_error,
    find_phases,
    long_axis_length,
    lv_area,
    measure_video,
    plot_area_curve,
    read_filelist_ef,
    smooth_curve,
    write_beats_csv,
    write_measurement_csv,
)

SPACING = (0.4, 0.3)  # (row mm, column mm): anisotropic on purpose


def ellipse(a: float, b: float, theta: float, shape=(256, 256), spacing=SPACING, centre=(52.3, 38.1)) -> np.ndarray:
    """Binary mask of an ellipse with semi-axes a (long), b in mm, long axis at ``theta`` from the rows."""
    r, c = np.mgrid[: shape[0], : shape[1]]
    y, x = r * spacing[0] - centre[0], c * spacing[1] - centre[1]
    u = np.cos(theta) * y + np.sin(theta) * x
    v = -np.sin(theta) * y + np.cos(theta) * x
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def beating_video(frames=100, period=40, ed0=10, a0=40.0, b0=20.0, da=0.1, db=0.2, theta=0.5):
    """Ellipse masks whose axes shrink by da, db from ED (t = ed0 + k period) to ES (half a period later)."""
    t = np.arange(frames)
    s = (1 - np.cos(2 * np.pi * (t - ed0) / period)) / 2  # 0 at ED, 1 at ES
    a, b = a0 * (1 - da * s), b0 * (1 - db * s)
    masks = np.stack([ellipse(ai, bi, theta) for ai, bi in zip(a, b, strict=True)]).astype(np.int64)
    return masks, a, b


def test_area_and_long_axis_of_an_ellipse_with_anisotropic_pixels():
    for theta in (0.0, 0.5, 1.0):
        m = ellipse(40.0, 20.0, theta)
        assert lv_area(m[None], SPACING)[0] == pytest.approx(math.pi * 40 * 20, rel=0.01)
        assert long_axis_length(m, SPACING) == pytest.approx(80.0, rel=0.01)
    # in pixels: area is the pixel count, spacing ignored
    assert lv_area(m[None].astype(np.int64))[0] == m.sum()
    assert long_axis_length(np.zeros((5, 5), bool)) == 0.0


def test_area_length_volume_is_the_prolate_ellipsoid():
    a, b = 40.0, 20.0
    assert area_length_volume(math.pi * a * b, 2 * a) == pytest.approx(4 / 3 * math.pi * a * b * b, rel=1e-12)
    assert np.isnan(area_length_volume(10.0, 0.0))


def test_ef_fac_and_phases_from_a_known_area_curve():
    masks, a, b = beating_video()
    m = measure_video(masks, SPACING, fps=50.0)
    # the clip: ED at 10, 50, 90; ES at 30, 70; two complete ED -> ES beats
    assert [(bt.ed, bt.es) for bt in m.beats] == [(10, 30), (50, 70)]
    assert m.ed == [10, 50, 90] and m.es == [30, 70]
    ef_true = 100 * (1 - (a[30] * b[30] ** 2) / (a[10] * b[10] ** 2))  # 1 - 0.9 * 0.8^2 = 42.4%
    fac_true = 100 * (1 - (a[30] * b[30]) / (a[10] * b[10]))  # 28%
    assert ef_true == pytest.approx(42.4)
    assert m.ef == pytest.approx(ef_true, abs=0.7)
    assert m.fac == pytest.approx(fac_true, abs=0.7)
    edv_true = 4 / 3 * math.pi * a[10] * b[10] ** 2 / 1000  # mL
    assert m.beats[0].edv == pytest.approx(edv_true, rel=0.02)
    assert m.unit == "mm" and not m.fallback


def test_es_between_two_eds_is_the_smallest_area_even_if_the_peak_finder_dropped_it():
    from sslseg.echo.measurements import pair_beats

    # a deeper dip at frame 3 (before the first ED) wins the distance rule over the real ES at 30
    curve = np.full(80, 10.0)
    curve[3], curve[20], curve[30], curve[45], curve[60] = 1.0, 20.0, 4.0, 19.0, 20.0
    ed, es = np.array([20, 60]), np.array([3, 45 + 25])
    assert pair_beats(curve, ed, es) == [(20, 30), (60, 70)]
    # after the last ED only a detected minimum counts: a clip ending in systole gives no beat
    assert pair_beats(curve, np.array([20, 60]), np.array([3])) == [(20, 30)]


def test_ef_does_not_depend_on_pixel_size():
    masks, _, _ = beating_video(frames=60)
    mm = measure_video(masks, SPACING, fps=50.0)
    px = measure_video(masks, None, fps=50.0)
    assert px.unit == "px"
    # EF is a ratio of volumes; with square pixels assumed it changes only by the aspect ratio of the grid
    assert px.ef == pytest.approx(mm.ef, abs=2.0)
    assert [b.ed for b in px.beats] == [b.ed for b in mm.beats]


def test_heart_rate_sets_the_minimum_peak_distance():
    fps = 50.0
    t = np.arange(200)
    # one beat per 40 frames (75 bpm), with a notch that makes a second local maximum 6 frames later
    y = np.cos(2 * np.pi * t / 40) + 0.3 * np.exp(-0.5 * (((t % 40) - 6) / 1.5) ** 2)
    ed, es = find_phases(y, fps, max_heart_rate_bpm=140)
    assert np.all(np.diff(ed) >= int(fps * 60 / 140))
    assert len(ed) == len(range(0, 200, 40)) - 1  # interior maxima only: 40, 80, 120, 160
    ed_loose, _ = find_phases(y, fps, max_heart_rate_bpm=1000, prominence=0.0)
    assert len(ed_loose) > len(ed)  # without the heart-rate distance the notch counts too


def test_smoothing_keeps_peak_position_and_height():
    t = np.arange(120)
    y = 1000 + 200 * np.cos(2 * np.pi * (t - 30) / 45)
    rng = np.random.default_rng(0)
    s = smooth_curve(y + rng.normal(0, 5, y.shape), fps=50.0)
    assert abs(int(np.argmax(s[10:50])) + 10 - 30) <= 1
    assert s[30] == pytest.approx(1200, abs=6)
    assert np.std(s - y) < np.std(rng.normal(0, 5, y.shape))


def test_clip_shorter_than_a_beat_falls_back_to_extremes():
    masks, a, b = beating_video(frames=18, ed0=0)  # systole only: largest first, shrinking
    m = measure_video(masks, SPACING, fps=50.0)
    assert m.fallback and len(m.beats) == 1
    assert (m.beats[0].ed, m.beats[0].es) == (0, 17)
    assert 0 < m.ef < 42.4


def test_unknown_fps_is_assumed_and_flagged():
    masks, _, _ = beating_video(frames=50)
    m = measure_video(masks, SPACING, fps=None)
    assert m.fps == 50.0 and not m.fps_known


def test_csv_and_plot(tmp_path):
    masks, _, _ = beating_video(frames=60)
    m = measure_video(masks, SPACING, fps=50.0)
    rows = list(csv.DictReader(open(write_measurement_csv(m, tmp_path / "lv.csv"))))
    assert len(rows) == 60
    assert {int(r["frame"]) for r in rows if r["phase"] == "ED"} == {b.ed for b in m.beats}
    assert float(rows[10]["area_mm2"]) == pytest.approx(m.area[10], rel=1e-4)
    beats = list(csv.DictReader(open(write_beats_csv(m, tmp_path / "beats.csv"))))
    assert float(beats[0]["ef_percent"]) == pytest.approx(m.beats[0].ef, abs=1e-3)
    png = plot_area_curve(m, tmp_path / "curve.png", "clip")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ef_error_and_filelist(tmp_path):
    assert ef_error([50.0, 60.0], [55.0, 58.0]) == pytest.approx(3.5)
    assert ef_error({"a": 50.0, "b": float("nan"), "c": 70.0}, {"a": 40.0, "b": 50.0, "d": 1.0}) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="2 estimated EF values but 1 known"):
        ef_error([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no video"):
        ef_error({"a": 1.0}, {"b": 1.0})
    p = tmp_path / "FileList.csv"
    p.write_text("FileName,EF,ESV,EDV,Split\n0X1,55.5,1,2,TRAIN\n0X2.avi,61.0,1,2,TEST\n0X3,,1,2,VAL\n")
    assert read_filelist_ef(p) == {"0X1": 55.5, "0X2": 61.0}
    bad = tmp_path / "other.csv"
    bad.write_text("name,value\n")
    with pytest.raises(ValueError, match="FileName and EF"):
        read_filelist_ef(bad)
