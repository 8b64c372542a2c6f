"""Figures rebuilt from ``results.csv`` rows (and, for overlays and curves, the run folders)."""

from __future__ import annotations

import csv
import math
import zlib
from pathlib import Path

import numpy as np

from .stats import VERDICTS, early_peak, t_interval, verdict

# Okabe & Ito's palette, told apart with the common colour-vision deficiencies
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7"}
# one colour per method in every figure: each initialisation its own; a semi-supervised mode on top of it a
# darker (bcp) or lighter (unimatch) shade of that colour, with its own line style and marker
INIT_COLOURS = {"none": OKABE_ITO["black"], "simclr": OKABE_ITO["blue"], "byol": OKABE_ITO["orange"],
                "regression": OKABE_ITO["bluish green"], "regression_contrastive": OKABE_ITO["reddish purple"],
                "global_local": OKABE_ITO["sky blue"], "global_contrastive": OKABE_ITO["vermillion"],
                "local_contrastive": "#B8A400", "supervised": "#7F7F7F"}
MODE_STYLES = {"": ("-", "o", 0.0), "supervised": ("-", "o", 0.0), "bcp": ("--", "s", -0.45),
               "unimatch": (":", "^", 0.45)}
TRUTH, PREDICTION = OKABE_ITO["sky blue"], OKABE_ITO["orange"]  # overlays: no red/green pair


def method_style(method: str) -> dict:
    """Colour, line style and marker of a method (``random init`` or ``none``, ``simclr``, ``simclr+bcp``, ...),
    the same in every figure; a name the table does not know gets a fixed colour from its letters."""
    init, _, mode = str(method).partition("+")
    init = "none" if init == "random init" else init
    colour = INIT_COLOURS.get(init)
    if colour is None:
        palette = [c for k, c in OKABE_ITO.items() if k not in ("black", "yellow")]
        colour = palette[zlib.crc32(init.encode()) % len(palette)]
    ls, marker, shade = MODE_STYLES.get(mode, ("-.", "D", 0.3))
    return {"color": _shade(colour, shade), "linestyle": ls, "marker": marker}


def _shade(colour: str, amount: float) -> str:
    """``colour`` mixed with white (``amount`` > 0) or black (< 0); black (random init) lightens to a dark
    grey (< 0) or a light one (> 0), either side of the supervised baseline's mid grey."""
    from matplotlib.colors import to_hex, to_rgb

    rgb = np.array(to_rgb(colour))
    if amount and not rgb.any():
        amount = 0.33 if amount < 0 else 0.67
    mixed = rgb + (1 - rgb) * amount if amount > 0 else rgb * (1 + amount)
    return to_hex(np.clip(mixed, 0, 1))


def _limits(points: list[float], intervals: list[tuple[float, float]], valid: tuple[float, float],
            pad: float = 0.25, reach: float = 0.45) -> tuple[float, float]:
    """Axis limits that show every point, and intervals only as far as ``reach`` x the points' span past them:
    a wide interval (few subsets) is clipped rather than squashing the points into a line."""
    pts = [p for p in points if not math.isnan(p)]
    if not pts:
        return valid if all(map(math.isfinite, valid)) else (0.0, 1.0)
    lo, hi = min(pts), max(pts)
    span = max(hi - lo, 0.05 * max(abs(hi), abs(lo), 1e-9), 1e-3)
    ends = [e for iv in intervals for e in iv if not math.isnan(e)]
    low = max(min([lo - pad * span] + [e for e in ends if e >= lo - reach * span]), lo - reach * span)
    high = min(max([hi + pad * span] + [e for e in ends if e <= hi + reach * span]), hi + reach * span)
    if any(e < low for e in ends):
        low = lo - reach * span
    if any(e > high for e in ends):
        high = hi + reach * span
    return max(low, valid[0]), min(high, valid[1])


def _clip(ax, x: float, lo: float, hi: float, colour: str) -> tuple[float, float, bool]:
    """``(lo, hi)`` clipped to the axis; a triangle at the edge where it was (returns whether it was)."""
    y0, y1 = ax.get_ylim()
    clipped = False
    if lo < y0:
        ax.plot([x], [y0], marker="v", color=colour, ms=7, clip_on=False, zorder=6, linestyle="none")
        clipped = True
    if hi > y1:
        ax.plot([x], [y1], marker="^", color=colour, ms=7, clip_on=False, zorder=6, linestyle="none")
        clipped = True
    return max(lo, y0), min(hi, y1), clipped


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_points(rows: list[dict], metric: str = "dice") -> dict[tuple[str, str], dict[int, tuple]]:
    """``(method, arch) -> {labelled cases: (mean, low, high, subsets)}``: the mean over labelled subsets (seeds)
    of each subset's mean over its test cases, and the 95% Student-t interval across subsets (NaN with one),
    the unit of the headline gains."""
    from .tables import subset_means

    means = subset_means(rows, metric)
    out: dict[tuple[str, str], dict[int, tuple]] = {}
    for (arch, method, k) in sorted({key[:3] for key in means}):
        vals = [v for (a, m, kk, _), v in means.items() if (a, m, kk) == (arch, method, k) and not math.isnan(v)]
        if vals:
            out.setdefault((method, arch), {})[k] = (*t_interval(vals), len(vals))
    return out


