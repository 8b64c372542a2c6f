"""``sslseg demo``: the whole pipeline on built-in synthetic echo, as a small sweep plus its report.

Generates synthetic-echo, pretrains a small UNet encoder with SimCLR on every
frame of the training videos, fine-tunes random-init, SimCLR-init and SimCLR-init
+ semi-supervised models (the unlabelled frames used a second time) at two label
budgets (the full demo adds the supervised baseline on every labelled video),
evaluates each on the fixed test videos, and writes ``results.csv``, figures and
``report.html``. The printed table says where a step loses.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from ..report.tables import (
    REFERENCE,
    format_gains,
    pooled_by_subset,
    pretrained_alone,
    subset_gains,
    subset_means,
)
from .sweep import run_sweep
from .sweep_config import BaselineConfig, SweepConfig, SweepData, SweepModel

#: the semi-supervised mode the demo adds on top of SimCLR, chosen on validation Dice at the demo's
#: schedule (studies/semi_supervised.py, echo part, 5 subsets): SimCLR + bcp 0.822 / 0.877 at 1 / 4
#: labelled videos, SimCLR + unimatch 0.780 / 0.893, SimCLR alone 0.796 / 0.896 (README,
#: "Semi-supervised fine-tuning")
DEMO_MODE = "bcp"


def demo_config(quick: bool) -> SweepConfig:
    """The demo's numbers, in one place.

    Full: 64 labelled synthetic-echo videos and 64 unlabelled ones at 64x64;
    SimCLR pretrains once for 1200 steps on every frame of the training videos
    (labelled and not); random init, SimCLR init and SimCLR init + the
    semi-supervised mode :data:`DEMO_MODE` are fine-tuned for 200 steps each (the
    same steps, learning rate and augmentation) on 1 and 4 labelled videos, 5
    labelled subsets each, plus the supervised baseline. Measured on 2 CPU cores:
    README, "The demo". Quick: 32 videos, one labelled subset and short
    schedules, to see every stage run in under 3 minutes; too short to show the gain. bf16 autocast where the machine computes
    in bf16 natively (Dice did not move: README); on CPUs, fine-tuning runs go
    ``cores`` at a time (at most 4), on a GPU one at a time.
    """
    import torch

    from ..engine.distributed import native_bf16, usable_cores

    cores = usable_cores()
    return SweepConfig(
        data=SweepData(spec="synthetic-echo", image_size=64,
                       options={"num_cases": 32} if quick else {"num_cases": 64, "unlabelled": 64}),
        archs=["unet"],
        model=SweepModel(options={"base_channels": 16, "depth": 4, "norm": "batch"}),
        methods=["none", "simclr", f"simclr+{DEMO_MODE}"],
        budgets=[1, 4],
        seeds=[0] if quick else [0, 1, 2, 3, 4],
        pretrain_seed=0,
        jobs=1 if torch.cuda.is_available() else max(1, min(cores, 4)),
        precision="bf16-mixed" if native_bf16() else "32-true",
        pretrain={"steps": 300 if quick else 1200, "batch_size": 32, "warmup_steps": 20 if quick else 50},
        finetune={"steps": 100 if quick else 200, "batch_size": 8, "val_every": 50},
        baseline=BaselineConfig(enabled=not quick, augment=1.5),
    )


def run_demo(out_dir: str | Path, quick: bool = False, seed: int = 0) -> list[dict]:
    """The demo sweep into ``out_dir``, its table printed; returns the rows of ``results.csv``."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    cfg = demo_config(quick)
    cfg.seeds = [seed + s for s in cfg.seeds]
    cfg.pretrain_seed = seed
    print(f"sslseg demo{' --quick' if quick else ''}: synthetic-echo, random init vs SimCLR vs SimCLR + "
          f"{DEMO_MODE} (semi-supervised), {cfg.budgets} labelled videos, {len(cfg.seeds)} labelled subset(s) each; "
          f"writing to {out}")
    results = run_sweep(cfg, out)
    rows = list(csv.DictReader(open(results, newline="")))
    print()
    table = format_table(rows)
    print(table)
    if "loses to" in table:
        print(f"\nThe demo pretrained for {cfg.pretrain['steps']} steps and fine-tunes for {cfg.finetune['steps']} "
              "to fit its time budget. What decides the pay-off on this data (how many unlabelled videos, the "
              "pretraining length, how long the encoder stays frozen, the semi-supervised warm-up): README, "
              "'Does it pay off?' and 'Semi-supervised fine-tuning'.")
    print(f"\nresults: {results}\nfigure:  {out / 'figures' / 'dice_vs_labels.png'}\n"
          f"report:  {out / 'report.html'}\ntime:    {time.perf_counter() - t0:.0f} s")
    return rows


def format_table(rows: list[dict]) -> str:
    """Per initialisation and budget: mean Dice over the labelled subsets, the pooled Dice (each run's test
    frames pooled, then the mean over subsets), each subset's Dice, the gain
    over random init with its 95% interval across subsets (the subset is the unit, not the test case)
    and the mean HD95; then one sentence per method and budget."""
    means = subset_means(rows, "dice")
    pooled = pooled_by_subset(rows)  # the Dice published echo numbers use (README, "How we score")
    hd = subset_means(rows, "hd95")
    gains = {(g["method"], g["labelled_cases"]): g for g in subset_gains(rows, "dice")}
    over_pre = {(g["method"], g["labelled_cases"]): g for g in subset_gains(rows, "dice", pretrained_alone)}
    cells = sorted({(k, m) for (_, m, k, _) in means}, key=lambda c: (c[0], c[1] != REFERENCE, len(c[1]), c[1]))
    seeds = max((len([1 for (_, m, kk, _) in means if (m, kk) == c[::-1]]) for c in cells), default=1)
    width = max(22, 6 * seeds)

    def vs(g) -> str:
        if g is None:
            return ""
        if g["n"] < 2:
            return f"{g['mean_gain']:+.3f} (one subset)"
        return f"{g['mean_gain']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] ahead {g['wins']}/{g['n']}"

    lines = [f"{'init':<16} {'labelled':>8} {'Dice':>6} {'pooled':>6}  {'per labelled subset':<{width}} "
             f"{'vs random init [95% CI across subsets]':<38} {'vs pretraining alone':<38} {'HD95 mm':>8}"]
    for k, method in cells:
        dice = [v for (_, m, kk, _), v in sorted(means.items()) if (m, kk) == (method, k)]  # by seed
        hd95 = [v for (_, m, kk, _), v in hd.items() if (m, kk) == (method, k)]
        pool = [v for (_, m, kk, _), v in pooled.items() if (m, kk) == (method, k)]
        name = "random" if method == REFERENCE else method
        per = " ".join(f"{v:.3f}" for v in dice)
        lines.append(f"{name:<16} {k:>8d} {np.nanmean(dice):>6.3f} {np.mean(pool) if pool else float('nan'):>6.3f}  "
                     f"{per:<{width}} {vs(gains.get((method, k))):<38} "
                     f"{vs(over_pre.get((method, k))):<38} {np.nanmean(hd95) if hd95 else float('nan'):>8.2f}")
    notes = format_gains(subset_gains(rows, "dice")).splitlines()
    notes += format_gains(subset_gains(rows, "dice", pretrained_alone)).splitlines()
    return "\n".join(lines + [""] + notes)
