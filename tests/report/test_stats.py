import numpy as np
import pytest

from sslseg.report.stats import bootstrap_ci
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


def _rows(method, values, k=1, seed=0):
    return [{"arch": "unet", "method": method, "labelled_cases": k, "seed": seed, "case_id": f"c{i}", "dice": v,
             "hd95": 10 - v} for i, v in enumerate(values)]


def test_tables_mark_a_clear_winner_and_gain_over_random():
    rows = []
    for seed, off in enumerate((0.0, 0.05, 0.02)):  # simclr 0.1 ahead on every labelled subset
        rows += _rows("none", [0.5 + off, 0.6 + off, 0.7 + off], seed=seed)
        rows += _rows("simclr", [0.6 + off + 0.001 * seed, 0.7 + off, 0.8 + off], seed=seed)
    table = {r["method"]: r for r in summary_table(rows)}
    assert table["simclr"]["best"] and not table["none"]["best"]
    assert table["simclr"]["gain"] == pytest.approx(0.1, abs=1e-3) and table["simclr"]["verdict"] == "gain"
    (t,) = paired_tests(rows)
    assert t["method"] == "simclr" and t["mean_diff"] == pytest.approx(0.1, abs=1e-3) and t["wins"] == 9
    hd = {r["method"]: r for r in summary_table(rows, "hd95")}
    assert hd["simclr"]["best"]  # lower HD95 is better
    # one labelled subset: the same 0.1 is no evidence, nothing is marked
    one = {r["method"]: r for r in summary_table([r for r in rows if r["seed"] == 0])}
    assert not one["simclr"]["best"] and one["simclr"]["verdict"] == "single"


def test_hierarchical_bootstrap_resamples_subsets_then_cases():
    from sslseg.report.stats import hierarchical_bootstrap_ci

    # one subset: the bootstrap over its values
    assert hierarchical_bootstrap_ci([[0.1, 0.2, 0.3, 0.4]]) == pytest.approx(bootstrap_ci([0.1, 0.2, 0.3, 0.4]),
                                                                              abs=0.02)
    # subsets far apart, each tight: the interval spans the subsets, the point is the mean of subset means
    groups = [[1.0 + 0.001 * i for i in range(30)], [0.0] * 5, [0.5] * 10]
    mean, lo, hi = hierarchical_bootstrap_ci(groups)
    assert mean == pytest.approx(np.mean([np.mean(g) for g in groups]))
    assert lo < 0.1 and hi > 0.9
