import numpy as np
import pytest
from scipy import stats

from sslseg.report.stats import bootstrap_ci, paired_test
from sslseg.report.tables import paired_tests, summary_table


def test_bootstrap_of_a_constant_is_degenerate():
    assert bootstrap_ci([0.7] * 20) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_ci_covers_the_mean_of_a_normal_sample():
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 0.05, size=400)
    mean, lo, hi = bootstrap_ci(x)
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert lo < 0.8 < hi
    # the percentile interval is close to the normal-theory one, mean +- 1.96 se
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert mean == pytest.approx(x.mean())


def test_bootstrap_drops_nan_and_handles_empty():
    assert bootstrap_ci([float("nan"), 0.5])[0] == 0.5
    assert all(np.isnan(bootstrap_ci([])))


def test_paired_test_agrees_with_scipy_and_signs():
    a = np.array([0.81, 0.74, 0.90, 0.66, 0.79, 0.85, 0.70, 0.92])
    b = np.array([0.78, 0.70, 0.91, 0.60, 0.72, 0.80, 0.69, 0.85])
    t = paired_test(a, b)
    assert t["p_value"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert t["mean_diff"] == pytest.approx((a - b).mean()) and t["mean_diff"] > 0
    assert t["wins"] == 7 and t["n"] == 8
    assert paired_test(b, a)["mean_diff"] == pytest.approx(-t["mean_diff"])


def _rows(method, values, k=1):
    return [{"arch": "unet", "method": method, "labelled_cases": k, "seed": 0, "case_id": f"c{i}", "dice": v,
             "hd95": 10 - v} for i, v in enumerate(values)]


def test_tables_mark_best_and_gain_over_random():
    rows = _rows("none", [0.5, 0.6, 0.7]) + _rows("simclr", [0.6, 0.7, 0.8])
    table = {r["method"]: r for r in summary_table(rows)}
    assert table["simclr"]["best"] and not table["none"]["best"]
    assert table["simclr"]["gain"] == pytest.approx(0.1)
    (t,) = paired_tests(rows)
    assert t["method"] == "simclr" and t["mean_diff"] == pytest.approx(0.1) and t["wins"] == 3
    hd = {r["method"]: r for r in summary_table(rows, "hd95")}
    assert hd["simclr"]["best"]  # lower HD95 is better
