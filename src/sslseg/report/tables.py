"""Tables rebuilt from ``results.csv`` rows."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .stats import bootstrap_ci, format_p, paired_test, subset_test

REFERENCE = "none"  # random initialisation


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def summary_table(rows: list[dict], metric: str = "dice") -> list[dict]:
    """Mean and 95% bootstrap CI per (arch, method, labelled cases), best per budget marked, gain over random init."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["arch"], r["method"], int(r["labelled_cases"]))].append(_f(r[metric]))
    out = []
    for (arch, method, k), vals in sorted(groups.items(), key=lambda x: (x[0][0], x[0][2], x[0][1])):
        mean, lo, hi = bootstrap_ci(vals)
        out.append({"arch": arch, "method": method, "labelled_cases": k, "n": len(vals), "mean": mean,
                    "ci_low": lo, "ci_high": hi})
    higher_better = metric != "hd95"
    for row in out:
        peers = [o for o in out if o["arch"] == row["arch"] and o["labelled_cases"] == row["labelled_cases"]]
        vals = [o["mean"] for o in peers if not math.isnan(o["mean"])]
        best = (max if higher_better else min)(vals) if vals else math.nan
        row["best"] = len(peers) > 1 and row["mean"] == best
        ref = [o for o in peers if o["method"] == REFERENCE]
        row["gain"] = row["mean"] - ref[0]["mean"] if ref and row["method"] != REFERENCE else math.nan
    return out


def paired_tests(rows: list[dict], metric: str = "dice") -> list[dict]:
    """Each method against random init at each budget, paired on (seed, case_id)."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["arch"], r["method"], int(r["labelled_cases"]))][(str(r["seed"]), r["case_id"])] = _f(r[metric])
    out = []
    for (arch, method, k), vals in sorted(by.items(), key=lambda x: (x[0][0], x[0][2], x[0][1])):
        ref = by.get((arch, REFERENCE, k))
        if method == REFERENCE or ref is None:
            continue
        keys = sorted(set(vals) & set(ref))
        if not keys:
            continue
        t = paired_test([vals[key] for key in keys], [ref[key] for key in keys])
        out.append({"arch": arch, "method": method, "labelled_cases": k, **t})
    return out


def format_text(table: list[dict], metric: str = "dice") -> str:
    lines = [f"{'arch':<10} {'method':<24} {'labelled':>8} {metric:>7} {'95% CI':>17} {'vs random':>10}"]
    for r in table:
        gain = "" if math.isnan(r["gain"]) else f"{r['gain']:+.3f}"
        mark = " *" if r["best"] else ""
        lines.append(f"{r['arch']:<10} {r['method']:<24} {r['labelled_cases']:>8d} {r['mean']:>7.3f} "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] {gain:>10}{mark}")
    return "\n".join(lines + ["* best at that number of labelled cases"])


def subset_means(rows: list[dict], metric: str = "dice") -> dict[tuple, float]:
    """Mean ``metric`` over test cases per ``(arch, method, labelled cases, seed)`` (NaN-aware)."""
    by: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        by[(r["arch"], r["method"], int(r["labelled_cases"]), str(r["seed"]))].append(_f(r[metric]))
    out = {}
    for key, vals in by.items():
        v = [x for x in vals if not math.isnan(x)]
        out[key] = float(np.mean(v)) if v else math.nan
    return out


def pretrained_alone(method: str) -> str | None:
    """The run a pretrained + semi-supervised one is paired with to show what the mode adds: ``simclr+unimatch``
    -> ``simclr``; None for a run without both a pretraining method and a mode (``simclr``, ``none+bcp``)."""
    init, _, mode = method.partition("+")
    return init if mode and init != REFERENCE else None


def subset_gains(rows: list[dict], metric: str = "dice", reference=REFERENCE) -> list[dict]:
    """Each method's gain over random init (or over ``reference``), paired by labelled subset, at each budget.

    ``reference``: a method name, or a function ``method -> name | None`` (None: no partner), e.g.
    :func:`pretrained_alone` for the gain of a semi-supervised mode over pretraining alone; the
    partner is named in each result's ``reference``.

    A labelled subset is one seed of a budget: the same labelled cases for every
    method. Per subset the gain is the method's mean over test cases minus random
    init's on that subset; the interval and the test run across subsets
    (:func:`sslseg.report.stats.subset_test`).

    Returns:
        One dict per (arch, method, labelled cases) with a random-init partner:
        ``gains`` ({seed: gain}), ``method_mean``, ``ref_mean`` (means over the
        paired subsets) and the keys of :func:`~sslseg.report.stats.subset_test`.
    """
    means = subset_means(rows, metric)
    cells = sorted({k[:3] for k in means}, key=lambda c: (c[0], c[2], c[1]))
    out = []
    for arch, method, k in cells:
        ref = reference(method) if callable(reference) else reference
        if ref is None or method == ref:
            continue
        seeds = sorted(s for (a, m, kk, s) in means if (a, m, kk) == (arch, method, k)
                       and (arch, ref, k, s) in means)
        if not seeds:
            continue
        gains = {s: means[(arch, method, k, s)] - means[(arch, ref, k, s)] for s in seeds}
        t = subset_test(list(gains.values()))
        out.append({"arch": arch, "method": method, "labelled_cases": k, "gains": gains, "reference": ref,
                    "method_mean": float(np.nanmean([means[(arch, method, k, s)] for s in seeds])),
                    "ref_mean": float(np.nanmean([means[(arch, ref, k, s)] for s in seeds])), **t})
    return out


def gain_sentence(g: dict, metric: str = "Dice") -> str:
    """One line: how a method does against random init across labelled subsets, with its interval."""
    d = g["mean_gain"]
    ref = g.get("reference", REFERENCE)
    ref = "random init" if ref == REFERENCE else f"{ref} alone"
    text = f"{g['method']} {gain_word(d)} {ref} by {abs(d):.3f} {metric} at {g['labelled_cases']} labelled case(s)"
    if g["n"] < 2:
        return text + " [one labelled subset: no interval; run more seeds]"
    return (text + f" [95% CI across {g['n']} labelled subsets {g['ci_low']:+.3f} to {g['ci_high']:+.3f}; "
            f"ahead on {g['wins']}/{g['n']}; paired t-test {format_p(g['p_value'])}]{within_noise(g)}")


def gain_word(d: float) -> str:
    """``beats`` / ``loses to`` / ``ties with`` for a gain, as printed (a gain that rounds to 0.000 ties)."""
    d = round(float(d), 3)
    return "beats" if d > 0 else ("loses to" if d < 0 else "ties with")


def within_noise(g: dict) -> str:
    """A warning when the interval across labelled subsets includes 0 (the sign of the gain is not settled)."""
    if g["n"] >= 2 and g["ci_low"] <= 0 <= g["ci_high"]:
        return "; the interval includes 0: not a clear difference"
    return ""


def format_gains(gains: list[dict], metric: str = "Dice") -> str:
    """The gain lines of :func:`gain_sentence`, one per method and budget (with the arch when several)."""
    archs = {g["arch"] for g in gains}
    return "\n".join((f"{g['arch']}: " if len(archs) > 1 else "") + gain_sentence(g, metric) for g in gains)
