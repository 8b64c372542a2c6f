"""A sweep grows (more seeds, budgets, methods) keeping its finished runs; a change that would make them stale
is refused naming its keys; keys a sweep sets itself are refused; its runs hold their folders' locks, and its
workers die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sslseg.experiments import sweep
from sslseg.experiments.runfolder import lock

TINY = {
    "data": {"spec": "synthetic-echo", "options": {"num_cases": 6, "num_frames": 4, "size": 16}, "image_size": 16},
    "model": {"options": {"base_channels": 4, "depth": 2}},
    "methods": ["none"],
    "budgets": [1],
    "seeds": [0],
    "pretrain": {"steps": 1, "batch_size": 4, "warmup_steps": 0},
    "finetune": {"steps": 1, "batch_size": 2, "val_every": 1},
    "baseline": {"enabled": False},
}


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _counting(monkeypatch) -> list[str]:
    """The run folders fine-tuned from now on, in order."""
    real = sweep.run_finetune
    seen: list[str] = []

    def run_finetune(rc, run_dir, *a, **k):
        seen.append(Path(run_dir).name)
        return real(rc, run_dir, *a, **k)

    monkeypatch.setattr(sweep, "run_finetune", run_finetune)
    return seen


def test_a_sweep_grows_by_seeds_budgets_and_methods_and_names_what_changed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    sweep.run_sweep(_write(tmp_path / "s.yaml", TINY), out, write_report_at_end=False)
    first = out / "runs" / "none_unet_1_seed0"
    stamp = (first / "done.json").stat().st_mtime_ns, (first / "checkpoint.pt").stat().st_mtime_ns

    # config.yaml records what the network was built with, and only the sections its stage reads
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["model"]["options"] == {"base_channels": 4, "depth": 2, "norm": "batch"}
    assert "pretrain" not in saved and "finetune" in saved

    seen = _counting(monkeypatch)
    grown = dict(TINY, methods=["none", "simclr"], budgets=[1, 2], seeds=[0, 1])
    results = sweep.run_sweep(_write(tmp_path / "s.yaml", grown), out, write_report_at_end=False)
    assert "none_unet_1_seed0" not in seen  # the finished run was kept, not redone
    assert sorted(seen) == sorted(f"{m}_unet_{b}_seed{s}" for m in ("none", "simclr") for b in (1, 2)
                                  for s in (0, 1) if (m, b, s) != ("none", 1, 0))
    assert ((first / "done.json").stat().st_mtime_ns, (first / "checkpoint.pt").stat().st_mtime_ns) == stamp
    assert len({r["run"] for r in sweep.csv.DictReader(open(results))}) == 8
    pre = yaml.safe_load((out / "pretrain" / "simclr_unet_seed0" / "config.yaml").read_text())
    assert "finetune" not in pre and "evaluate" not in pre and pre["pretrain"]["method"] == "simclr"

    # growing again runs nothing; a changed learning rate or pretraining is refused, naming the keys
    seen.clear()
    sweep.run_sweep(_write(tmp_path / "s.yaml", grown), out, write_report_at_end=False)
    assert seen == []
    changed = dict(grown, finetune={**TINY["finetune"], "lr": 0.01})
    with pytest.raises(ValueError, match=r"holds 8 run\(s\) made with another config \(finetune.lr: 0.001 there, "
                                         r"0.01 now; e.g. runs/none_unet_1_seed0\)"):
        sweep.run_sweep(_write(tmp_path / "s.yaml", changed), out, write_report_at_end=False)
    changed = dict(grown, pretrain={**TINY["pretrain"], "steps": 3})
    with pytest.raises(ValueError, match=r"\(pretrain.steps: 1 there, 3 now; e.g. pretrain/simclr_unet_seed0\)"):
        sweep.run_sweep(_write(tmp_path / "s.yaml", changed), out, write_report_at_end=False)
    with pytest.raises(ValueError, match=r"scored with another config \(postprocess: 'none' there, 'all' now\)"):
        sweep.run_sweep(_write(tmp_path / "s.yaml", dict(grown, postprocess="all")), out, write_report_at_end=False)
    assert seen == []
    assert yaml.safe_load((out / "config.yaml").read_text())["seeds"] == [0, 1]  # a refusal leaves the saved config
    # back to the first config: nothing trains, and the table holds that config's runs only
    results = sweep.run_sweep(_write(tmp_path / "s.yaml", TINY), out, write_report_at_end=False)
    assert seen == [] and {r["run"] for r in sweep.csv.DictReader(open(results))} == {"none_unet_1_seed0"}


@pytest.mark.parametrize("key, value, match", [
    ("finetune", {"labels": 4}, "sweep.finetune.labels has no effect in a sweep: list the labelled-case budgets as "
                                "budgets: "),
    ("finetune", {"init": "x.pt"}, "sweep.finetune.init has no effect in a sweep: each method's runs start from"),
    ("pretrain", {"method": "byol"}, "sweep.pretrain.method has no effect in a sweep: list the pretraining methods"),
    ("seed", 3, "seed has no effect in a sweep: list the seeds as seeds: "),
    ("model", {"arch": "deeplabv3"}, "model.arch has no effect in a sweep: list the architectures as archs: "),
])
def test_keys_a_sweep_sets_itself_are_refused(tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        sweep.load_sweep_config(_write(tmp_path / "s.yaml", dict(TINY, **{key: value})))


def test_the_runs_of_a_sweep_hold_their_folders_lock(tmp_path, monkeypatch):
    """``sslseg pretrain/finetune --out`` into a sweep's run folder while the sweep trains there is refused."""
    real = sweep.run_finetune
    refusals = []

    def run_finetune(rc, run_dir, *a, **k):
        with pytest.raises(ValueError, match="is in use by process") as err:
            with lock(run_dir):
                pass
        refusals.append(str(err.value))
        return real(rc, run_dir, *a, **k)

    monkeypatch.setattr(sweep, "run_finetune", run_finetune)
    real_pre = sweep.run_pretrain

    def run_pretrain(pc, pre_dir, *a, **k):
        with pytest.raises(ValueError, match="is in use by process"):
            with lock(pre_dir):
                pass
        refusals.append(str(pre_dir))
        return real_pre(pc, pre_dir, *a, **k)

    monkeypatch.setattr(sweep, "run_pretrain", run_pretrain)
    sweep.run_sweep(_write(tmp_path / "s.yaml", dict(TINY, methods=["simclr"])), tmp_path / "run",
                    write_report_at_end=False)
    assert len(refusals) == 2  # the pretraining run and the fine-tuning run


def _children(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``."""
    kids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            kids.add(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_a_parallel_sweep_ends_its_workers_and_frees_its_locks(tmp_path):
    cfg = dict(TINY, budgets=[1, 2], jobs=2, finetune={**TINY["finetune"], "steps": 100000, "val_every": 0})
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    main = subprocess.Popen([sys.executable, "-m", "sslseg.cli", "sweep", str(_write(tmp_path / "s.yaml", cfg)),
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and main.poll() is None:
            workers = _children(main.pid)
            if len(workers) >= 2 and len(list(out.glob("runs/*/config.yaml"))) >= 2:
                break  # both workers are fine-tuning (each run's config.yaml is written as it starts)
            time.sleep(0.2)
        assert main.poll() is None and len(workers) >= 2, "the sweep never started its two workers"
        main.send_signal(signal.SIGKILL)
        main.wait()
        end = time.monotonic() + 5
        while time.monotonic() < end and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "the workers outlived the sweep's main process"
    finally:
        if main.poll() is None:
            main.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    for folder in [out, *out.glob("runs/*")]:
        with lock(folder):  # free: nobody holds them any longer
            pass
    assert sorted(p.name for p in out.glob("runs/*")) == ["none_unet_1_seed0", "none_unet_2_seed0"]
