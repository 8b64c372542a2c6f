"""Semi-supervised fine-tuning on top of pretraining: the README's tables, in one resumable command.

Each part is a ``sslseg sweep`` of its own folder under ``--out`` (run again with the
same ``--out``: finished runs are skipped, an unfinished one resumes):

- ``echo``: the demo's data (64 labelled + 64 unlabelled synthetic-echo videos at
  64 px, UNet base 16), SimCLR pretrained once for 1200 steps as the demo; random
  init and SimCLR init, each fine-tuned supervised, with UniMatch and with BCP,
  200 steps (the same steps, learning rate and augmentation in every mode) on 1
  and 4 labelled videos, 5 labelled subsets; the supervised baseline on every
  labelled training video.
- ``echo600``: SimCLR alone against SimCLR + BCP at ``sslseg finetune``'s default
  length, 600 steps, on one labelled video (the same SimCLR encoder, split and
  subsets, copied from ``echo``).
- ``mri``: ``configs/synthetic_mri_ismrm.yaml`` (the ISMRM protocol on synthetic
  prostate MRI) at N = 1 and 2 labelled volumes, 5 subsets, random init and
  regression init (the abstract's first pretext), supervised and with the
  mode the echo part chose on validation (``--mri-mode``, default bcp).

Printed per part: first the **validation** table (mean over labelled subsets of
each run's best validation Dice, the number that chose its checkpoint): the
default mode is chosen from it; then the **test** table with the gain of each
cell over random init and, for pretrained + semi-supervised, over pretraining
alone, paired by labelled subset (95% Student t interval across subsets).

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python studies/semi_supervised.py --out runs/semi
    ... --only echo | --only mri | --tables (print without running) | --tiny (every path, seconds)
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

ECHO = {
    "data": "synthetic-echo", "data_options": {"num_cases": 64, "unlabelled": 64}, "image_size": 64,
    "archs": ["unet"], "model_options": {"base_channels": 16, "depth": 4, "norm": "batch"},
    "methods": ["none", "simclr"], "modes": ["supervised", "unimatch", "bcp"], "budgets": [1, 4],
    "seeds": [0, 1, 2, 3, 4], "pretrain_seed": 0, "jobs": 2, "precision": "bf16-mixed",
    "pretrain": {"steps": 1200, "batch_size": 32, "warmup_steps": 50},
    "finetune": {"steps": 200, "batch_size": 8, "val_every": 50},
    "baseline": {"enabled": True, "augment": 1.5},
}


def echo_config(tiny: bool) -> dict:
    cfg = copy.deepcopy(ECHO)
    if tiny:
        cfg.update(image_size=32, budgets=[1], seeds=[0, 1], model_options={"base_channels": 4, "depth": 2})
        cfg["data_options"] = {"num_cases": 10, "num_frames": 6, "unlabelled": 2}
        cfg["pretrain"].update(steps=2, batch_size=8)
        cfg["finetune"].update(steps=4, val_every=2)
    return cfg


def echo_long_config(tiny: bool) -> dict:
    """The echo part at sslseg finetune's default length (600 steps), one labelled video: SimCLR alone
    against SimCLR + bcp (auto's mode), no baseline."""
    cfg = echo_config(tiny)
    cfg.update(budgets=[1], methods=["simclr"], modes=["supervised", "bcp"], baseline={"enabled": False})
    cfg["finetune"].update(steps=4 if tiny else 600, val_every=2 if tiny else 100)
    return cfg


def mri_config(mode: str, tiny: bool) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "synthetic_mri_ismrm.yaml").read_text())
    cfg.update(methods=["none", "regression"], modes=["supervised", mode], budgets=[1, 2], seeds=[0, 1, 2, 3, 4])
    if tiny:
        cfg.update(image_size=32, seeds=[0, 1], budgets=[1], model_options={"base_channels": 4, "depth": 2})
        cfg["data_options"] = {"num_cases": 12, "num_slices": 6, "size": 32}
        cfg["pretrain"].update(steps=2, batch_size=8)
        cfg["finetune"].update(steps=4, val_every=2)
    return cfg


