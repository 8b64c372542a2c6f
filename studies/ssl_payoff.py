"""Does pretraining buy labels? Each method vs random init on synthetic-echo.

Pretrains each method once (seed 0) on every frame of the training videos, then
fine-tunes at each label budget with several seeds (different labelled subsets
and initialisations of the decoder/head), evaluates on the fixed test videos,
and appends one row per run to ``payoff.csv``. Finished runs are skipped. Prints
each method's gain over random init paired by labelled subset and plots the
gains to ``payoff.png``.

    .venv/bin/python studies/ssl_payoff.py --methods none simclr byol regression global_local \
        regression_contrastive --budgets 1 4 --seeds 0 1 2 --pretrain-steps 400 --finetune-steps 300 \
        --out /tmp/payoff
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import numpy as np
import yaml

from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import (
    load_cases,
    run_evaluate,
    run_finetune,
    run_pretrain,
    select_labelled,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["none", "simclr"])
    ap.add_argument("--budgets", nargs="+", default=["1", "4"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--pretrain-batch", type=int, default=24)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--num-cases", type=int, default=48)
    ap.add_argument("--option", action="append", default=[],
                    help="a pretraining method option as key=value (e.g. strategy=GR), for every method")
    ap.add_argument("--tag", default="", help="appended to the method name in the folders and payoff.csv")
    ap.add_argument("--out", default="/tmp/sslseg-payoff")
    ap.add_argument("--summary-only", action="store_true", help="run nothing; summarise payoff.csv in --out")
    ap.add_argument("--label", action="append", default=[], metavar="RUN=TEXT",
                    help="show the run named RUN in payoff.csv as TEXT in the summary and figure")
    ap.add_argument("--figure", help="where to write the figure (default: payoff.png in --out)")
    args = ap.parse_args()
    options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.option)}
    out = Path(args.out)
    figure = Path(args.figure) if args.figure else out / "payoff.png"
    labels = dict(item.partition("=")[::2] for item in args.label)
    if args.summary_only:
        summarise(read_rows(out / "payoff.csv", labels), args.budgets, figure)
        return
    cfg = RunConfig()
    cfg.data.options = {"num_cases": args.num_cases}
    cfg.model.options = {"base_channels": 16, "depth": 4, "norm": "batch"}
    cfg.pretrain.steps = args.pretrain_steps
    cfg.pretrain.batch_size = args.pretrain_batch
    cfg.finetune.steps = args.finetune_steps
    cfg.finetune.val_every = max(1, args.finetune_steps // 5)
    cases = load_cases(cfg, out)
    csv_path = out / "payoff.csv"
    done = set()
    if csv_path.exists():
        done = {(r["method"], r["budget"], r["seed"]) for r in csv.DictReader(open(csv_path))}
    for method in args.methods:
        init = "random"
        name = method + args.tag if method != "none" else method
        if method != "none":
            pre_dir = out / f"pre_{name}_{args.pretrain_steps}"
            init = str(pre_dir / "checkpoint.pt")
            if not Path(init).exists():
                pc = copy.deepcopy(cfg)
                pc.pretrain.method = method
                pc.pretrain.options = dict(options)
                t0 = time.perf_counter()
                run_pretrain(pc, pre_dir, cases)
                print(f"pretrained {method} in {time.perf_counter() - t0:.0f} s", flush=True)
        for budget in args.budgets:
            for seed in args.seeds:
                if (name, budget, str(seed)) in done:
                    continue
                run = copy.deepcopy(cfg)
                run.seed = seed
                run.finetune.labels = budget
                run.finetune.init = init
                ids = select_labelled(cases, budget, seed, None)
                key = f"ft_{name}_b{budget}_s{seed}"
                t0 = time.perf_counter()
                ckpt = run_finetune(run, out / key, cases, labelled_ids=ids)
                d = float(np.nanmean([r["dice"] for r in run_evaluate(ckpt, cases, "test", out / key)]))
                row = {"method": name, "budget": budget, "seed": seed, "dice": round(d, 4),
                       "seconds": round(time.perf_counter() - t0, 1)}
                new = not csv_path.exists()
                with open(csv_path, "a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(row))
                    if new:
                        w.writeheader()
                    w.writerow(row)
                print(row, flush=True)
    summarise(read_rows(csv_path, labels), args.budgets, figure)


def read_rows(path: Path, labels: dict[str, str]) -> list[dict]:
    """The rows of payoff.csv; given labels, only the labelled runs (and random init), renamed, in the labels' order."""
    rows = list(csv.DictReader(open(path)))
    if labels:
        order = {run: i for i, run in enumerate(labels)}
        rows = sorted((r for r in rows if r["method"] == "none" or r["method"] in labels),
                      key=lambda r: order.get(r["method"], -1))
        rows = [{**r, "method": labels.get(r["method"], r["method"])} for r in rows]
    return rows


def paired_gains(rows: list[dict], budget: str) -> dict[str, dict[str, float]]:
    """Per method, Dice minus random init's on the same labelled subset (seed), for the seeds both ran."""
    base = {r["seed"]: float(r["dice"]) for r in rows if r["method"] == "none" and r["budget"] == budget}
    gains: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] != "none" and r["budget"] == budget and r["seed"] in base:
            gains.setdefault(r["method"], {})[r["seed"]] = float(r["dice"]) - base[r["seed"]]
    return gains


def summarise(rows: list[dict], budgets: list[str], figure: Path) -> None:
    """Print mean Dice per method and budget with the gain over random init paired by subset; plot the gains."""
    per_budget = {b: paired_gains(rows, b) for b in budgets}
    methods = list(dict.fromkeys(r["method"] for r in rows))  # payoff.csv's order, or the labels'
    for budget in budgets:
        gains = per_budget[budget]
        for method in methods:
            ds = [float(r["dice"]) for r in rows if r["method"] == method and r["budget"] == budget]
            if not ds:
                continue
            g = gains.get(method)
            gain = (f"{np.mean(list(g.values())):+.3f} vs random on the same {len(g)} subsets, "
                    f"ahead on {sum(v > 0 for v in g.values())}") if g else ""
            print(f"budget {budget:>3} {method:<28} mean Dice {np.mean(ds):.3f} "
                  f"({', '.join(f'{v:.3f}' for v in ds)}) {gain}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in methods if any(m in g for g in per_budget.values())]
    if not methods:
        return
    fig, axes = plt.subplots(1, len(budgets), figsize=(1.2 + 0.7 * len(methods) * len(budgets), 4.2),
                             sharey=True, squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        gains = per_budget[budget]
        for i, method in enumerate(methods):
            values = list(gains.get(method, {}).values())
            if not values:
                continue
            colour = "tab:green" if np.mean(values) > 0 else "tab:red"
            ax.scatter([i] * len(values), values, s=18, color=colour, alpha=0.6, zorder=3)
            ax.hlines(np.mean(values), i - 0.3, i + 0.3, color=colour, lw=2.5, zorder=4)
        ax.axhline(0, color="0.3", lw=1)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{budget} labelled video{'s' if budget != '1' else ''}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test Dice minus random init (same subset)")
    fig.suptitle("Does pretraining buy labels? dots: labelled subsets, bar: mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"figure: {figure}")

if __name__ == "__main__":
    main()
