"""What post-processing does to Dice and HD95: the same checkpoints scored raw and cleaned.

Fine-tunes random-init models on the demo's synthetic-echo (its data, model and
fine-tuning schedule, unless told otherwise) at each label budget, then scores
every checkpoint on the test videos four ways: raw, largest connected component,
hole filling, both. Prints the means over test cases.

    PYTHONPATH=src .venv/bin/python studies/postprocess_effect.py --budgets 1 4 --out /tmp/sslseg-pp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sslseg.experiments.demo import demo_config
from sslseg.experiments.pipeline import load_cases, run_evaluate, run_finetune, select_labelled
from sslseg.experiments.sweep_config import run_config

VARIANTS = {"raw": {"largest_component": False, "fill_holes": False},
            "largest_component": {"largest_component": True, "fill_holes": False},
            "fill_holes": {"largest_component": False, "fill_holes": True},
            "both": {"largest_component": True, "fill_holes": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", nargs="+", default=["1", "4"], help="labelled videos")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="labelled subsets")
    ap.add_argument("--steps", type=int, help="fine-tuning steps (default: the demo's)")
    ap.add_argument("--quick", action="store_true", help="the quick demo's data and schedule")
    ap.add_argument("--out", default="/tmp/sslseg-postprocess")
    args = ap.parse_args()
    sw = demo_config(args.quick)
    out = Path(args.out)
    cfg = run_config(sw, sw.archs[0], args.seeds[0])
    cases = load_cases(cfg, out)
    print(f"{'budget':>6} {'seed':>4} {'variant':<18} {'Dice':>7} {'HD95 mm':>8} {'HD95 undefined':>15}")
    for budget in args.budgets:
        for seed in args.seeds:
            rc = run_config(sw, sw.archs[0], seed)
            rc.finetune.labels = budget
            if args.steps:
                rc.finetune.steps = args.steps
            run_dir = out / f"random_b{budget}_s{seed}"
            ckpt = run_dir / "checkpoint.pt"
            if not ckpt.exists():
                t0 = time.perf_counter()
                run_finetune(rc, run_dir, cases, labelled_ids=select_labelled(cases, budget, seed, None))
                print(f"fine-tuned budget {budget} seed {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
            for name, pp in VARIANTS.items():
                t0 = time.perf_counter()
                rows = run_evaluate(ckpt, cases, "test", run_dir / f"eval_{name}", postprocess=pp)
                d = np.nanmean([r["dice"] for r in rows])
                h = np.nanmean([r["hd95"] for r in rows])
                u = sum(int(r["hd95_undefined"]) for r in rows)
                print(f"{budget:>6} {seed:>4} {name:<18} {d:7.4f} {h:8.2f} {u:>15d}  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