def dice_vs_labels(rows: list[dict], path: str | Path, metric: str = "dice", title: str | None = None) -> Path:
    """Mean ``metric`` vs labelled cases, one line per method (and arch), with the 95% t interval across labelled
    subsets as its band (:func:`curve_points`); the supervised baseline is a dashed level. The y axis stays on
    the metric's range around the means; a band that runs past it is clipped and marked."""
    plt = _plt()
    points = curve_points(rows, metric)
    archs = sorted({a for _, a in points})
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    valid = (0.0, 1.0) if metric != "hd95" else (0.0, math.inf)

    def name(method, arch):
        label = "random init" if method == "none" else method
        return label if len(archs) <= 1 else f"{label} ({arch})"

    # the supervised baseline (every labelled case) is a level to reach, drawn across the budgets
    # as a dashed line, not a lone point far to the right of them
    refs = {key: v for key, v in points.items() if key[0].startswith("supervised")}
    lines = {key: v for key, v in points.items() if key not in refs}
    means = [p[0] for v in points.values() for p in v.values()]
    subset_vals = [v for key, v in _subset_values(rows, metric).items()]
    ax.set_ylim(*_limits(means + subset_vals, [(p[1], p[2]) for v in points.values() for p in v.values()], valid))
    clipped = False
    allk = sorted({k for v in lines.values() for k in v}) or sorted({k for v in refs.values() for k in v})
    log = bool(allk) and allk[-1] > 2 * allk[0]
    if log:
        ax.set_xscale("log", base=2)
    for (method, arch), by_k in sorted(lines.items(), key=lambda x: (x[0][0] != "none", x[0])):
        st = method_style(method)
        if len(archs) > 1:
            st["marker"] = "osD^v<>"[archs.index(arch) % 7]
        ks = sorted(by_k)
        ax.plot(ks, [by_k[k][0] for k in ks], label=name(method, arch), **st)
        band = [(k, *_clip(ax, k, by_k[k][1], by_k[k][2], st["color"])) for k in ks if not math.isnan(by_k[k][1])]
        if band:
            clipped |= any(c for *_, c in band)
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band], color=st["color"],
                            alpha=0.15, linewidth=0)
    for (method, arch), by_k in sorted(refs.items()):
        colour = method_style(method)["color"]
        for k, (mean, lo, hi, _) in sorted(by_k.items()):
            ax.axhline(mean, color=colour, linestyle="--", lw=1.2, label=f"{name(method, arch)}, all {k} labelled")
            if not math.isnan(lo):
                x = allk[-1] if allk else k
                lo, hi, c = _clip(ax, x, lo, hi, colour)
                clipped |= c
                ax.axhspan(lo, hi, color=colour, alpha=0.08, linewidth=0)
    if allk:
        ax.set_xticks(allk, [str(k) for k in allk])
    ax.set_xlabel("labelled training cases" + (" (log2 scale)" if log else ""))
    ax.set_ylabel({"dice": "Dice (test cases)", "hd95": "HD95 in mm (test cases)"}.get(metric, metric))
    ax.set_title(title or f"{metric} vs labelled cases\n(mean over labelled subsets, 95% t interval across them)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if clipped:
        ax.text(0.99, 0.01, "\u25b2\u25bc interval clipped at the axis", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=7, color="0.3")
    if points:
        ax.legend(title="initialisation", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no defined {metric} value", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def _subset_values(rows: list[dict], metric: str) -> dict[tuple, float]:
    from .tables import subset_means

    return {k: v for k, v in subset_means(rows, metric).items() if not math.isnan(v)}


def _read_metrics(d: Path) -> list[dict]:
    f = d / "metrics.csv"
    return list(csv.DictReader(open(f, newline=""))) if f.exists() else []


def training_curves(
    run_dirs: list[Path], path: str | Path, pretrain_dirs: list[Path] | None = None,
    labels: dict[str, tuple[str, str]] | None = None, methods: dict[str, str] | None = None,
) -> tuple[Path | None, list[dict]]:
    """Pretraining loss, fine-tuning loss and validation Dice vs step; early-peaking validation marked.

    Args:
        run_dirs: fine-tuning run folders (``metrics.csv`` each).
        path: the PNG to write.
        pretrain_dirs: pretraining run folders.
        labels: run folder name -> ``(group, detail)``: runs of one group (a method at a budget)
            share a line style and one legend entry; ``detail`` (the seed) tells them apart in flags.
        methods: run folder name -> method: the colour of :func:`method_style` (the same in every
            figure); groups of one method differ by line style.

    Returns:
        The figure's path (None when no run has metrics) and the early peaks
        (:func:`sslseg.report.stats.early_peak` of each run whose validation Dice fell, with ``run``).
    """
    plt = _plt()
    labels = labels or {}
    pre = [(d, _read_metrics(d)) for d in sorted(pretrain_dirs or [])]
    pre = [(d, rows) for d, rows in pre if rows]
    fine = [(d, _read_metrics(d)) for d in sorted(run_dirs)]
    fine = [(d, rows) for d, rows in fine if rows]
    if not pre and not fine:
        return None, []
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), dpi=110)
    ax0, ax1, ax2 = axes
    for i, (d, rows) in enumerate(pre):
        tr = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
        if tr:
            known = [m for m in INIT_COLOURS if d.name.startswith(m + "_")]
            colour = method_style(max(known, key=len))["color"] if known else f"C{i % 10}"
            ax0.plot(*zip(*tr, strict=True), lw=1.2, color=colour, label=d.name)
    methods = methods or {}
    groups = sorted({labels.get(d.name, (d.name, ""))[0] for d, _ in fine})
    group_method = {labels.get(d.name, (d.name, ""))[0]: methods.get(d.name) for d, _ in fine}
    colour, dashes = {}, {}
    for i, g in enumerate(groups):
        m = group_method.get(g)
        colour[g] = method_style(m)["color"] if m else f"C{i % 10}"
        same = [h for h in groups if group_method.get(h) == m]  # one method at several budgets
        dashes[g] = ("-", "--", ":", "-.")[same.index(g) % 4] if m else "-"
    seen: set[str] = set()
    peaks = []
    for d, rows in fine:
        group = labels.get(d.name, (d.name, ""))[0]
        label = None if group in seen else group  # one legend entry per group
        seen.add(group)
        tr = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
        va = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
        if tr:
            ax1.plot(*zip(*tr, strict=True), lw=1, alpha=0.85, color=colour[group], linestyle=dashes[group],
                     label=label)
        if va:
            ax2.plot(*zip(*va, strict=True), marker=".", lw=1, alpha=0.85, color=colour[group],
                     linestyle=dashes[group], label=label)
            peak = early_peak(va)
            if peak is not None:
                peaks.append({"run": d.name, **peak})
                ax2.plot([peak["peak_step"]], [peak["peak"]], marker="v", ms=9, color=colour[group],
                         markeredgecolor="black", zorder=5)
    ax0.set(xlabel="step", ylabel="pretext loss", title="pretraining loss")
    ax1.set(xlabel="step", ylabel="training loss", title="fine-tuning loss")
    ax2.set(xlabel="step", ylabel="validation Dice",
            title="validation Dice" + ("  (\u25bc peaked early, then fell)" if peaks else ""))
    if not pre:
        ax0.text(0.5, 0.5, "no pretraining run", ha="center", va="center", transform=ax0.transAxes)
    if not any(r.get("val_dice") for _, rows in fine for r in rows):
        ax2.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax2.transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            # below the axes, so that no curve is hidden behind it
            ax.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                      ncol=2 if len(names) > 3 else 1, frameon=False)
    fig.tight_layout()
    return _save(fig, path, tight=True), peaks


