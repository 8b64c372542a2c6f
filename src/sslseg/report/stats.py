"""Statistics for label-efficiency results: bootstrap intervals and paired tests."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap ``1 - alpha`` interval of the mean (NaNs dropped).

    Returns ``(mean, low, high)``; all NaN when there is no value.
    """
    v = np.asarray([x for x in values if not math.isnan(float(x))], dtype=float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(v.mean()), float(lo), float(hi))


def paired_test(a, b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of ``a`` against ``b`` (same test cases, same seeds, matched order).

    Returns the mean difference ``a - b`` with its bootstrap 95% interval, the
    Wilcoxon signed-rank p-value (two-sided; NaN when fewer than 2 non-zero
    differences), the number of pairs and how many pairs ``a`` wins.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    mean, lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    p = math.nan
    if np.count_nonzero(d) >= 2:
        p = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"mean_diff": mean, "ci_low": lo, "ci_high": hi, "p_value": p, "n": int(d.size),
            "wins": int((d > 0).sum())}
