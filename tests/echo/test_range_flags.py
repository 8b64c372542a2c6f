"""Measurements outside the physiological range are flagged, with hand-made beats of known EF and FAC."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sslseg.echo.measurements import Beat, EchoMeasurement, beat_flags, flags, write_beats_csv


def beat(edv: float, esv: float, eda: float = 100.0, esa: float = 80.0) -> Beat:
    return Beat(ed=0, es=5, eda=eda, esa=esa, edl=10.0, esl=9.0, edv=edv, esv=esv)


@pytest.mark.parametrize(("edv", "esv", "expected"), [
    (100.0, 40.0, []),  # EF 60%: normal
    (100.0, 95.0, []),  # EF 5%: the lower bound itself is plausible
    (100.0, 10.0, []),  # EF 90%: the upper bound too
    (100.0, 99.2, ["EF 0.8% outside 5-90% (implausible)"]),
    (100.0, 5.0, ["EF 95.0% outside 5-90% (implausible)"]),
    (100.0, 100.28, ["EF -0.3%: ES volume above ED volume (impossible)"]),
    (0.0, 0.0, []),  # no LV found: EF undefined (NaN), said elsewhere, not a range flag
])
def test_ef_range_of_one_beat(edv, esv, expected):
    assert beat_flags(beat(edv, esv)) == expected


def test_an_es_area_above_the_ed_area_is_impossible():
    assert beat_flags(beat(100.0, 40.0, eda=50.0, esa=60.0)) == ["FAC -20.0%: ES area above ED area (impossible)"]


def test_a_video_names_its_mean_ef_and_each_bad_beat():
    good, bad = beat(100.0, 40.0), beat(100.0, 100.28)  # EF 60% and -0.28%: mean 29.86%, plausible
    assert flags(np.mean([good.ef, bad.ef]), [good, bad]) == ["beat 1: EF -0.3%: ES volume above ED volume (impossible)"]
    low = beat(100.0, 99.2)
    assert flags(low.ef, [low]) == ["EF 0.8% outside 5-90% (implausible)"]  # one beat: said once
    assert flags(float("nan"), []) == []


def test_summary_and_beats_csv_carry_the_flag(tmp_path):
    area = np.array([100.0, 90.0, 80.0, 90.0, 100.0, 95.0])
    m = EchoMeasurement(50.0, True, "px", area, area, np.ones(6), np.ones(6), beats=[beat(100.0, 40.0),
                                                                                     beat(100.0, 100.28)])
    assert m.summary()["flag"] == "beat 1: EF -0.3%: ES volume above ED volume (impossible)"
    rows = list(csv.DictReader(open(write_beats_csv(m, tmp_path / "b.csv"))))
    assert [r["flag"] for r in rows] == ["", "EF -0.3%: ES volume above ED volume (impossible)"]
