"""Tests of the synthetic apical-four-chamber echo generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from sslseg.data.sample import Case
from sslseg.data.synthetic import make_echo_case, synthetic_echo

T, SIZE = 16, 64  # small clips keep the tests fast; the default size is checked separately


def _sector(case: Case) -> np.ndarray:
    """Pixels whose centre lies inside the fan (apex at the top centre of the image)."""
    h, w = case.image_shape
    dy, dx = case.spacing
    iy, ix = np.mgrid[0:h, 0:w]
    x = (ix + 0.5 - w / 2.0) * dx
    y = (iy + 0.5) * dy
    r, th = np.hypot(x, y), np.arctan2(x, y)
    half = math.radians(case.meta["sector_deg"] / 2.0)
    return (r <= case.meta["depth_cm"] * 10.0) & (np.abs(th) <= half)


def _ed_es(case: Case) -> tuple[int, int]:
    inv = {v: k for k, v in case.phases.items()}
    return inv["ED"], inv["ES"]


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return synthetic_echo(num_cases=6, seed=3, num_frames=T, size=SIZE)


def test_shapes_and_dtypes_default_size():
    c = make_echo_case(0)
    assert isinstance(c, Case)
    assert c.frames.shape == (32, 112, 112) and c.frames.dtype == np.uint8
    assert c.case_id == "synth_echo_0000"
    assert c.split is None
    assert len(c.masks) == 2
    for k, m in c.masks.items():
        assert 0 <= k < 32
        assert m.shape == (112, 112) and m.dtype == np.int64
        assert set(np.unique(m)) <= {0, 1}
        assert m.sum() > 100
    assert len(c.spacing) == 2 and all(isinstance(s, float) and s > 0 for s in c.spacing)
    assert 12.0 <= c.meta["depth_cm"] <= 18.0
    # the rows span the imaging depth
    assert c.spacing[0] == pytest.approx(c.meta["depth_cm"] * 10.0 / 112)
    assert set(c.phases.values()) == {"ED", "ES"}
    assert set(c.phases) == set(c.masks)
    assert 0.0 < c.meta["ef"] < 100.0
    assert 40.0 <= c.meta["heart_rate"] <= 120.0
    assert c.frames.max() > 150  # bright tissue present


def test_deterministic():
    a = make_echo_case(5, seed=1, num_frames=T, size=SIZE)
    b = make_echo_case(5, seed=1, num_frames=T, size=SIZE)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.masks.keys() == b.masks.keys()
    for k in a.masks:
        np.testing.assert_array_equal(a.masks[k], b.masks[k])
    assert a.spacing == b.spacing
    assert a.meta == b.meta


def test_different_seed_or_index_differs():
    a = make_echo_case(5, seed=1, num_frames=T, size=SIZE)
    b = make_echo_case(5, seed=2, num_frames=T, size=SIZE)
    c = make_echo_case(6, seed=1, num_frames=T, size=SIZE)
    assert not np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert a.spacing != b.spacing


def test_cases_independent_of_num_cases():
    few = synthetic_echo(num_cases=2, seed=4, num_frames=T, size=SIZE)
    more = synthetic_echo(num_cases=4, seed=4, num_frames=T, size=SIZE)
    for a, b in zip(few, more, strict=False):
        assert a.case_id == b.case_id
        np.testing.assert_array_equal(a.frames, b.frames)
    assert len({c.case_id for c in more}) == 4


def test_ed_es_are_max_and_min_area(cases):
    for c in cases:
        ed, es = _ed_es(c)
        areas = np.asarray(c.meta["lv_area_px"])
        assert areas.shape == (c.num_frames,)
        assert c.masks[ed].sum() == areas.max() == areas[ed]
        assert c.masks[es].sum() == areas.min() == areas[es]
        assert ed != es


def test_cavity_area_follows_a_cycle(cases):
    for c in cases:
        areas = np.asarray(c.meta["lv_area_px"], dtype=float)
        # a clear contraction: ES area at least 8% below ED area
        assert areas.min() < 0.92 * areas.max()
        # smooth: consecutive frames change much less than the full excursion
        assert np.abs(np.diff(areas)).max() < 0.8 * (areas.max() - areas.min())
        # periodic: the area goes down and up again, i.e. it is not monotonic
        d = np.sign(np.diff(areas))
        d = d[d != 0]
        assert (d[1:] != d[:-1]).any()
        ed, es = _ed_es(c)
        ef = 100.0 * (1 - areas[es] / areas[ed])
        assert c.meta["fac"] == pytest.approx(ef)
        assert c.meta["ef"] > c.meta["fac"] * 0.9  # volume EF exceeds area change


def test_outside_sector_is_black_and_mask_inside(cases):
    for c in cases:
        sector = _sector(c)
        assert (c.frames[:, ~sector] == 0).all()
        # the fan is not empty and covers a good part of the image
        assert c.frames[:, sector].mean() > 10
        assert sector.mean() > 0.3
        for m in c.masks.values():
            assert not (m.astype(bool) & ~sector).any()
        # the blood pool is darker than the surrounding wall
        ed, _ = _ed_es(c)
        cav = c.masks[ed].astype(bool)
        ring = ndimage.binary_dilation(cav, iterations=3) & ~cav & sector
        assert c.frames[ed][cav].mean() < c.frames[ed][ring].mean()


def test_appearance_varies_across_cases(cases):
    depths = {round(c.meta["depth_cm"], 3) for c in cases}
    sectors = {round(c.meta["sector_deg"], 3) for c in cases}
    assert len(depths) == len(cases) and len(sectors) == len(cases)
    means = [c.frames[:, _sector(c)].mean() for c in cases]
    assert max(means) - min(means) > 5  # per-case gain / dynamic range differ


def test_speckle_partly_coherent_in_time():
    c = make_echo_case(2, seed=0)
    f = c.frames.astype(np.float64)
    sector = _sector(c)
    a, b = f[0][sector], f[1][sector]
    corr_next = np.corrcoef(a, b)[0, 1]
    other = make_echo_case(3, seed=0).frames[0].astype(np.float64)[sector]
    # consecutive frames are strongly but not perfectly correlated
    assert 0.3 < corr_next < 0.995
    assert corr_next > np.corrcoef(a, other)[0, 1] + 0.1


def test_unlabelled_videos_join_training_and_change_no_labelled_split():
    from sslseg.data.splits import assign_splits

    plain = synthetic_echo(num_cases=6, seed=4, num_frames=T, size=SIZE)
    more = synthetic_echo(num_cases=6, seed=4, num_frames=T, size=SIZE, unlabelled=3)
    assert len(more) == 9 and [len(c.masks) for c in more[6:]] == [0, 0, 0]
    assert all(len(c.masks) > 0 for c in more[:6])
    np.testing.assert_array_equal(more[7].frames, synthetic_echo(num_cases=8, seed=4, num_frames=T, size=SIZE)[7].frames)
    splits = assign_splits(more)
    assert {splits[c.case_id] for c in more[6:]} == {"train"}
    assert {c.case_id: splits[c.case_id] for c in plain} == assign_splits(plain)
