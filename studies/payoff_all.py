"""Every pay-off number of the README in one resumable command.

Groups (all by default; ``--only`` picks some), each through the study or
command that owns it, into its own folder under ``--out``:

- ``echo``: the README's echo pay-off table for each method's default recipe
  (``studies/ssl_payoff.py``: 48 synthetic-echo videos, 1600 pretraining steps,
  300 fine-tuning steps, 1 and 4 labelled videos, 3 labelled subsets), plus
  ``regression_contrastive`` with square masks (``mask_patch: 8``), which
  decides that method's default. Folder ``echo/``.
- ``byol``: BYOL's collapse cures beside the stock run, into the same
  ``echo/payoff.csv`` (same subsets, same random-init runs): the predictor at
  10x the learning rate (``predictor_lr_ratio``), a faster target
  (``momentum: 0.99``), twice the pretraining length, and both together.
- ``probe``: linear probe and effective rank of every pretrained encoder of
  ``echo/`` and of three random ones (``studies/encoder_probe.py``), into
  ``echo/probe.csv``.
- ``ismrm``: the ISMRM protocol on synthetic-mri through ``sslseg sweep
  configs/synthetic_mri_ismrm.yaml`` (random init vs regression vs global_local
  G^D vs SimCLR at N = 1, 2, 4, 8 labelled volumes, 3 seeds, scored per
  volume). Folder ``ismrm/``; the table is printed from its ``results.csv``.

It first prints what it will run, what is already done and an estimate of the
time left, then runs. Run it again with the same ``--out`` after an
interruption: finished pretraining and fine-tuning runs are skipped, an
unfinished pretraining resumes from its ``last.pt``. ``--dry-run`` only prints
the plan; ``--tiny`` runs every path at toy sizes (a check that the study
works, in minutes; its numbers mean nothing).

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python studies/payoff_all.py --out runs/payoff --dry-run
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GROUPS = ("echo", "byol", "probe", "ismrm")

# seconds per optimiser step (pretraining, batch 24 at 112 px) and per fine-tuning run (300 steps at batch 8,
# validation and test), one thread, alone on the machine: rough figures, measured at a load average of ~8 on
# a shared 2-core machine (SimCLR 10.6 s/step, a fine-tuning step 4.5 s) and scaled by 2/8. Replaced by
# the rates of finished runs in --out as soon as there are some.
PRETRAIN_STEP_S = {"simclr": 2.6, "byol": 3.7, "regression": 1.9, "global_local": 1.3,
                   "regression_contrastive": 4.4}
FINETUNE_RUN_S = 400.0
PROBE_S = 60.0  # one encoder
MRI_PIXELS = (96 / 112) ** 2  # the sweep's images against the echo study's


def echo_jobs(tiny: bool) -> list[dict]:
    """The ``ssl_payoff.py`` invocations: one per (methods, options, steps) variant."""
    steps = 2 if tiny else 1600
    jobs = [
        {"group": "echo", "methods": ["none", "simclr", "byol", "regression", "global_local",
                                      "regression_contrastive"], "steps": steps},
        {"group": "echo", "methods": ["regression_contrastive"], "steps": steps, "tag": "_patch8",
         "options": ["mask_patch=8"]},
        {"group": "byol", "methods": ["byol"], "steps": steps, "tag": "_plr10", "options": ["predictor_lr_ratio=10"]},
        {"group": "byol", "methods": ["byol"], "steps": steps, "tag": "_m099", "options": ["momentum=0.99"]},
        {"group": "byol", "methods": ["byol"], "steps": 2 * steps, "tag": "_long"},
        {"group": "byol", "methods": ["byol"], "steps": 2 * steps, "tag": "_plr10_long",
         "options": ["predictor_lr_ratio=10"]},
    ]
    return jobs


def echo_sizes(tiny: bool) -> dict:
    if tiny:
        return {"budgets": ["1"], "seeds": [0], "finetune_steps": 2, "num_cases": 8, "pretrain_batch": 8}
    return {"budgets": ["1", "4"], "seeds": [0, 1, 2], "finetune_steps": 300, "num_cases": 48, "pretrain_batch": 24}


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def payoff_command(job: dict, sizes: dict, out: Path) -> list[str]:
    cmd = python_cmd(str(HERE / "ssl_payoff.py"), "--methods", *job["methods"],
                     "--budgets", *sizes["budgets"], "--seeds", *map(str, sizes["seeds"]),
                     "--pretrain-steps", str(job["steps"]), "--pretrain-batch", str(sizes["pretrain_batch"]),
                     "--finetune-steps", str(sizes["finetune_steps"]), "--num-cases", str(sizes["num_cases"]),
                     "--out", str(out))
    for o in job.get("options", []):
        cmd += ["--option", o]
    if job.get("tag"):
        cmd += ["--tag", job["tag"]]
    return cmd


def finished_payoff_runs(out: Path) -> set[tuple[str, str, str]]:
    path = out / "payoff.csv"
    if not path.exists():
        return set()
    return {(r["method"], r["budget"], r["seed"]) for r in csv.DictReader(open(path))}


def run_rate(run_dir: Path) -> float | None:
    """Seconds per step of a finished or running loop, from its ``metrics.csv`` (None if none yet)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    rows = [r for r in csv.DictReader(open(path)) if r.get("seconds") and r.get("step") and r.get("loss")]
    if not rows or float(rows[-1]["step"]) <= 0:
        return None
    return float(rows[-1]["seconds"]) / float(rows[-1]["step"])


