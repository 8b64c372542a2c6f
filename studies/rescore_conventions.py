"""The same fine-tuned models scored under the old and the new evaluation conventions, side by side.

For synthetic-echo and synthetic-mri: random init and one pretrained encoder
(short runs), fine-tuned on each label budget, evaluated on the test cases;
each model is scored once and the rows are summarised four ways:

- old: mean of per-frame 2D Dice over frames with a non-empty truth (false
  positives on empty frames never count); HD95 mean over frames where it is
  defined (an empty prediction drops out);
- frames (new): per-frame means with empty-truth false positives scored 0 and an
  undefined HD95 penalised with the frame diagonal in mm;
- primary (new): the case's convention: 3D Dice/HD95 per volume for MRI, the
  per-frame means for echo;
- pooled: EchoNet's Dice pooled over every test frame.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python studies/rescore_conventions.py --out /tmp/rescore
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch

from sslseg.engine.trained import open_trained
from sslseg.evaluate.inference import score_cases
from sslseg.evaluate.metrics import pooled_dice
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import load_cases, run_finetune, run_pretrain, select_labelled


def old_convention(frame_rows: list[dict]) -> tuple[float, float, int]:
    """Per case: mean Dice over frames with a truth, mean HD95 where defined; then the mean over cases."""
    by: dict[str, list[dict]] = {}
    for r in frame_rows:
        by.setdefault(r["case_id"], []).append(r)
    dice, hd, dropped = [], [], 0
    for rows in by.values():
        d = [r["dice"] for r in rows if not r["truth_empty"]]
        h = [r["hd95"] for r in rows if not r["truth_empty"] and not r["pred_empty"]]
        dropped += sum(1 for r in rows if not r["truth_empty"] and r["pred_empty"])
        dice.append(np.mean(d) if d else math.nan)
        hd.append(np.mean(h) if h else math.nan)
    return float(np.nanmean(dice)), float(np.nanmean(hd)), dropped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sslseg-rescore")
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--finetune-steps", type=int, default=120)
    ap.add_argument("--budgets", nargs="+", default=["1", "4"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    setups = [
        ("synthetic-echo", {"num_cases": 16, "num_frames": 16, "size": 64}, "simclr", {}),
        ("synthetic-mri", {"num_cases": 16, "num_slices": 16, "size": 64}, "regression", {"mask_patch": 8}),
    ]
    print(f"{'data':<15} {'init':<11} {'labels':>6} | {'old Dice':>8} {'old HD95':>8} {'dropped':>7} | "
          f"{'frame Dice':>10} {'frame HD95':>10} | {'primary Dice':>12} {'primary HD95':>12} {'penalised':>9} | "
          f"{'pooled':>6}")
    for spec, options, method, mopts in setups:
        cfg = RunConfig()
        cfg.seed = args.seed
        cfg.data.spec, cfg.data.options, cfg.data.image_size = spec, options, 64
        cfg.model.options = {"base_channels": 8, "depth": 4}
        cfg.pretrain.method, cfg.pretrain.options = method, mopts
        cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.warmup_steps = args.pretrain_steps, 16, 20
        cfg.finetune.steps, cfg.finetune.batch_size = args.finetune_steps, 8
        cfg.finetune.val_every = max(1, args.finetune_steps // 4)
        root = out / spec
        cases = load_cases(cfg, root)
        t0 = time.perf_counter()
        pre = root / f"pre_{method}" / "checkpoint.pt"
        if not pre.exists():
            run_pretrain(cfg, pre.parent, cases)
        for init in ("random", str(pre)):
            for budget in args.budgets:
                run = copy.deepcopy(cfg)
                run.finetune.init, run.finetune.labels = init, budget
                ids = select_labelled(cases, budget, args.seed, None)
                key = root / f"ft_{'random' if init == 'random' else method}_b{budget}"
                ckpt_path = key / "checkpoint.pt"
                if not ckpt_path.exists():
                    run_finetune(run, key, cases, labelled_ids=ids)
                trained = open_trained(ckpt_path)
                test = [c for c in cases if c.split == "test" and c.masks]
                frames, per_case = score_cases(trained.model, test, trained.normalizer, trained.image_size,
                                               trained.num_classes)
                od, oh, dropped = old_convention(frames)
                fd = np.nanmean([r["dice_frames"] for r in per_case])
                fh = np.nanmean([r["hd95_frames"] for r in per_case])
                pd = np.nanmean([r["dice"] for r in per_case])
                ph = np.nanmean([r["hd95"] for r in per_case])
                pen = sum(r["hd95_penalised"] for r in per_case)
                name = "random" if init == "random" else method
                print(f"{spec:<15} {name:<11} {budget:>6} | {od:8.3f} {oh:8.2f} {dropped:7d} | {fd:10.3f} {fh:10.2f} | "
                      f"{pd:12.3f} {ph:12.2f} {pen:9d} | {pooled_dice(per_case):6.3f}  "
                      f"[{per_case[0]['convention']}, {len(per_case)} test cases]", flush=True)
        print(f"# {spec}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
