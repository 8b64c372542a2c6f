"""Compare fine-tuning recipes for a pretrained checkpoint against random init on synthetic-echo.

    .venv/bin/python studies/finetune_recipes.py --init /tmp/payoff/pre_simclr/checkpoint.pt \
        --budgets 1 --seeds 0 1 2 --recipe default --recipe freeze=100 --out /tmp/recipes

A recipe is ``name`` or ``key=value,key=value`` of FinetuneConfig fields; ``default``
is the stock recipe. Prints mean test Dice per (recipe, budget) over seeds.
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
from sslseg.experiments.pipeline import load_cases, run_evaluate, run_finetune, select_labelled

ALIASES = {"freeze": "freeze_encoder_steps", "enc_lr": "encoder_lr_ratio", "warmup": "warmup_steps"}


def parse_recipe(text: str) -> dict:
    if text == "default":
        return {}
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        out[ALIASES.get(k, k)] = yaml.safe_load(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", default="random")
    ap.add_argument("--recipe", action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=["1"])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--num-cases", type=int, default=48)
    ap.add_argument("--out", default="/tmp/sslseg-recipes")
    args = ap.parse_args()
    out = Path(args.out)
    cfg = RunConfig()
    cfg.data.options = {"num_cases": args.num_cases}
    cfg.model.options = {"base_channels": 16, "depth": 4, "norm": "batch"}
    cfg.finetune.steps = args.steps
    cfg.finetune.val_every = max(1, args.steps // 5)
    cfg.finetune.init = args.init
    cases = load_cases(cfg, out)
    rows = []
    for recipe in args.recipe or ["default"]:
        for budget in args.budgets:
            for seed in args.seeds:
                run = copy.deepcopy(cfg)
                run.seed = seed
                run.finetune.labels = budget
                for k, v in parse_recipe(recipe).items():
                    setattr(run.finetune, k, v)
                ids = select_labelled(cases, budget, seed, None)
                key = f"{recipe.replace('=', '').replace(',', '_')}_b{budget.replace('%', 'pct')}_s{seed}"
                t0 = time.perf_counter()
                ckpt = run_finetune(run, out / key, cases, labelled_ids=ids)
                d = float(np.nanmean([r["dice"] for r in run_evaluate(ckpt, cases, "test", out / key)]))
                rows.append({"init": args.init, "recipe": recipe, "budget": budget, "seed": seed, "dice": d,
                             "seconds": round(time.perf_counter() - t0, 1)})
                print(rows[-1], flush=True)
    with open(out / "recipes.csv", "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if f.tell() == 0:
            w.writeheader()
        w.writerows(rows)
    for recipe in args.recipe or ["default"]:
        for budget in args.budgets:
            ds = [r["dice"] for r in rows if r["recipe"] == recipe and r["budget"] == budget]
            print(f"{recipe:<24} budget {budget:>5}: mean Dice {np.mean(ds):.3f} ({', '.join(f'{v:.3f}' for v in ds)})")


if __name__ == "__main__":
    main()
