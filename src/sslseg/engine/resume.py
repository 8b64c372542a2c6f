"""Exact resume: what ``last.pt`` holds, when it is written, and how a run is put back.

A run killed at any moment and started again must end bitwise equal to one
that was never killed (on the CPU).  So a snapshot holds, besides the weights,
optimiser and schedule, every random state the next step draws from: the batch
generator(s) (NumPy ``Generator`` or ``torch.Generator``), torch's CPU and CUDA
generators, Python's ``random`` and NumPy's legacy global one, and the loop's own
counters (the partial means of the next ``metrics.csv`` row, the elapsed time).
On several processes rank 0 writes the snapshot and every rank reads it: each
rank's torch stream is then seeded before every step from (seed, rank, step)
(:class:`sslseg.engine.loop.RankStreams`, whose seed the snapshot keeps as
``rank_seed``), so no rank needs its own random state saved.

Snapshots are taken by steps and by time, whichever comes first; those by time
never so often that writing them takes more than about 1/20 of the run.  A snapshot that
cannot be read or does not fit the run is reported in one line, set aside as
``last.pt.damaged`` and the run starts from the beginning.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .checkpoint import atomic_save

log = logging.getLogger("sslseg")

SNAPSHOT_FORMAT = "sslseg-resume/2"

Generators = Mapping[str, "np.random.Generator | torch.Generator"]


def capture_rng(generators: Generators | None = None) -> dict[str, Any]:
    """Every random state a training step can draw from, in types ``weights_only`` loading accepts.

    Args:
        generators: named batch generators (NumPy ``Generator`` or ``torch.Generator``).

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor, ...], "python": tuple, "numpy": tuple,
        "generators": {name: state}}``.
    """
    legacy = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # (name, uint32 keys, pos, has_gauss, cached_gaussian); the keys as a tensor (no ndarray in weights_only)
        "numpy": (legacy[0], torch.from_numpy(legacy[1].astype(np.int64)), int(legacy[2]), int(legacy[3]),
                  float(legacy[4])),
        "generators": {},
    }
    for name, g in (generators or {}).items():
        if isinstance(g, torch.Generator):
            state["generators"][name] = {"torch": g.get_state()}
        else:
            state["generators"][name] = {"numpy": g.bit_generator.state}
    return state


def restore_rng(state: Mapping[str, Any], generators: Generators | None = None) -> None:
    """Put back what :func:`capture_rng` took.

    Raises:
        KeyError, TypeError, ValueError: the state does not match the generators given.
    """
    missing = [name for name in (generators or {}) if name not in state["generators"]]
    if missing:
        raise KeyError(f"no state for batch generator {missing[0]!r}")
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    for name, g in (generators or {}).items():
        saved = state["generators"][name]
        if isinstance(g, torch.Generator):
            g.set_state(saved["torch"])
        else:
            g.bit_generator.state = saved["numpy"]


@dataclass
class SnapshotPolicy:
    """When to write ``last.pt``: every ``every_steps`` steps or ``every_seconds``, whichever first.

    Args:
        every_steps: steps between snapshots (0: by time only).
        every_seconds: wall-clock seconds between snapshots (0: by steps only).
        max_overhead: the share of the run that snapshots by time may take; a slow
            write (a large model, a slow disk) stretches their interval accordingly.
    """

    every_steps: int = 0
    every_seconds: float = 120.0
    max_overhead: float = 0.05
    _last_time: float = field(default_factory=time.perf_counter, repr=False)
    _last_cost: float = field(default=0.0, repr=False)

    def due(self, step: int, total: int) -> bool:
        """Whether to snapshot after ``step`` (1-based count of finished steps) of ``total``."""
        if step >= total:
            return False  # the final checkpoint supersedes it
        if self.every_steps <= 0 and self.every_seconds <= 0:
            return False
        if self.every_steps > 0 and step % self.every_steps == 0:
            return True  # the cadence asked for (a bounded number per run)
        since = time.perf_counter() - self._last_time
        if self.max_overhead > 0 and since < self._last_cost / self.max_overhead:
            return False
        return self.every_seconds > 0 and since >= self.every_seconds

    def save(self, payload: dict, path: Path) -> None:
        """Write ``payload`` atomically and remember how long it took."""
        t = time.perf_counter()
        atomic_save({"format": SNAPSHOT_FORMAT, **payload}, path)
        now = time.perf_counter()
        self._last_cost, self._last_time = now - t, now


def read_snapshot(path: Path) -> dict | None:
    """``last.pt`` when it exists and is whole; otherwise None (a damaged one is set aside with one log line)."""
    if not path.is_file():
        return None
    try:
        snap = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT:
            raise UserError(f"not a {SNAPSHOT_FORMAT} snapshot")
        for key in ("task", "optimizer", "scheduler", "step", "rng", "history", "running", "elapsed"):
            if key not in snap:
                raise UserError(f"no {key!r} entry")
    except Exception as err:  # noqa: BLE001 - any unreadable snapshot means: start again
        set_aside(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None
    return snap


def set_aside(path: Path, why: str) -> None:
    """Rename a snapshot that cannot be used to ``<name>.damaged`` and say so once."""
    bad = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, bad)
    except OSError:
        pass
    log.warning("%s cannot be used for resume (%s); moved to %s, starting from step 0", path, why, bad.name)


def restore_run(snap: dict, path: Path, task, optimizer, scheduler, generators: Generators | None = None) -> bool:
    """Load a snapshot into the run's objects; all or nothing.

    When any part does not fit (another model, other generators), the run's
    objects are put back as they were, the file is set aside and False returned.
    """
    task_before = {k: v.detach().clone() for k, v in task.state_dict().items()}
    opt_before, sched_before, rng_before = optimizer.state_dict(), scheduler.state_dict(), capture_rng(generators)
    try:
        task.load_state_dict(snap["task"])
        optimizer.load_state_dict(snap["optimizer"])
        scheduler.load_state_dict(snap["scheduler"])
        restore_rng(snap["rng"], generators)
    except Exception as err:  # noqa: BLE001 - a snapshot that does not fit: start again, untouched
        task.load_state_dict(task_before)
        optimizer.load_state_dict(opt_before)
        scheduler.load_state_dict(sched_before)
        restore_rng(rng_before, generators)
        set_aside(path, f"does not fit this run: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return False
    return True