def measured_rates(out: Path) -> tuple[dict[str, float], float | None]:
    """Pretraining seconds per step by method and seconds per fine-tuning run, from finished runs in ``out``."""
    by_method: dict[str, list[float]] = {}
    for d in (out / "echo").glob("pre_*"):
        rate = run_rate(d)
        method = next((m for m in sorted(PRETRAIN_STEP_S, key=len, reverse=True) if d.name[4:].startswith(m)), None)
        if rate is not None and method is not None:
            by_method.setdefault(method, []).append(rate)
    runs = [float(r["seconds"]) for r in csv.DictReader(open(out / "echo" / "payoff.csv"))] \
        if (out / "echo" / "payoff.csv").exists() else []
    return ({m: statistics.median(v) for m, v in by_method.items()},
            statistics.median(runs) if runs else None)


def plan_echo(jobs: list[dict], sizes: dict, out: Path, rates: dict, ft_run_s: float) -> list[dict]:
    """Per job: its command, its pending pretraining steps and fine-tuning runs, and an estimate in seconds."""
    done = finished_payoff_runs(out)
    planned = []
    for job in jobs:
        pre_steps, ft_runs, seconds = 0, 0, 0.0
        for method in job["methods"]:
            name = method + job.get("tag", "") if method != "none" else method
            if method != "none" and not (out / f"pre_{name}_{job['steps']}" / "checkpoint.pt").exists():
                pre_steps += job["steps"]
                seconds += job["steps"] * rates.get(method, PRETRAIN_STEP_S[method])
            pending = [(name, b, str(s)) for b in sizes["budgets"] for s in sizes["seeds"]
                       if (name, b, str(s)) not in done]
            ft_runs += len(pending)
            seconds += len(pending) * ft_run_s * sizes["finetune_steps"] / 300
        planned.append({**job, "cmd": payoff_command(job, sizes, out), "pre_steps": pre_steps,
                        "ft_runs": ft_runs, "seconds": seconds})
    return planned


def probe_inits(out: Path) -> list[str]:
    return ["random", "random:1", "random:2"] + [str(p) for p in sorted(out.glob("pre_*/checkpoint.pt"))]


