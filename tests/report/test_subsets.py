"""Statistics by labelled subset: the unit of a label-efficiency comparison is the subset (seed)."""

import math

import numpy as np
import pytest
from scipy import stats

from sslseg.report.stats import early_peak, format_p, subset_test, t_interval
from sslseg.report.tables import format_gains, subset_gains


def test_t_interval_agrees_with_scipy():
    v = [0.12, -0.03, 0.07, 0.10]
    mean, lo, hi = t_interval(v)
    ref = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert mean == pytest.approx(np.mean(v)) and (lo, hi) == pytest.approx(ref)
    # one value: a mean, no interval
    m1, lo1, hi1 = t_interval([0.2])
    assert m1 == 0.2 and math.isnan(lo1) and math.isnan(hi1)


def test_subset_test_is_the_paired_t_test():
    method = np.array([0.71, 0.64, 0.80, 0.69, 0.75])
    ref = np.array([0.65, 0.66, 0.70, 0.61, 0.70])
    t = subset_test(method - ref)
    assert t["p_value"] == pytest.approx(stats.ttest_rel(method, ref).pvalue)
    assert t["n"] == 5 and t["wins"] == 4 and t["mean_gain"] == pytest.approx((method - ref).mean())
    assert math.isnan(subset_test([0.1])["p_value"])  # one subset: no test


@pytest.mark.parametrize("p, text", [
    (0.000488, "p < 0.001"), (0.0009999, "p < 0.001"), (0.001, "p = 0.001"), (0.012345, "p = 0.012"),
    (0.27, "p = 0.27"), (0.5, "p = 0.5"), (1.0, "p = 1"), (float("nan"), "no test"),
])
def test_p_values_are_readable(p, text):
    assert format_p(p) == text
    assert "0.000" not in format_p(p)


def _rows(method, seed, offset, k=1, cases=4):
    # test-case Dice: a per-case pattern shared by every method, plus a per-subset offset
    return [{"arch": "unet", "method": method, "labelled_cases": str(k), "seed": str(seed), "case_id": f"c{i}",
             "dice": str(0.5 + 0.05 * i + offset), "hd95": "3.0"} for i in range(cases)]


def test_gains_are_paired_by_subset_not_by_test_case():
    offsets = {0: 0.10, 1: -0.02, 2: 0.07}  # simclr minus random init, per labelled subset
    rows = []
    for seed, off in offsets.items():
        rows += _rows("none", seed, 0.01 * seed) + _rows("simclr", seed, 0.01 * seed + off)
    rows += _rows("simclr", 3, 0.5)  # a subset random init never ran: not paired
    (g,) = subset_gains(rows)
    assert g["n"] == 3  # three subsets, not twelve test cases
    assert g["gains"] == pytest.approx({"0": 0.10, "1": -0.02, "2": 0.07})
    assert g["mean_gain"] == pytest.approx(np.mean(list(offsets.values())))
    assert (g["ci_low"], g["ci_high"]) == pytest.approx(t_interval(list(offsets.values()))[1:])
    assert g["wins"] == 2
    text = format_gains([g])
    # +0.05 on average, but one subset of three loses: the interval includes 0, so no claim of a gain
    assert "no clear difference from random init" in text and "(mean +0.050 Dice)" in text
    assert "95% CI across 3 labelled subsets" in text and "beats" not in text


def test_one_subset_says_so():
    (g,) = subset_gains(_rows("none", 0, 0.0) + _rows("simclr", 0, -0.04))
    assert g["n"] == 1 and math.isnan(g["ci_low"])
    text = format_gains([g])
    assert "is behind random init by 0.040" in text and "one labelled subset: no interval" in text
    assert "loses" not in text  # one draw of labelled cases is no evidence of a loss


def test_early_peak():
    assert early_peak([(10, 0.5), (20, 0.8), (30, 0.7)]) == pytest.approx(
        {"peak_step": 20, "peak": 0.8, "last_step": 30, "last": 0.7, "drop": 0.1})
    assert early_peak([(10, 0.5), (20, 0.7), (30, 0.8)]) is None  # still rising
    assert early_peak([(10, 0.5), (20, 0.8), (30, 0.79)]) is None  # within the tolerance
    assert early_peak([(10, 0.8)]) is None


def test_gain_whose_interval_includes_zero_is_called_unclear():
    offsets = {0: 0.10, 1: -0.06, 2: 0.02}  # mean +0.02, the t interval spans 0
    rows = []
    for seed, off in offsets.items():
        rows += _rows("none", seed, 0.0) + _rows("simclr", seed, off)
    (g,) = subset_gains(rows)
    assert g["ci_low"] < 0 < g["ci_high"]
    assert "no clear difference" in format_gains([g]) and "beats" not in format_gains([g])
    clear = []
    for seed, off in {0: 0.05, 1: 0.06, 2: 0.055}.items():
        clear += _rows("none", seed, 0.0) + _rows("simclr", seed, off)
    text = format_gains(subset_gains(clear))
    assert "no clear difference" not in text and "beats random init by 0.055 Dice" in text and "clear gain" in text


def test_a_gain_that_rounds_to_zero_is_level():
    (g,) = subset_gains(_rows("none", 0, 0.0) + _rows("simclr", 0, 0.0002))
    assert "level with random init by 0.000" in format_gains([g])
