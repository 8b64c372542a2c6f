"""Exact resume: runs killed for real (SIGKILL) at chosen moments end bitwise equal to one never killed.

Each killed run is a forked copy of this process (so torch is imported once)
running the command line with real batches and augmentation; a hook kills it
at the chosen moment. The same command is then run again to the end and its
``checkpoint.pt`` and ``metrics.csv`` compared with an uninterrupted run's.
"""

import csv
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn

from sslseg.cli import main
from sslseg.engine import checkpoint as checkpoint_mod
from sslseg.engine import resume
from sslseg.engine.loop import LoopConfig, fit
from sslseg.experiments import pipeline
from sslseg.finetune.modes import MODES
from sslseg.pretrain.simclr import SimCLR

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked runs")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # a forked child must not enter an OpenMP pool its parent started (it would hang), and
    # bitwise equality needs the same thread count in every run: one, throughout
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

TINY = ["--data", "synthetic-echo", "--image-size", "32", "--batch-size", "4", "--seed", "3",
        "--set", "model.options.base_channels=4", "--set", "model.options.depth=2",
        "--set", "data.options.num_cases=8", "--set", "data.options.num_frames=6", "--set", "data.options.size=32"]
FINETUNE = ["finetune", *TINY, "--labels", "3", "--steps", "20", "--set", "finetune.val_every=5", "--mode", "supervised"]
PRETRAIN = ["pretrain", *TINY, "--method", "simclr", "--steps", "12"]


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(obj, name, n, before=True):
    """Replace ``obj.name`` by a wrapper that kills the process at its ``n``-th call (before or after it runs)."""
    original = getattr(obj, name)
    calls = [0]

    def wrapper(*a, **kw):
        calls[0] += 1
        if before and calls[0] == n:
            _kill_self()
        result = original(*a, **kw)
        if not before and calls[0] == n:
            _kill_self()
        return result

    setattr(obj, name, wrapper)


def _kill_in_snapshot_write(n):
    """Kill after the ``n``-th snapshot's bytes are written, before they replace ``last.pt``."""
    original, calls = checkpoint_mod.os.replace, [0]

    def replace(src, dst):
        if str(dst).endswith("last.pt"):
            calls[0] += 1
            if calls[0] == n:
                _kill_self()
        return original(src, dst)

    checkpoint_mod.os.replace = replace


KILLS = {
    # the task's forward runs on the training thread (batches are built ahead on another one)
    "mid-step 8": lambda: _on_call(MODES.get("supervised"), "forward", 8),
    "inside the 2nd validation": lambda: _on_call(pipeline, "_mean_dice", 2),
    "right after the 3rd snapshot": lambda: _on_call(resume.SnapshotPolicy, "save", 3, before=False),
    "while writing the 4th snapshot": lambda: _kill_in_snapshot_write(4),
    "before the final checkpoint": lambda: _on_call(pipeline, "save_checkpoint", 1),
}