def plan_probe(out: Path, sizes: dict, pending_checkpoints: list[str]) -> dict:
    """The probe over the encoders there are now, plus those the echo jobs will write (counted, named later)."""
    csv_path = out / "probe.csv"
    done = {r["encoder"] for r in csv.DictReader(open(csv_path))} if csv_path.exists() else set()
    inits = probe_inits(out)
    todo = [i for i in inits if (i if i.startswith("random") else Path(i).parent.name) not in done]
    todo_names = {i if i.startswith("random") else Path(i).parent.name for i in todo}
    n = len(todo) + len([c for c in pending_checkpoints if c not in todo_names])
    return {"group": "probe", "n": n, "seconds": n * PROBE_S * (0.2 if sizes["num_cases"] < 48 else 1.0)}


def probe_command(out: Path, sizes: dict) -> list[str]:
    cmd = python_cmd(str(HERE / "encoder_probe.py"), "--num-cases", str(sizes["num_cases"]), "--out", str(out),
                     "--csv", str(out / "probe.csv"))
    for i in probe_inits(out):
        cmd += ["--init", i]
    return cmd


def ismrm_overrides(tiny: bool) -> list[str]:
    if not tiny:
        return []
    return ["data_options.num_cases=8", "image_size=32", "model_options.base_channels=4", "model_options.depth=3",
            "budgets=[1, 2]", "seeds=[0]", "pretrain.steps=2", "pretrain.batch_size=8", "pretrain.warmup_steps=0",
            "finetune.steps=2", "finetune.val_every=1", "baseline.steps=2"]


