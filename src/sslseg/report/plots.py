"""Figures rebuilt from ``results.csv`` rows (and, for overlays and curves, the run folders)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .stats import bootstrap_ci, early_peak


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dice_vs_labels(rows: list[dict], path: str | Path, metric: str = "dice", title: str | None = None) -> Path:
    """Mean ``metric`` with a 95% bootstrap band over test cases vs labelled cases, one line per method (and arch)."""
    plt = _plt()
    groups: dict[str, dict[int, list[float]]] = {}
    archs = {str(r.get("arch", "")) for r in rows}
    for r in rows:
        v = float(r[metric])
        if math.isnan(v):
            continue
        label = str(r["method"]) if len(archs) <= 1 else f"{r['method']} ({r['arch']})"
        label = "random init" if label == "none" else label
        groups.setdefault(label, {}).setdefault(int(r["labelled_cases"]), []).append(v)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    # the supervised baseline (every labelled case) is a level to reach, drawn across the budgets
    # as a dashed line, not a lone point far to the right of them
    refs = {m: g for m, g in groups.items() if m.startswith("supervised")}
    groups = {m: g for m, g in groups.items() if m not in refs}
    for method, by_k in sorted(groups.items()):
        ks = sorted(by_k)
        stats = np.array([bootstrap_ci(by_k[k]) for k in ks])
        ax.plot(ks, stats[:, 0], marker="o", label=method)
        ax.fill_between(ks, stats[:, 1], stats[:, 2], alpha=0.18)
    allk = sorted({k for g in groups.values() for k in g})
    for i, (method, by_k) in enumerate(sorted(refs.items())):
        for k in sorted(by_k):
            mean, lo, hi = bootstrap_ci(by_k[k])
            colour = f"C{(len(groups) + i) % 10}"
            ax.axhline(mean, color=colour, linestyle="--", lw=1.2, label=f"{method}, all {k} labelled")
            ax.axhspan(lo, hi, color=colour, alpha=0.06)
    if not allk:
        allk = sorted({k for g in refs.values() for k in g})
    groups.update(refs)
    if allk and allk[-1] > 2 * allk[0]:
        ax.set_xscale("log", base=2)
    ax.set_xticks(allk, [str(k) for k in allk])
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel({"dice": "Dice (test cases)", "hd95": "HD95 in mm (test cases)"}.get(metric, metric))
    ax.set_title(title or f"{metric} vs labelled cases (mean, 95% bootstrap CI)")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(title="initialisation", fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no defined {metric} value", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def _read_metrics(d: Path) -> list[dict]:
    f = d / "metrics.csv"
    return list(csv.DictReader(open(f, newline=""))) if f.exists() else []


def training_curves(
    run_dirs: list[Path], path: str | Path, pretrain_dirs: list[Path] | None = None,
    labels: dict[str, tuple[str, str]] | None = None,
) -> tuple[Path | None, list[dict]]:
    """Pretraining loss, fine-tuning loss and validation Dice vs step; early-peaking validation marked.

    Args:
        run_dirs: fine-tuning run folders (``metrics.csv`` each).
        path: the PNG to write.
        pretrain_dirs: pretraining run folders.
        labels: run folder name -> ``(group, detail)``: runs of one group (a method at a budget)
            share a colour and one legend entry; ``detail`` (the seed) tells them apart in flags.

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
            ax0.plot(*zip(*tr, strict=True), lw=1.2, color=f"C{i % 10}", label=d.name)
    groups = sorted({labels.get(d.name, (d.name, ""))[0] for d, _ in fine})
    colour = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    seen: set[str] = set()
    peaks = []
    for d, rows in fine:
        group = labels.get(d.name, (d.name, ""))[0]
        label = None if group in seen else group  # one legend entry per group
        seen.add(group)
        tr = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
        va = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
        if tr:
            ax1.plot(*zip(*tr, strict=True), lw=1, alpha=0.85, color=colour[group], label=label)
        if va:
            ax2.plot(*zip(*va, strict=True), marker=".", lw=1, alpha=0.85, color=colour[group], label=label)
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

    Reads a file written by :func:`sslseg.experiments.sweep.save_comparison`. Each
    panel: the image, the ground-truth contour (green), the method's prediction
    (red), titled with that frame's own Dice (mean over the classes present).
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
                    ax.contour(gt == k, levels=[0.5], colors="lime", linewidths=1.1)
                if (pred == k).any():
                    ax.contour(pred == k, levels=[0.5], colors="red", linewidths=1.1)
            d = float(data[f"dice_{i}_{j}"])
            ax.set_title(f"{col}\nthis frame: Dice {d:.3f}" if d == d else f"{col}\nthis frame: Dice undefined",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{name}\n{case_id}, frame {idx}", fontsize=8)
    fig.suptitle(title + "\ngreen: ground truth, red: prediction", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, tight=True)


def subset_gains_figure(gains: list[dict], path: str | Path, metric: str = "Dice") -> Path | None:
    """Gain over random init per labelled subset: one panel per budget, dots = subsets, bar = mean, whisker = 95% CI.

    ``gains``: :func:`sslseg.report.tables.subset_gains`. Green when the mean gain is
    positive, red when negative.
    """
    if not gains:
        return None
    plt = _plt()
    budgets = sorted({g["labelled_cases"] for g in gains})
    archs = {g["arch"] for g in gains}
    names = list(dict.fromkeys(g["method"] + (f"\n{g['arch']}" if len(archs) > 1 else "") for g in gains))
    fig, axes = plt.subplots(1, len(budgets), figsize=(max(6.5, 1.6 + 1.0 * len(names) * len(budgets)), 4.4),
                             sharey=True, squeeze=False, dpi=110)
    for ax, k in zip(axes[0], budgets, strict=True):
        for g in (g for g in gains if g["labelled_cases"] == k):
            i = names.index(g["method"] + (f"\n{g['arch']}" if len(archs) > 1 else ""))
            values = list(g["gains"].values())
            colour = "tab:green" if g["mean_gain"] > 0 else "tab:red"
            ax.scatter([i] * len(values), values, s=22, color=colour, alpha=0.7, zorder=3)
            ax.hlines(g["mean_gain"], i - 0.3, i + 0.3, color=colour, lw=2.5, zorder=4)
            if g["n"] >= 2:
                ax.vlines(i + 0.34, g["ci_low"], g["ci_high"], color=colour, lw=1.2, zorder=4)
            else:
                ax.annotate("1 subset", (i, g["mean_gain"]), textcoords="offset points", xytext=(0, 8),
                            ha="center", fontsize=7, color="0.3")
        ax.axhline(0, color="0.3", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(f"{k} labelled case{'s' if k != 1 else ''}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric} minus random init\n(same labelled subset)")
    fig.suptitle("Does pretraining buy labels?\ndots: labelled subsets (seeds), bar: mean, whisker: 95% CI (t)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path, tight: bool = False) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path