def _killed_run(argv, install) -> int:
    """Fork; the child installs a kill hook and runs ``argv``; returns the signal that ended it (0: none)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            install()
            main(argv)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _metrics(path):
    # the wall-clock column differs between any two runs; every other value must be identical
    rows = list(csv.DictReader(open(path, newline="")))
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _assert_same_run(a, b):
    wa, wb = _weights(a / "checkpoint.pt"), _weights(b / "checkpoint.pt")
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[0]}"
    assert _metrics(a / "metrics.csv") == _metrics(b / "metrics.csv")


@pytest.fixture(scope="module")
def finetune_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main([*FINETUNE, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("where", list(KILLS))
def test_finetune_killed_then_resumed_is_bitwise_equal(where, finetune_reference, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*FINETUNE, "--out", str(out)]
    assert _killed_run(argv, KILLS[where]) == signal.SIGKILL
    assert not (out / "checkpoint.pt").exists()
    assert main(argv) == 0
    _assert_same_run(out, finetune_reference)
    assert not (out / "last.pt").exists()


SEMI_KILLS = {
    # the step counter, the unlabelled stream, the strong views' and CutMix draws and BCP's teacher all resume
    "mid-step 8": lambda mode: _on_call(MODES.get(mode), "forward", 8),
    "right after the 3rd snapshot": lambda mode: _on_call(resume.SnapshotPolicy, "save", 3, before=False),
}


@pytest.mark.parametrize("mode", ["unimatch", "bcp"])
def test_semi_supervised_killed_then_resumed_is_bitwise_equal(mode, tmp_path):
    argv = [*FINETUNE[:-1], mode]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    for i, (where, install) in enumerate(SEMI_KILLS.items()):
        out = tmp_path / f"run{i}"
        assert _killed_run([*argv, "--out", str(out)], lambda f=install: f(mode)) == signal.SIGKILL, where
        assert main([*argv, "--out", str(out)]) == 0
        _assert_same_run(out, ref)


def test_pretrain_killed_twice_is_bitwise_equal(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main([*PRETRAIN, "--out", str(ref)]) == 0
    argv = [*PRETRAIN, "--out", str(out)]
    assert _killed_run(argv, lambda: _on_call(resume.SnapshotPolicy, "save", 2, before=False)) == signal.SIGKILL
    assert _killed_run(argv, lambda: _on_call(SimCLR, "forward", 4)) == signal.SIGKILL
    assert main(argv) == 0
    _assert_same_run(out, ref)


def test_damaged_snapshot_is_one_line_and_a_fresh_start(finetune_reference, tmp_path, caplog):
    out = tmp_path / "run"
    argv = [*FINETUNE, "--out", str(out)]
    assert _killed_run(argv, KILLS["right after the 3rd snapshot"]) == signal.SIGKILL
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    caplog.clear()
    assert main(argv) == 0
    said = [r.getMessage() for r in caplog.records if "last.pt" in r.getMessage() and r.levelname == "WARNING"]
    assert len(said) == 1 and "starting from step 0" in said[0] and "\n" not in said[0]
    assert (out / "last.pt.damaged").exists()
    _assert_same_run(out, finetune_reference)


class Noisy(nn.Module):
    """A loss that uses torch's global RNG (like augmentation) and a batch generator."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0, -2.0]))

    def forward(self, batch):
        return {"loss": ((self.w - batch - 0.1 * torch.randn(2)) ** 2).sum(), "aux": self.w.sum()}


def test_fit_resume_restores_generators_and_partial_log_rows(tmp_path):
    # snapshots every 3 steps, a log row every 5: the partial means must travel in last.pt
    cfg = LoopConfig(steps=14, lr=0.05, weight_decay=0.0, log_every=5, save_every=3, accelerator="cpu")

    def run(out, stop_at=None):
        torch.manual_seed(0)
        task, rng = Noisy(), np.random.default_rng(1)

        def batch(step):
            if step == stop_at:
                raise KeyboardInterrupt
            return torch.from_numpy(rng.normal(size=2)).float()

        try:
            res = fit(task, batch, cfg, out_dir=out, generators={"batches": rng})
        except KeyboardInterrupt:
            return None, None
        return task.w.detach().clone(), res.history

    w_ref, h_ref = run(tmp_path / "ref")
    assert run(tmp_path / "run", stop_at=8)[0] is None
    snap = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert snap["n_running"] == snap["step"] % 5 > 0  # taken inside a log row's span
    w, h = run(tmp_path / "run")
    assert torch.equal(w, w_ref)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in h_ref]


def test_snapshot_policy_by_time_and_overhead():
    p = resume.SnapshotPolicy(every_steps=0, every_seconds=0.0001)
    p._last_time -= 1
    assert p.due(1, 10) and not p.due(10, 10)
    p._last_cost = 10.0  # a 10 s write: not again by time before 200 s
    assert not p.due(2, 10)
    p.every_steps = 2
    assert p.due(2, 10) and not p.due(3, 10)  # the step cadence stands
    q = resume.SnapshotPolicy(every_steps=4, every_seconds=0)
    assert q.due(4, 10) and not q.due(5, 10) and not q.due(8, 8)
