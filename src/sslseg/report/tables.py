"""Tables rebuilt from ``results.csv`` rows."""

from __future__ import annotations

import math
from collections import defaultdict

from .stats import bootstrap_ci, paired_test

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
