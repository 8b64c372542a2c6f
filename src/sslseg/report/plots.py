"""Figures rebuilt from ``results.csv`` rows alone."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def dice_vs_labels(rows: list[dict], path: str | Path, metric: str = "dice", title: str | None = None) -> Path:
    """Mean ``metric`` (+- 95% CI of the mean over test cases) vs number of labelled cases, one line per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        v = float(r[metric])
        if math.isnan(v):
            continue
        groups.setdefault(str(r["method"]), {}).setdefault(int(r["labelled_cases"]), []).append(v)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for method, by_k in sorted(groups.items()):
        ks = sorted(by_k)
        means = np.array([np.mean(by_k[k]) for k in ks])
        half = np.array([1.96 * np.std(by_k[k], ddof=1) / math.sqrt(len(by_k[k])) if len(by_k[k]) > 1 else 0 for k in ks])
        ax.plot(ks, means, marker="o", label=method)
        ax.fill_between(ks, means - half, means + half, alpha=0.2)
    ax.set_xscale("log", base=2)
    allk = sorted({k for g in groups.values() for k in g})
    ax.set_xticks(allk, [str(k) for k in allk])
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel({"dice": "Dice (test cases)", "hd95": "HD95, mm (test cases)"}.get(metric, metric))
    ax.set_title(title or f"{metric} vs labelled cases")
    ax.grid(alpha=0.3)
    ax.legend(title="initialisation")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
