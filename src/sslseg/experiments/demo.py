"""``sslseg demo``: the whole pipeline on built-in synthetic echo, as a small sweep plus its report.

Generates synthetic-echo, pretrains a small UNet encoder with SimCLR on every
frame of the training videos, fine-tunes random-init and SimCLR-init models at
two label budgets (the full demo adds the supervised baseline on every labelled
video), evaluates each on the fixed test videos, and writes ``results.csv``,
figures and ``report.html``. The printed table says where pretraining loses.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from ..report.tables import format_gains, format_text, subset_gains, summary_table
from .sweep import BaselineConfig, SweepConfig, run_sweep


def demo_config(quick: bool) -> SweepConfig:
    """The demo's numbers, in one place.

    Full: 48 videos at 112x112, 600 SimCLR steps, 300 fine-tuning steps, to
    stay under 15 minutes on 2 CPU cores (800 + 400 steps took 17.4 minutes);
    ``studies/ssl_payoff.py`` measures such schedules over several seeds.
    Quick: 32 videos at 64x64 and short schedules, to see every stage run in
    under 3 minutes; too short for pretraining to pay off.
    """
    return SweepConfig(
        data="synthetic-echo",
        data_options={"num_cases": 32 if quick else 48},
        image_size=64 if quick else 112,
        archs=["unet"],
        model_options={"base_channels": 16, "depth": 4, "norm": "batch"},
        methods=["none", "simclr"],
        budgets=[1, 4],
        seeds=[0],
        pretrain={"steps": 200 if quick else 600, "batch_size": 32 if quick else 24,
                  "warmup_steps": 20 if quick else 50},
        finetune={"steps": 150 if quick else 300, "batch_size": 8, "val_every": 50 if quick else 60},
        baseline=BaselineConfig(enabled=not quick, augment=1.5),
    )


def run_demo(out_dir: str | Path, quick: bool = False, seed: int = 0) -> list[dict]:
    """The demo sweep into ``out_dir``, its table printed; returns the rows of ``results.csv``."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    cfg = demo_config(quick)
    cfg.seeds = [seed]
    print(f"sslseg demo{' --quick' if quick else ''}: synthetic-echo, SimCLR vs random init, "
          f"{cfg.budgets} labelled videos; writing to {out}")
    results = run_sweep(cfg, out)
    rows = list(csv.DictReader(open(results, newline="")))
    print()
    table = format_table(rows)
    print(table)
    if "loses to random init" in table:
        print(f"\nThe demo pretrains for {cfg.pretrain['steps']} steps to fit its time budget. Pretraining length "
              "decides the pay-off on this data: README, 'Does it pay off?'.")
    print(f"\nresults: {results}\nfigure:  {out / 'figures' / 'dice_vs_labels.png'}\n"
          f"report:  {out / 'report.html'}\ntime:    {time.perf_counter() - t0:.0f} s")
    return rows


def format_table(rows: list[dict]) -> str:
    """Mean Dice (95% CI over test cases) per initialisation and budget, and where pretraining wins or loses."""
    table = summary_table(rows, "dice")
    # the gain paired by labelled subset (seed), with its interval across subsets when there are several
    notes = format_gains(subset_gains(rows, "dice")).splitlines()
    hd = {(h["method"], h["labelled_cases"]): h["mean"] for h in summary_table(rows, "hd95")}
    text = format_text(table, "dice").splitlines()
    text[0] += f" {'HD95 mm':>8}"
    for i, r in enumerate(table, start=1):
        text[i] += f" {hd.get((r['method'], r['labelled_cases']), float('nan')):>8.2f}"
    return "\n".join(text + [""] + notes)
