"""The README's pay-off tables at 64 px, in one resumable command, through ``sslseg sweep``.

Every variant is a sweep of its own folder under ``--out`` (run again with the
same ``--out`` and finished runs are skipped, an unfinished one resumes):

- ``echo_<variant>``: synthetic-echo, 64 videos at 64x64, UNet base 16; one
  encoder pretrained per variant (``pretrain_seed: 0``) on every frame of the
  training videos at batch 32, bf16 autocast; 200 fine-tuning steps on 1 and
  4 labelled videos, 3 labelled subsets (seeds), the same subsets in every
  variant. Random init is fine-tuned once (``echo_none``) and its runs are
  copied into every variant on the same data, so each table pairs with the same
  runs. Variants (``ECHO_VARIANTS``): SimCLR for 800 steps with the encoder
  frozen for 20 / 50 / 100% of the fine-tuning, for 2400 steps, and the demo's
  recipe (1200 steps, 64 more unlabelled videos, the automatic freeze); BYOL
  for 1600 steps, stock and with the predictor at 10x the learning rate;
  global_local (G^R on cines) for 1600 steps.
- ``probe.csv``: linear probe and effective rank of each pretrained echo encoder
  and of three random ones (``studies/encoder_probe.py``).
- ``mri_ismrm``: ``configs/synthetic_mri_ismrm.yaml`` (random init vs regression
  vs global_local G^D vs SimCLR at N = 1, 2, 4, 8 labelled volumes, 3 seeds,
  scored per volume); ``mri_global_local_GR``: the same with global_local's G^R.

Each folder gets the sweep's ``results.csv``, figures and ``report.html``; the
tables are printed at the end (``--tables`` prints them without running).

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python studies/payoff_sweeps.py --out runs/payoff64
"""

from __future__ import annotations

import argparse
import copy
import csv
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ECHO = {
    "data": "synthetic-echo", "data_options": {"num_cases": 64}, "image_size": 64, "archs": ["unet"],
    "model_options": {"base_channels": 16, "depth": 4, "norm": "batch"}, "budgets": [1, 4], "seeds": [0, 1, 2],
    "pretrain_seed": 0, "jobs": 2, "precision": "bf16-mixed",
    "pretrain": {"steps": 1600, "batch_size": 32, "warmup_steps": 50},
    "finetune": {"steps": 200, "batch_size": 8, "val_every": 50},
    "baseline": {"enabled": False},
}

#: folder suffix -> (method, overrides of ECHO's sections: pretrain / finetune / data_options)
ECHO_VARIANTS = {
    "simclr_800_freeze20": ("simclr", {"pretrain": {"steps": 800}, "finetune": {"freeze_encoder_fraction": 0.2}}),
    "simclr_800_freeze50": ("simclr", {"pretrain": {"steps": 800}, "finetune": {"freeze_encoder_fraction": 0.5}}),
    "simclr_800_freeze100": ("simclr", {"pretrain": {"steps": 800}, "finetune": {"freeze_encoder_fraction": 1.0}}),
    "simclr_2400_freeze20": ("simclr", {"pretrain": {"steps": 2400}, "finetune": {"freeze_encoder_fraction": 0.2}}),
    # the demo's recipe: 64 more videos without masks in the pretraining pool, the automatic freeze
    "simclr_1200_unlabelled64": ("simclr", {"pretrain": {"steps": 1200}, "data_options": {"unlabelled": 64}}),
    "byol_1600": ("byol", {}),
    "byol_plr10_1600": ("byol", {"pretrain": {"options": {"byol": {"predictor_lr_ratio": 10}}}}),
    "global_local_GR_1600": ("global_local", {}),
}


