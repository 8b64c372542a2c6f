"""Does pretraining buy labels? Each method vs random init on synthetic-echo.

Pretrains each method once (seed 0) on every frame of the training videos, then
fine-tunes at each label budget with several seeds (different labelled subsets
and initialisations of the decoder/head), evaluates on the fixed test videos,
and appends one row per run to ``payoff.csv``. Finished runs are skipped.

    .venv/bin/python benchmarks/ssl_payoff.py --methods none simclr byol regression global_local \
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
    args = ap.parse_args()
    options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.option)}
    out = Path(args.out)
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
    rows = list(csv.DictReader(open(csv_path)))
    for budget in args.budgets:
        base = [float(r["dice"]) for r in rows if r["method"] == "none" and r["budget"] == budget]
        for method in sorted({r["method"] for r in rows}):
            ds = [float(r["dice"]) for r in rows if r["method"] == method and r["budget"] == budget]
            if ds:
                gain = f"{np.mean(ds) - np.mean(base):+.3f} vs random" if base and method != "none" else ""
                print(f"budget {budget:>3} {method:<24} mean Dice {np.mean(ds):.3f} "
                      f"({', '.join(f'{v:.3f}' for v in ds)}) {gain}")


if __name__ == "__main__":
    main()