def plan_ismrm(out: Path, tiny: bool, rates: dict, ft_run_s: float) -> dict:
    """Pending pretraining runs and fine-tuning runs of the sweep, as ``run_sweep`` will name them."""
    sys.path.insert(0, str(ROOT / "src"))
    from sslseg.experiments.sweep_config import load_sweep_config
    from sslseg.experiments.sweep_plan import plan, run_dir

    config = ROOT / "configs" / "synthetic_mri_ismrm.yaml"
    sw = load_sweep_config(config, ismrm_overrides(tiny))
    runs = plan(sw, n_train=10**6)  # the run names do not depend on the number of training cases
    pending = [r for r in runs if not (run_dir(out, r) / "done.json").exists()]
    # each pretraining run once (several fine-tuning runs share it), by the folder the sweep gives it
    pre = {run_dir(out, r, "pretrain"): r["init"] for r in pending if r["kind"] == "finetune" and r["init"] != "none"}
    pre = [m for folder, m in pre.items() if not (folder / "checkpoint.pt").exists()]
    steps = int(sw.pretrain.get("steps", 0))
    ft_steps = int(sw.finetune.get("steps", 300))
    seconds = sum(steps * rates.get(m, PRETRAIN_STEP_S.get(m, 1.0)) * MRI_PIXELS for m in pre)
    seconds += len(pending) * ft_run_s * MRI_PIXELS * ft_steps / 300
    cmd = python_cmd("-c", "import sys; from sslseg.cli import main; sys.exit(main(sys.argv[1:]))",
                     "sweep", str(config), "--out", str(out))
    for s in ismrm_overrides(tiny):
        cmd += ["--set", s]
    return {"group": "ismrm", "cmd": cmd, "pre_runs": len(pre), "pre_steps": steps, "ft_runs": len(pending),
            "total_runs": len(runs), "seconds": seconds}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def summarise_ismrm(out: Path) -> None:
    """Mean per-volume Dice per method and labelled volumes, with the gain over random init paired by seed."""
    path = out / "results.csv"
    if not path.exists():
        return
    per_run: dict[tuple[str, str, str], list[float]] = {}
    for r in csv.DictReader(open(path)):
        if r["dice"] not in ("", "nan"):
            per_run.setdefault((r["method"], r["budget"], r["seed"]), []).append(float(r["dice"]))
    rows = [{"method": m, "budget": b, "seed": s, "dice": statistics.fmean(v)} for (m, b, s), v in per_run.items()]
    order = ["none", "regression", "global_local", "simclr"]  # the config's, random init first
    rows.sort(key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
    sys.path.insert(0, str(HERE))
    from ssl_payoff import summarise

    budgets = list(dict.fromkeys(r["budget"] for r in rows if r["method"] != "supervised"))
    print(f"ISMRM protocol on synthetic-mri ({path}): mean over test volumes of the 3D Dice, then over seeds")
    summarise(rows, budgets, out / "payoff.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/payoff", help="one folder for all groups (resumable)")
    ap.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the estimate; run nothing")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: checks that every path runs; numbers mean nothing")
    args = ap.parse_args()
    out = Path(args.out)
    echo_out, ismrm_out = out / "echo", out / "ismrm"
    sizes = echo_sizes(args.tiny)
    rates, ft_run_s = measured_rates(out)
    ft_run_s = ft_run_s or FINETUNE_RUN_S

    jobs = [j for j in echo_jobs(args.tiny) if j["group"] in args.only]
    echo_plan = plan_echo(jobs, sizes, echo_out, rates, ft_run_s)
    new_ckpts = [f"pre_{m + j.get('tag', '')}_{j['steps']}" for j in echo_plan for m in j["methods"]
                 if m != "none" and j["pre_steps"]]
    probe = plan_probe(echo_out, sizes, new_ckpts) if "probe" in args.only else None
    ismrm = plan_ismrm(ismrm_out, args.tiny, rates, ft_run_s) if "ismrm" in args.only else None

    print(f"plan for {out}{' (tiny sizes: numbers mean nothing)' if args.tiny else ''}:")
    total = 0.0
    for j in echo_plan:
        what = f"{'+'.join(j['methods'])}{j.get('tag', '')} {' '.join(j.get('options', []))}".strip()
        print(f"  {j['group']:<6} {what:<58} pretrain {j['pre_steps']:>5} steps, fine-tune {j['ft_runs']:>2} runs "
              f"~{hours(j['seconds'])}")
        total += j["seconds"]
    if probe:
        print(f"  probe  linear probe + effective rank of {probe['n']} encoder(s)"
              f"{'':<17} ~{hours(probe['seconds'])}")
        total += probe["seconds"]
    if ismrm:
        print(f"  ismrm  sweep configs/synthetic_mri_ismrm.yaml: pretrain {ismrm['pre_runs']} x {ismrm['pre_steps']} steps, "
              f"fine-tune {ismrm['ft_runs']} of {ismrm['total_runs']} runs ~{hours(ismrm['seconds'])}")
        total += ismrm["seconds"]
    source = "rates of finished runs in --out" if rates or (echo_out / "payoff.csv").exists() else \
        "rough rates from a shared 2-core machine"
    print(f"estimate: ~{hours(total)} of one CPU core ({source}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    if args.dry_run:
        return

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    for j in echo_plan:
        if j["pre_steps"] or j["ft_runs"]:
            print(f"\n== {j['group']}: {' '.join(j['cmd'][1:])}", flush=True)
            subprocess.run(j["cmd"], check=True, env=env)
    if probe:
        cmd = probe_command(echo_out, sizes)
        print(f"\n== probe: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, env=env)
    if ismrm:
        if ismrm["ft_runs"]:
            print(f"\n== ismrm: sslseg {' '.join(ismrm['cmd'][3:])}", flush=True)
            subprocess.run(ismrm["cmd"], check=True, env=env)
        summarise_ismrm(ismrm_out)
    if any(j["group"] in ("echo", "byol") for j in echo_plan) and (echo_out / "payoff.csv").exists():
        print("\nsynthetic-echo pay-off table (all runs in echo/payoff.csv):", flush=True)
        subprocess.run(python_cmd(str(HERE / "ssl_payoff.py"), "--summary-only", "--out", str(echo_out),
                                  "--budgets", *sizes["budgets"]), check=True, env=env)
    if probe and (echo_out / "probe.csv").exists():
        print(f"\nprobe (test Dice per stage; erank: effective rank of the pooled deepest features):\n"
              f"{(echo_out / 'probe.csv').read_text()}")
    print(f"done in {hours(time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