def run(name: str, cfg: dict, out: Path, precision: str | None) -> Path:
    import yaml

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    if precision:
        cfg["precision"] = precision
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "sslseg", "sweep", str(path), "--out", str(folder)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return folder / "results.csv"


def _by_subset(rows: list[dict], key: str) -> dict[tuple, float]:
    """(method, labelled cases, seed) -> mean of ``key`` over that run's rows."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        v = float(r.get(key) or "nan")
        if not math.isnan(v):
            acc[(r["method"], int(r["labelled_cases"]), r["seed"])].append(v)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def validation_table(rows: list[dict]) -> str:
    """Mean best validation Dice over labelled subsets per cell: what picks the default mode."""
    by = _by_subset(rows, "val_dice")
    cells = sorted({(k, m) for (m, k, _) in by})
    lines = [f"{'method':<22} {'labelled':>8} {'val Dice':>9}  per subset"]
    for k, m in cells:
        vals = [v for (mm, kk, _), v in sorted(by.items()) if (mm, kk) == (m, k)]
        lines.append(f"{m:<22} {k:>8d} {np.mean(vals):>9.3f}  {' '.join(f'{v:.3f}' for v in vals)}")
    return "\n".join(lines)


def test_table(rows: list[dict]) -> str:
    """Mean test Dice per cell, the gain over random init and over pretraining alone (paired by subset)."""
    from sslseg.report.tables import pretrained_alone, subset_gains

    by = _by_subset(rows, "dice")
    vs_random = {(g["method"], g["labelled_cases"]): g for g in subset_gains(rows)}
    vs_pre = {(g["method"], g["labelled_cases"]): g for g in subset_gains(rows, reference=pretrained_alone)}

    def gain(g):
        if g is None:
            return ""
        if g["n"] < 2:
            return f"{g['mean_gain']:+.3f}"
        return f"{g['mean_gain']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] {g['wins']}/{g['n']}"

    cells = sorted({(k, m) for (m, k, _) in by})
    lines = [f"{'method':<22} {'labelled':>8} {'Dice':>6}  {'vs random init [95% CI] ahead':<34} "
             f"{'vs pretraining alone':<34}"]
    for k, m in cells:
        vals = [v for (mm, kk, _), v in by.items() if (mm, kk) == (m, k)]
        lines.append(f"{m:<22} {k:>8d} {np.mean(vals):>6.3f}  {gain(vs_random.get((m, k))):<34} "
                     f"{gain(vs_pre.get((m, k))):<34}")
    return "\n".join(lines)


def show(name: str, results: Path) -> None:
    if not results.exists():
        print(f"\n{name}: no results yet ({results})")
        return
    rows = list(csv.DictReader(open(results, newline="")))
    print(f"\n== {name}: validation (chooses) ==\n{validation_table(rows)}")
    print(f"\n== {name}: test (reports) ==\n{test_table(rows)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/semi")
    ap.add_argument("--only", choices=["echo", "echo600", "mri"])
    ap.add_argument("--mri-mode", default="bcp",
                    help="the semi-supervised mode of the MRI part (auto's, chosen on the echo part's validation)")
    ap.add_argument("--tables", action="store_true", help="print the tables of what has run, run nothing")
    ap.add_argument("--tiny", action="store_true", help="every path on tiny data (seconds)")
    ap.add_argument("--precision", help="override the sweeps' precision (32-true without native bf16)")
    args = ap.parse_args()
    out = Path(args.out)
    parts = {"echo": lambda: echo_config(args.tiny), "echo600": lambda: echo_long_config(args.tiny),
             "mri": lambda: mri_config(args.mri_mode, args.tiny)}
    for name, make in parts.items():
        if args.only and name != args.only:
            continue
        results = out / name / "results.csv"
        if name == "echo600" and (out / "echo" / "pretrain").is_dir() and not (out / name / "pretrain").exists():
            # the same data, split, subsets and SimCLR encoder as the echo part: pretrained once
            for sub in ("pretrain", "splits"):
                shutil.copytree(out / "echo" / sub, out / name / sub)
        if not args.tables:
            results = run(name, make(), out, args.precision)
        show(name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
