"""Figures rebuilt from ``results.csv`` rows (and, for overlays and curves, the run folders)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .stats import bootstrap_ci


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
    for method, by_k in sorted(groups.items()):
        ks = sorted(by_k)
        stats = np.array([bootstrap_ci(by_k[k]) for k in ks])
        style = {"linestyle": "--"} if method.startswith("supervised") else {}
        ax.plot(ks, stats[:, 0], marker="o", label=method, **style)
        ax.fill_between(ks, stats[:, 1], stats[:, 2], alpha=0.18)
    allk = sorted({k for g in groups.values() for k in g})
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


def training_curves(run_dirs: list[Path], path: str | Path, max_runs: int = 12) -> Path | None:
    """Loss (and validation Dice) vs step for fine-tuning runs."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    n = 0
    for d in sorted(run_dirs)[:max_runs]:
        f = d / "metrics.csv"
        if not f.exists():
            continue
        rows = list(csv.DictReader(open(f, newline="")))
        tr = [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss")]
        va = [(int(r["step"]), float(r["val_dice"])) for r in rows if r.get("val_dice")]
        if tr:
            ax1.plot(*zip(*tr, strict=True), label=d.name, lw=1)
        if va:
            ax2.plot(*zip(*va, strict=True), marker=".", label=d.name, lw=1)
        n += 1
    if n == 0:
        plt.close(fig)
        return None
    ax1.set(xlabel="step", ylabel="training loss", title="fine-tuning loss")
    ax2.set(xlabel="step", ylabel="validation Dice", title="validation Dice")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def overlays(npz_path: Path, path: str | Path, title: str = "") -> Path | None:
    """Best, median and worst test case: image, ground-truth contour (green), prediction (red)."""
    if not npz_path.exists():
        return None
    plt = _plt()
    data = np.load(npz_path)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), dpi=110)
    for ax, name in zip(axes, ("best", "median", "worst"), strict=True):
        if f"{name}_image" not in data:
            ax.axis("off")
            continue
        img, gt, pred = data[f"{name}_image"], data[f"{name}_gt"], data[f"{name}_pred"]
        case_id, idx, dice = (str(x) for x in data[f"{name}_info"])
        ax.imshow(img, cmap="gray")
        for k in range(1, int(max(gt.max(), pred.max())) + 1):
            if (gt == k).any():
                ax.contour(gt == k, levels=[0.5], colors="lime", linewidths=1.2)
            if (pred == k).any():
                ax.contour(pred == k, levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{name}: {case_id} frame {idx}\nDice {float(dice):.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title + "  (green: ground truth, red: prediction)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # leave room for the title above the panel titles
    return _save(fig, path)


def _save(fig, path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
