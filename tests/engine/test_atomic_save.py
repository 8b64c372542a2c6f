"""Checkpoint writes: a full disk is one line naming the file and keeps the good one; no temporary outlives a run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from cli_helpers import refused

from sslseg.engine import checkpoint as ck
from sslseg.engine.loop import LoopConfig, fit
from sslseg.io import files

TINY = ["--data", "synthetic-echo", "--image-size", "32", "--batch-size", "2", "--steps", "3",
        "--set", "model.options.base_channels=4", "--set", "model.options.depth=2",
        "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4", "--set", "data.options.size=32"]


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def _disk_full(monkeypatch):
    """``torch.save`` writes a few bytes, then meets a full disk, as a real write would."""
    def save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_disk_full_names_the_file_and_keeps_the_good_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ck.atomic_save({"w": torch.ones(3)}, path)
    good = path.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as info:
        ck.atomic_save({"w": torch.zeros(3)}, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert "disk full" in info.value.strerror
    assert path.read_bytes() == good  # no partial file replaced the good one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # and no temporary is left


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_disk_full_during_a_run_is_one_line(command, tmp_path, monkeypatch, capsys):
    _disk_full(monkeypatch)
    extra = ["--method", "simclr"] if command == "pretrain" else ["--labels", "1"]
    line = refused([command, *TINY, *extra, "--out", str(tmp_path / "run")], capsys, "disk full")
    assert str(tmp_path / "run") in line and ".pt" in line
    assert not list((tmp_path / "run").glob(".*.tmp"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_disk_full_during_a_sweep_is_one_line(tmp_path, monkeypatch, capsys):
    cfg = {"data": {"spec": "synthetic-echo", "options": {"num_cases": 6, "num_frames": 4, "size": 32}, "image_size": 32},
           "model": {"options": {"base_channels": 4, "depth": 2}}, "methods": ["simclr"], "budgets": [1],
           "seeds": [0], "pretrain": {"steps": 2, "batch_size": 2}, "finetune": {"steps": 2, "batch_size": 2}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    _disk_full(monkeypatch)
    line = refused(["sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "sw")], capsys, "disk full")
    assert str(tmp_path / "sw") in line
    assert not list((tmp_path / "sw").rglob("*.tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked writer")
def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    path = tmp_path / "last.pt"
    pid = os.fork()
    if pid == 0:  # the child dies inside torch.save, as a sweep worker killed by SIGKILL does
        torch.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        ck.atomic_save({"w": 1}, path)
        os._exit(0)
    os.waitpid(pid, 0)
    left = files.temporaries(path)
    assert len(left) == 1 and left[0].stat().st_size == 0  # the zero-byte temporary of the issue
    ck.atomic_save({"w": 2}, path)
    assert files.temporaries(path) == []
    assert torch.load(path, weights_only=True) == {"w": 2}


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    host = files.writer_id().rpartition("-")[0]
    dead = tmp_path / f".checkpoint.pt.{host}-{_dead_pid()}.abcd.tmp"
    alive = tmp_path / f".checkpoint.pt.{host}-{os.getppid()}.abcd.tmp"  # a live process may still be writing
    remote = tmp_path / ".checkpoint.pt.otherhost-1.abcd.tmp"  # another machine's writer, on shared storage
    other = tmp_path / f".last.pt.{host}-{_dead_pid()}.abcd.tmp"  # another file's
    for p in (dead, alive, remote, other):
        p.write_bytes(b"")
    ck.atomic_save({"w": 1}, path)
    assert sorted(p.name for p in files.temporaries(path)) == sorted([alive.name, remote.name])
    assert other.exists()


class _Task(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def forward(self, batch):
        return {"loss": ((self.w - batch) ** 2).sum()}


def test_a_completed_run_leaves_no_snapshot_temporary(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # what a run killed inside a snapshot write left (an older naming too): the resumed run completes
    stale = [out / f".last.pt.{files.writer_id().rpartition('-')[0]}-{_dead_pid()}.x1y2.tmp", out / ".last.pt.k3j4l5m6.tmp"]
    for p in stale:
        p.write_bytes(b"")
    cfg = LoopConfig(steps=6, lr=0.1, weight_decay=0.0, log_every=2, save_every=2, accelerator="cpu")
    fit(_Task(), lambda step: torch.ones(2), cfg, out_dir=out)
    assert not (out / "last.pt").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


def test_disk_full_in_a_write_that_names_no_file_names_the_output_folder(tmp_path, monkeypatch, capsys):
    import sslseg.engine.loop as loop

    def full(*a, **k):  # a flush at close: the error carries no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(loop, "write_table", full)
    line = refused(["pretrain", *TINY, "--method", "simclr", "--out", str(tmp_path / "run")], capsys, "disk full")
    assert f"{tmp_path / 'run'}: disk full" in line
