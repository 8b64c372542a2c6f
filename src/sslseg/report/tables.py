"""Tables rebuilt from ``results.csv`` rows."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .stats import VERDICTS, format_p, hierarchical_bootstrap_ci, subset_test, t_interval, verdict

REFERENCE = "none"  # random initialisation


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _cases(rows: list[dict]) -> dict[tuple, set]:
    """The test cases of each ``(arch, method, labelled cases)``."""
    out: dict[tuple, set] = defaultdict(set)
    for r in rows:
        out[(r["arch"], r["method"], int(r["labelled_cases"]))].add(r["case_id"])
    return out


def pooled_by_subset(rows: list[dict]) -> dict[tuple, float]:
    """Pooled Dice of each run's test set, ``2 * sum |P & G| / sum (|P| + |G|)`` over every scored frame of its
    test cases, per ``(arch, method, labelled cases, seed)`` of cines (convention ``frame``); empty when the
    rows carry no ``overlap``/``total``.

    The published echo numbers are pooled Dice: EchoNet-Dynamic pools the whole test split, contrastive-echo
    each batch of 128 test frames (a test set of up to 64 two-frame cines is one batch, where the two agree).
    """
    from ..evaluate.metrics import pooled_dice

    if not rows or any(r.get("total") in (None, "") or r.get("overlap") in (None, "") for r in rows):
        return {}
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by[(r["arch"], r["method"], int(r["labelled_cases"]), str(r["seed"]))].append(r)
    # cines only: a volume's Dice is already pooled over its slices, and no published number pools volumes
    return {key: pooled_dice(rs) for key, rs in by.items() if all(r.get("convention") == "frame" for r in rs)}


def _paired(means: dict, arch: str, method: str, other: str, k: int) -> dict:
    """:func:`~sslseg.report.stats.subset_test` of ``method`` minus ``other`` on the subsets both ran."""
    seeds = sorted(s for (a, m, kk, s) in means if (a, m, kk) == (arch, method, k) and (arch, other, k, s) in means)
    return subset_test([means[(arch, method, k, s)] - means[(arch, other, k, s)] for s in seeds])


def summary_table(rows: list[dict], metric: str = "dice") -> list[dict]:
    """Per (arch, method, labelled cases): the mean over labelled subsets with its 95% t interval across them,
    the gain over random init paired by subset with its interval and verdict, and the clear winner per budget.

    The unit is the labelled subset (seed), as in the headline gains: a subset's value is its mean over the
    test cases, and the interval runs across subsets (none with one subset). ``best`` marks a row only when it
    is ahead of every other initialisation at that budget with each paired interval excluding 0 (a clear
    winner); with no clear winner no row is marked. ``cases`` counts the test cases, ``n`` the rows,
    ``subsets`` the subsets; ``pooled`` (Dice only) is the mean over subsets of each run's pooled Dice
    (:func:`pooled_by_subset`), NaN when the rows lack its terms.
    """
    means = subset_means(rows, metric)
    pooled = pooled_by_subset(rows) if metric == "dice" else {}
    cases = _cases(rows)
    count: dict[tuple, int] = defaultdict(int)
    for r in rows:
        count[(r["arch"], r["method"], int(r["labelled_cases"]))] += 1
    higher_better = metric != "hd95"
    out = []
    for cell in sorted({k[:3] for k in means}, key=lambda c: (c[0], c[2], c[1])):
        seeds = sorted(s for (*c, s) in means if tuple(c) == cell)
        vals = [means[(*cell, s)] for s in seeds]
        mean, lo, hi = t_interval(vals)
        pv = [pooled[(*cell, s)] for s in seeds if (*cell, s) in pooled and not math.isnan(pooled[(*cell, s)])]
        out.append({"arch": cell[0], "method": cell[1], "labelled_cases": cell[2], "n": count[cell],
                    "cases": len(cases[cell]), "subsets": sum(not math.isnan(v) for v in vals), "mean": mean,
                    "ci_low": lo, "ci_high": hi, "pooled": float(np.mean(pv)) if pv else math.nan})
    for row in out:
        arch, method, k = row["arch"], row["method"], row["labelled_cases"]
        peers = [o["method"] for o in out if (o["arch"], o["labelled_cases"]) == (arch, k) and o["method"] != method]
        row["best"] = bool(peers) and all(
            verdict(t["ci_low"], t["ci_high"], t["n"], higher_better) == "gain"
            for t in (_paired(means, arch, method, p, k) for p in peers))
        row["gain"] = row["gain_low"] = row["gain_high"] = math.nan
        row["verdict"] = ""
        if REFERENCE in peers:
            t = _paired(means, arch, method, REFERENCE, k)
            if t["n"]:
                row.update(gain=t["mean_gain"], gain_low=t["ci_low"], gain_high=t["ci_high"],
                           verdict=verdict(t["ci_low"], t["ci_high"], t["n"], higher_better))
    return out


def paired_tests(rows: list[dict], metric: str = "dice") -> list[dict]:
    """Each method against random init at each budget at the test-case level, paired on (seed, case_id).

    The interval is a two-level bootstrap (:func:`~sslseg.report.stats.hierarchical_bootstrap_ci`): labelled
    subsets drawn with replacement, then test cases within each, so that it cannot claim more than the
    subsets allow. Returns per cell ``mean_diff`` (mean over subsets of the mean paired difference),
    ``ci_low``/``ci_high``, ``n`` pairs, ``subsets`` and ``wins`` (pairs the method is ahead on).
    """
    by = defaultdict(dict)
    for r in rows:
        by[(r["arch"], r["method"], int(r["labelled_cases"]))][(str(r["seed"]), r["case_id"])] = _f(r[metric])
    out = []
    for (arch, method, k), vals in sorted(by.items(), key=lambda x: (x[0][0], x[0][2], x[0][1])):
        ref = by.get((arch, REFERENCE, k))
        if method == REFERENCE or ref is None:
            continue
        keys = sorted(set(vals) & set(ref))
        diffs: dict[str, list[float]] = defaultdict(list)
        for key in keys:
            d = vals[key] - ref[key]
            if not math.isnan(d):
                diffs[key[0]].append(d)
        if not diffs:
            continue
        mean, lo, hi = hierarchical_bootstrap_ci(list(diffs.values()))
        flat = [d for v in diffs.values() for d in v]
        out.append({"arch": arch, "method": method, "labelled_cases": k, "mean_diff": mean, "ci_low": lo,
                    "ci_high": hi, "n": len(flat), "subsets": len(diffs), "wins": sum(d > 0 for d in flat)})
    return out


def _count_text(counts: set[int], what: str) -> str:
    counts = sorted(counts)
    return f"{counts[0]} {what}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]} {what}"


def metric_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take: Dice in [0, 1], HD95 in [0, inf)."""
    return (0.0, math.inf) if metric == "hd95" else (0.0, 1.0)


