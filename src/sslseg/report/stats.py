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


def hierarchical_bootstrap_ci(groups, n_boot: int = 2000, alpha: float = 0.05,
                              seed: int = 0) -> tuple[float, float, float]:
    """Mean of group means and a two-level percentile-bootstrap ``1 - alpha`` interval (NaNs dropped).

    ``groups``: one list of values per labelled subset (e.g. the test-case Dice
    differences of one seed). Each replicate draws subsets with replacement,
    then values within each drawn subset with replacement, and averages the
    subset means: the spread between subsets is in the interval, not only the
    spread between test cases (which share their subset's luck). With one
    subset it is the bootstrap over that subset's values alone.

    Returns ``(mean, low, high)``; all NaN when there is no value.
    """
    gs = [np.asarray([x for x in g if not math.isnan(float(x))], dtype=float) for g in groups]
    gs = [g for g in gs if g.size]
    if not gs:
        return (math.nan, math.nan, math.nan)
    mean = float(np.mean([g.mean() for g in gs]))
    rng = np.random.default_rng(seed)
    s = len(gs)
    # per subset: n_boot x s bootstrap means of its values; a replicate takes position j from subset pick[b, j]
    within = np.stack([g[rng.integers(0, g.size, size=(n_boot, s, g.size))].mean(-1) for g in gs])
    pick = rng.integers(0, s, size=(n_boot, s))
    reps = within[pick, np.arange(n_boot)[:, None], np.arange(s)[None, :]].mean(1)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return (mean, float(lo), float(hi))


def verdict(lo: float, hi: float, n: int, higher_better: bool = True) -> str:
    """What an interval of a difference says: ``gain``, ``loss``, ``unclear`` (it includes 0) or ``single``.

    ``single``: fewer than 2 labelled subsets, so no interval (and no evidence either way).
    A gain is better for the method: above 0 for Dice, below 0 for HD95 (``higher_better=False``).
    """
    if n < 2 or math.isnan(float(lo)) or math.isnan(float(hi)):
        return "single"
    if lo > 0:
        return "gain" if higher_better else "loss"
    if hi < 0:
        return "loss" if higher_better else "gain"
    return "unclear"


VERDICTS = {"gain": "clear gain", "loss": "clear loss", "unclear": "no clear difference",
            "single": "one subset: no interval"}


def t_interval(values, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and Student-t ``1 - alpha`` interval of the mean (NaNs dropped).

    The interval for a handful of values, such as one gain per labelled subset,
    where a bootstrap of three numbers would be far too narrow. Returns
    ``(mean, low, high)``; ``low`` and ``high`` are NaN with fewer than 2 values.
    """
    v = np.asarray([x for x in values if not math.isnan(float(x))], dtype=float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size < 2:
        return (mean, math.nan, math.nan)
    half = float(stats.t.ppf(1 - alpha / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return (mean, mean - half, mean + half)


def subset_test(gains) -> dict:
    """Gains of a method over random init, one per labelled subset: mean, t interval, paired t-test.

    Each gain is the method's mean test Dice minus random init's on the same
    labelled subset (the same seed), so a pair shares its labelled cases; the
    subset is the unit, not the test case (test cases of one subset share its luck).

    Returns:
        ``mean_gain``, ``ci_low``, ``ci_high`` (Student t, 95%), ``p_value`` (two-sided
        one-sample t-test of the gains against 0, the paired t-test; NaN with fewer
        than 2 subsets or gains all equal), ``n`` subsets and ``wins`` (gains > 0).
    """
    g = np.asarray([x for x in gains if not math.isnan(float(x))], dtype=float)
    mean, lo, hi = t_interval(g)
    p = math.nan
    if g.size >= 2 and np.ptp(g) > 0:
        p = float(stats.ttest_1samp(g, 0.0).pvalue)
    return {"mean_gain": mean, "ci_low": lo, "ci_high": hi, "p_value": p, "n": int(g.size), "wins": int((g > 0).sum())}


def format_p(p: float) -> str:
    """A p-value as a reader wants it: ``p < 0.001``, else two significant digits (``p = 0.012``); never ``0.000``."""
    if p is None or math.isnan(float(p)):
        return "no test"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {float(f'{p:.2g}'):g}"


def early_peak(val: list[tuple[int, float]], tolerance: float = 0.02) -> dict | None:
    """Validation that peaked before the end and fell: a sign of over-fitting a few labelled cases.

    Args:
        val: ``(step, validation Dice)`` in step order.
        tolerance: how far (absolute Dice) the last value must sit below the peak to count.

    Returns:
        ``{"peak_step", "peak", "last_step", "last", "drop"}`` when the peak came before
        the last validation and the last value is more than ``tolerance`` below it, else None.
    """
    pts = [(int(s), float(v)) for s, v in val if not math.isnan(float(v))]
    if len(pts) < 2:
        return None
    i = max(range(len(pts)), key=lambda j: pts[j][1])  # the first of equal maxima
    (ps, pv), (ls, lv) = pts[i], pts[-1]
    if i == len(pts) - 1 or pv - lv <= tolerance:
        return None
    return {"peak_step": ps, "peak": pv, "last_step": ls, "last": lv, "drop": pv - lv}