def echo_config(method: str, overrides: dict, tiny: bool) -> dict:
    cfg = copy.deepcopy(ECHO)
    cfg["methods"] = ["none"] if method == "none" else ["none", method]
    for key, values in overrides.items():
        cfg[key].update(values)
    if tiny:
        cfg.update(image_size=32, budgets=[1], seeds=[0, 1],
                   model_options={"base_channels": 4, "depth": 2, "norm": "batch"})
        cfg["data_options"].update(num_cases=10, num_frames=6, unlabelled=min(2, cfg["data_options"].get("unlabelled", 0)))
        cfg["pretrain"].update(steps=2, batch_size=8)
        cfg["finetune"].update(steps=2, val_every=1)
    return cfg


def mri_config(strategy: str, tiny: bool) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "synthetic_mri_ismrm.yaml").read_text())
    if strategy != "GD":
        cfg["methods"] = ["none", "global_local"]
        cfg["pretrain"]["options"] = {"global_local": {"strategy": strategy}}
    if tiny:
        cfg.update(data_options={"num_cases": 10}, image_size=32, budgets=[1, 2], seeds=[0],
                   model_options={"base_channels": 4, "depth": 2})
        cfg["pretrain"].update(steps=2, batch_size=8, warmup_steps=0)
        cfg["finetune"].update(steps=2, val_every=1)
    return cfg


def run(folder: Path, cfg: dict, reference: Path | None) -> None:
    """One sweep into ``folder``, with random init's finished runs copied from ``reference`` first."""
    from sslseg.experiments.sweep import run_sweep
    from sslseg.experiments.sweep_config import sweep_config

    if reference is not None:
        for src in sorted((reference / "runs").glob("none_*")):
            dst = folder / "runs" / src.name
            if (src / "done.json").exists() and not dst.exists():
                shutil.copytree(src, dst)
    print(f"== {folder.name}", flush=True)
    run_sweep(sweep_config(cfg, quiet=True), folder)


def probe(out: Path, tiny: bool) -> None:
    """Linear probe and effective rank of every pretrained echo encoder and of three random ones."""
    inits = [f"random:{s}" for s in range(3)] + [str(p) for p in sorted(out.glob("echo_*/pretrain/*/checkpoint.pt"))]
    size, cases = (32, 10) if tiny else (ECHO["image_size"], ECHO["data_options"]["num_cases"])
    cmd = [sys.executable, str(HERE / "encoder_probe.py"), "--num-cases", str(cases), "--image-size", str(size),
           "--out", str(out / "probe_data"), "--csv", str(out / "probe.csv")]
    for init in inits:
        cmd += ["--init", init]
    subprocess.run(cmd, check=True)


def tables(out: Path) -> None:
    from sslseg.experiments.demo import format_table

    for folder in sorted(p for p in out.iterdir() if (p / "results.csv").exists()):
        rows = list(csv.DictReader(open(folder / "results.csv", newline="")))
        print(f"\n== {folder.name}\n{format_table(rows)}")
    if (out / "probe.csv").exists():
        print("\n== probe.csv\n" + (out / "probe.csv").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/payoff64")
    ap.add_argument("--only", nargs="+", choices=["echo", "probe", "mri"], default=["echo", "probe", "mri"])
    ap.add_argument("--tables", action="store_true", help="print the tables of what is done, run nothing")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks that every path runs; numbers mean nothing")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.tables:
        if "echo" in args.only:
            ref = out / "echo_none"
            run(ref, echo_config("none", {}, args.tiny), None)
            for name, (method, overrides) in ECHO_VARIANTS.items():
                # random init's runs are shared where its data is the same (unlabelled videos change the normaliser)
                same_data = "data_options" not in overrides
                run(out / f"echo_{name}", echo_config(method, overrides, args.tiny), ref if same_data else None)
        if "probe" in args.only:
            probe(out, args.tiny)
        if "mri" in args.only:
            run(out / "mri_ismrm", mri_config("GD", args.tiny), None)
            run(out / "mri_global_local_GR", mri_config("GR", args.tiny), out / "mri_ismrm")
    tables(out)


if __name__ == "__main__":
    main()
