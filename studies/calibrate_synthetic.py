"""Difficulty of synthetic-echo: random-init Dice with 1 labelled case vs all labelled cases.

Target (foundation issue): one labelled case <= 0.80 mean test Dice, all labelled cases >= 0.88.

    .venv/bin/python studies/calibrate_synthetic.py --seeds 0 1 2 --steps 500 --out /tmp/calib
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import numpy as np

from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import load_cases, run_evaluate, run_finetune, select_labelled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=["1", "100%"])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--num-cases", type=int, default=48)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--out", default="/tmp/sslseg-calibrate")
    args = ap.parse_args()
    out = Path(args.out)
    cfg = RunConfig()
    cfg.data.options = {"num_cases": args.num_cases}
    cfg.model.options = {"base_channels": args.base_channels, "depth": 4, "norm": "batch"}
    cfg.finetune.steps = args.steps
    cfg.finetune.val_every = max(1, args.steps // 5)
    t0 = time.perf_counter()
    cases = load_cases(cfg, out)
    print(f"generated {len(cases)} videos in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for budget in args.budgets:
        for seed in args.seeds:
            run = copy.deepcopy(cfg)
            run.seed = seed
            run.finetune.labels = budget
            ids = select_labelled(cases, budget, seed, None)
            t0 = time.perf_counter()
            key = f"b{budget.replace('%', 'pct')}_s{seed}"
            ckpt = run_finetune(run, out / key, cases, labelled_ids=ids)
            res = run_evaluate(ckpt, cases, "test", out / key)
            d = float(np.nanmean([r["dice"] for r in res]))
            rows.append({"budget": budget, "labelled_cases": len(ids), "seed": seed, "dice": d,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    with open(out / "calibration.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for budget in args.budgets:
        ds = [r["dice"] for r in rows if r["budget"] == budget]
        print(f"budget {budget}: mean Dice {np.mean(ds):.3f} (per seed {', '.join(f'{v:.3f}' for v in ds)})")


if __name__ == "__main__":
    main()