def clip_ci(lo: float, hi: float, metric: str = "dice") -> tuple[float, float, bool]:
    """An interval of a mean, clipped to what the metric can take (a t interval of 2 subsets runs past it),
    and whether it was."""
    a, b = metric_range(metric)
    if math.isnan(lo) or math.isnan(hi):
        return lo, hi, False
    return max(lo, a), min(hi, b), lo < a or hi > b


def format_text(table: list[dict], metric: str = "dice") -> str:
    """The console table: mean and interval across labelled subsets, the paired gain over random init with its
    interval and what it says (clear gain, clear loss, no clear difference), and a clear winner only."""
    clipped = False

    def ci(lo, hi, fmt, clip=False):
        nonlocal clipped
        if math.isnan(lo) or math.isnan(hi):
            return ""
        if clip:
            lo, hi, c = clip_ci(lo, hi, metric)
            clipped |= c
        return f"[{lo:{fmt}}, {hi:{fmt}}]"

    pooled = metric == "dice" and any(not math.isnan(r.get("pooled", math.nan)) for r in table)
    lines = [f"{'arch':<10} {'method':<24} {'labelled':>8} {'subsets':>7} {metric:>7} {'95% CI':>16} "
             + (f"{'pooled':>7} " if pooled else "") + f"{'vs random':>10} {'95% CI':>18}  verdict"]
    for r in table:
        gain = "" if math.isnan(r["gain"]) else f"{r['gain']:+.3f}"
        words = VERDICTS.get(r["verdict"], "")
        if r["best"]:
            words = f"{words}; clearly best" if words else "clearly best"
        line = (f"{r['arch']:<10} {r['method']:<24} {r['labelled_cases']:>8d} {r['subsets']:>7d} "
                f"{r['mean']:>7.3f} {ci(r['ci_low'], r['ci_high'], '.3f', clip=True):>16} "
                + (f"{r['pooled']:>7.3f} " if pooled else "")
                + f"{gain:>10} {ci(r['gain_low'], r['gain_high'], '+.3f'):>18}  {words}")
        lines.append(line.rstrip())
    cases = _count_text({r["cases"] for r in table}, "test cases")
    notes = [
        f"{metric}: mean over labelled subsets (seeds) of each subset's mean over its {cases}; 95% CI: Student t "
        "across subsets (none with one subset)" + (f", clipped to the range {metric} can take." if clipped else "."),
        "vs random: the method minus random init on the same labelled subset, averaged over subsets; verdict: "
        "clear gain or clear loss when its 95% CI excludes 0, else no clear difference.",
        "clearly best: ahead of every other initialisation at that budget, each paired CI excluding 0 (no row is "
        "marked when none is).",
    ]
    if pooled:
        notes.insert(1, f"{metric} of cines: the per-frame mean. pooled: 2 x sum |P & G| / sum (|P| + |G|) over each "
                        "run's test frames, mean over subsets; published echo Dice (EchoNet-Dynamic 0.92, "
                        "contrastive-echo 0.9252) are pooled.")
    return "\n".join(lines + [""] + notes)


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
    """One line: what the interval across labelled subsets says of a method against its reference.

    Clear gain (``beats``) or clear loss (``loses to``) only when the 95% interval excludes 0; otherwise
    ``no clear difference``, whatever the sign or size of the mean; with one subset, where and by how much
    it stands, and that there is no interval.
    """
    d = g["mean_gain"]
    ref = g.get("reference", REFERENCE)
    ref = "random init" if ref == REFERENCE else f"{ref} alone"
    at = f"at {g['labelled_cases']} labelled case(s)"
    v = verdict(g["ci_low"], g["ci_high"], g["n"])
    if v == "single":
        return (f"{g['method']} is {gain_word(d)} {ref} by {abs(d):.3f} {metric} {at} "
                "[one labelled subset: no interval; run more seeds]")
    detail = (f"95% CI across {g['n']} labelled subsets {g['ci_low']:+.3f} to {g['ci_high']:+.3f}; "
              f"ahead on {g['wins']}/{g['n']}; paired t-test {format_p(g['p_value'])}")
    if v == "gain":
        return f"{g['method']} beats {ref} by {abs(d):.3f} {metric} {at}: a clear gain [{detail}]"
    if v == "loss":
        return f"{g['method']} loses to {ref} by {abs(d):.3f} {metric} {at}: a clear loss [{detail}]"
    return (f"{g['method']}: no clear difference from {ref} {at} (mean {d:+.3f} {metric}) "
            f"[{detail}; the interval includes 0]")


def gain_verdict(g: dict) -> str:
    """``gain``, ``loss``, ``unclear`` or ``single`` for a gain of :func:`subset_gains`."""
    return verdict(g["ci_low"], g["ci_high"], g["n"])


def gain_word(d: float) -> str:
    """Where one subset's gain stands, as printed: ``ahead of`` / ``behind`` / ``level with`` (rounds to 0.000)."""
    d = round(float(d), 3)
    return "ahead of" if d > 0 else ("behind" if d < 0 else "level with")


def format_gains(gains: list[dict], metric: str = "Dice") -> str:
    """The gain lines of :func:`gain_sentence`, one per method and budget (with the arch when several)."""
    archs = {g["arch"] for g in gains}
    return "\n".join((f"{g['arch']}: " if len(archs) > 1 else "") + gain_sentence(g, metric) for g in gains)