def overlays(npz_path: Path, path: str | Path, title: str = "") -> Path | None:
    """Every method on the same frames: rows = frames (best, median, worst for the reference), columns = methods.

    Reads a file written by :func:`sslseg.report.compare.save_comparison`. Each
    panel: the image, the ground-truth contour (sky blue, solid), the method's
    prediction (orange, dashed: a pair colour-blind readers tell apart, and told
    apart by line style too), titled with that frame's own Dice (mean over the
    classes present).
    """
    if not Path(npz_path).exists():
        return None
    plt = _plt()
    data = np.load(npz_path)
    names = [str(x) for x in data["rows"]]
    columns = [str(x) for x in data["columns"]]
    if not names or not columns:
        return None
    fig, axes = plt.subplots(len(names), len(columns), figsize=(2.6 * len(columns) + 0.6, 2.7 * len(names) + 0.5),
                             dpi=110, squeeze=False)
    for i, name in enumerate(names):
        img, gt = data[f"image_{i}"], data[f"gt_{i}"]
        case_id, idx = (str(x) for x in data[f"info_{i}"])
        for j, col in enumerate(columns):
            ax = axes[i][j]
            pred = data[f"pred_{i}_{j}"]
            ax.imshow(img, cmap="gray")
            for k in range(1, int(max(gt.max(), pred.max())) + 1):
                if (gt == k).any():
                    ax.contour(gt == k, levels=[0.5], colors=TRUTH, linewidths=1.3)
                if (pred == k).any():
                    ax.contour(pred == k, levels=[0.5], colors=PREDICTION, linewidths=1.3, linestyles="--")
            d = float(data[f"dice_{i}_{j}"])
            ax.set_title(f"{col}\nthis frame: Dice {d:.3f}" if d == d else f"{col}\nthis frame: Dice undefined",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{name}\n{case_id}, frame {idx}", fontsize=8)
    fig.suptitle(title + "\nsky blue, solid: ground truth; orange, dashed: prediction", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, tight=True)


def subset_gains_figure(gains: list[dict], path: str | Path, metric: str = "Dice") -> Path | None:
    """Gain over random init per labelled subset: one panel per budget, dots = subsets, bar = mean, whisker = 95% CI.

    ``gains``: :func:`sslseg.report.tables.subset_gains`. Each method in its own colour
    (:func:`method_style`), the verdict of its interval written above it (clear gain, clear
    loss, no clear difference). The y axis shows every subset; a whisker that runs far past
    them (a t interval of 2 or 3 subsets) is clipped, marked and its end written.
    """
    if not gains:
        return None
    plt = _plt()
    budgets = sorted({g["labelled_cases"] for g in gains})
    archs = {g["arch"] for g in gains}
    names = list(dict.fromkeys(g["method"] + (f"\n{g['arch']}" if len(archs) > 1 else "") for g in gains))
    fig, axes = plt.subplots(1, len(budgets), figsize=(max(6.5, 1.6 + 1.1 * len(names) * len(budgets)), 4.6),
                             sharey=True, squeeze=False, dpi=110)
    dots = [v for g in gains for v in g["gains"].values()] + [g["mean_gain"] for g in gains] + [0.0]
    axes[0][0].set_ylim(*_limits(dots, [(g["ci_low"], g["ci_high"]) for g in gains], (-1.0, 1.0)))
    clipped = False
    for ax, k in zip(axes[0], budgets, strict=True):
        for g in (g for g in gains if g["labelled_cases"] == k):
            i = names.index(g["method"] + (f"\n{g['arch']}" if len(archs) > 1 else ""))
            st = method_style(g["method"])
            values = list(g["gains"].values())
            ax.scatter([i] * len(values), values, s=24, color=st["color"], marker=st["marker"], alpha=0.75, zorder=3)
            ax.hlines(g["mean_gain"], i - 0.3, i + 0.3, color=st["color"], lw=2.5, zorder=4)
            v = verdict(g["ci_low"], g["ci_high"], g["n"])
            if g["n"] >= 2:
                lo, hi, c = _clip(ax, i + 0.34, g["ci_low"], g["ci_high"], st["color"])
                ax.vlines(i + 0.34, lo, hi, color=st["color"], lw=1.3, zorder=4)
                if c:
                    clipped = True
                    y0, y1 = ax.get_ylim()
                    for end, at, va in ((g["ci_low"], y0, "bottom"), (g["ci_high"], y1, "top")):
                        if (end < y0) if at == y0 else (end > y1):
                            ax.annotate(f"to {end:+.2f}", (i + 0.34, at), textcoords="offset points",
                                        xytext=(4, 4 if va == "bottom" else -4), ha="left", va=va, fontsize=7,
                                        color="0.25")
            words = {"single": "1 subset", "unclear": "no clear\ndifference"}.get(v, VERDICTS[v])
            ax.annotate(words, (i, 1.0), xycoords=("data", "axes fraction"), textcoords="offset points",
                        xytext=(0, 3), ha="center", va="bottom", fontsize=7,
                        color="0.15" if v in ("gain", "loss") else "0.45",
                        fontweight="bold" if v in ("gain", "loss") else "normal")
        ax.axhline(0, color="0.3", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(f"{k} labelled case{'s' if k != 1 else ''}", fontsize=10, pad=26)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric} minus random init\n(same labelled subset)")
    note = "; \u25b2\u25bc whisker clipped at the axis" if clipped else ""
    fig.suptitle("Does pretraining buy labels?\ndots: labelled subsets (seeds), bar: mean, whisker: 95% CI (t)"
                 + note, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path, tight: bool = False) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path
