"""Kill a training run at random moments, resume it each time, compare with a run never killed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/kill_resume.py --kills 20 --steps 60

Each attempt is a forked copy of this process running the command line
(``sslseg finetune`` on synthetic echo, augmentation on, validation every few
steps); it is sent SIGKILL after a random delay drawn between (0.8 x) the moment
training starts and the end of a whole run, then started again, until ``--kills`` kills have landed. The
resumed run's ``checkpoint.pt`` (every tensor) and ``metrics.csv`` (every
column but wall-clock seconds) are compared bitwise with the uninterrupted run.
Prints one line per kill (the step ``last.pt`` held afterwards) and a verdict.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from sslseg.cli import main


def command(out: Path, steps: int, arch: str) -> list[str]:
    return ["finetune", "--data", "synthetic-echo", "--arch", arch, "--image-size", "32", "--batch-size", "4",
            "--seed", "5", "--labels", "3", "--steps", str(steps), "--out", str(out),
            "--set", "model.options.base_channels=4" if arch == "unet" else "model.options={}",
            "--set", "data.options.num_cases=8", "--set", "data.options.num_frames=6",
            "--set", "data.options.size=32", "--set", f"finetune.val_every={max(1, steps // 6)}"]


def run_child(argv: list[str], delay: float | None, watch: Path | None = None) -> tuple[bool, float]:
    """Fork a run; kill it after ``delay`` seconds (None: let it finish). Returns (killed, seconds).

    With ``watch``, the time at which that file first appears is kept in ``STARTED``.
    """
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = main(argv)
        finally:
            os._exit(code)
    if delay is None:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if watch is not None and "t" not in STARTED and watch.exists():
                STARTED["t"] = time.perf_counter() - t0
            time.sleep(0.005)
        return False, time.perf_counter() - t0
    while time.perf_counter() - t0 < delay:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False, time.perf_counter() - t0
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return True, time.perf_counter() - t0


STARTED: dict[str, float] = {}


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(path, newline=""))]


def in_child(fn) -> str:
    """``fn()`` run in a forked child, its text returned: this process never computes with torch
    itself, so every run it forks starts from the same clean state."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            text = str(fn())
        except Exception as err:  # noqa: BLE001 - reported as text
            text = f"unreadable ({type(err).__name__})"
        os.write(w, text.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text


def snapshot_step(out: Path) -> str:
    last = out / "last.pt"
    if not last.exists():
        return "finished" if (out / "checkpoint.pt").exists() else "none"
    return in_child(lambda: torch.load(last, map_location="cpu", weights_only=True)["step"])


def main_() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--keep", action="store_true", help="keep the run folders")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a forked child must not meet an OpenMP pool; same threads in every run
    import sslseg.experiments.pipeline  # noqa: F401 - imported once here, not in every forked run (MONAI is slow)
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill_resume_"))
    ref, out = work / "reference", work / "killed"
    _, t_ref = run_child(command(ref, args.steps, args.arch), None, watch=ref / "log.txt")
    # the first log line comes when training starts; most kills should land in training, not in set-up
    t_train = STARTED.get("t", 0.0)
    print(f"uninterrupted run: {t_ref:.1f} s, training from {t_train:.1f} s")
    kills, attempts = 0, 0
    while kills < args.kills:
        attempts += 1
        if (out / "checkpoint.pt").exists():
            # finished before all kills landed: start over in a fresh folder, same comparison
            shutil.rmtree(out)
        killed, t = run_child(command(out, args.steps, args.arch), rnd.uniform(0.8 * t_train, t_ref))
        if killed:
            kills += 1
            print(f"kill {kills:2d} after {t:5.2f} s: last.pt at step {snapshot_step(out)}")
            sys.stdout.flush()
            if not (out / "checkpoint.pt").exists():
                continue
        if (out / "checkpoint.pt").exists():
            ok = compare(ref, out)
            print(f"  run finished; bitwise equal to the uninterrupted run: {ok}")
    if not (out / "checkpoint.pt").exists():
        run_child(command(out, args.steps, args.arch), None)
    ok = compare(ref, out)
    print(f"{kills} kills over {attempts} attempts; final run bitwise equal (weights and metrics.csv): {ok}")
    if not args.keep:
        shutil.rmtree(work)
    return 0 if ok else 1


def compare(ref: Path, out: Path) -> bool:
    return in_child(lambda: _compare(ref, out)) == "True"


def _compare(ref: Path, out: Path) -> bool:
    a, b = weights(ref / "checkpoint.pt"), weights(out / "checkpoint.pt")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return same and metrics(ref / "metrics.csv") == metrics(out / "metrics.csv")


if __name__ == "__main__":
    sys.exit(main_())
