"""The loop reads the task's outputs on the host only at logging steps; a non-finite loss still stops the run.

Reading a device tensor's value (``float(loss)``, ``bool(torch.isfinite(loss))``,
``.item()``, ``.tolist()``, ``.cpu()``) makes the host wait for the device. The
task here marks its outputs as :class:`OnDevice`, a tensor subclass that counts
every such read of them or of anything computed from them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslseg.engine.loop import LoopConfig, fit

READS = {"item", "__float__", "__bool__", "__int__", "__index__", "tolist", "cpu", "numpy", "__format__"}


class OnDevice(torch.Tensor):
    """Stands for a tensor on an accelerator: each read of its value on the host is counted."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in [*args[1:], *kwargs.values()])
        if name in READS or to_cpu:
            cls.reads.append(name)
        return super().__torch_function__(func, types, args, kwargs)


class Task(nn.Module):
    def __init__(self, poison_at: int | None = None, temperature: float | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 1)
        self.poison_at = poison_at
        if temperature is not None:
            self.temperature = temperature

    def forward(self, batch):
        x, step = batch
        loss = (self.lin(x) ** 2).mean()
        if step == self.poison_at:
            loss = loss * float("nan")
        return {"loss": loss.as_subclass(OnDevice), "aux": self.lin.weight.sum().as_subclass(OnDevice)}


def _batches(counts: dict[int, int]):
    def next_batch(step: int):
        # the reads since the previous call belong to the previous step (its logging included)
        if step > 0:
            counts[step - 1] = len(OnDevice.reads)
        OnDevice.reads.clear()
        return torch.randn(4, 3, generator=torch.Generator().manual_seed(step)), step
    return next_batch


def test_no_device_reads_between_logging_steps():
    counts: dict[int, int] = {}
    OnDevice.reads.clear()
    res = fit(Task(), _batches(counts), LoopConfig(steps=12, weight_decay=0.0, lr=0.01, log_every=4, accelerator="cpu"))
    counts[11] = len(OnDevice.reads)
    print("device reads per step:", [counts[s] for s in range(12)])
    logging_steps = {3, 7, 11}  # steps 4, 8 and 12 (1-based) write a row
    assert all(counts[s] == 0 for s in range(12) if s not in logging_steps), counts
    assert all(counts[s] == 1 for s in logging_steps), counts  # one read: the sums and the non-finite check together
    assert [r["step"] for r in res.history] == [4, 8, 12]


def test_logged_means_are_the_per_step_means():
    """The running sums kept on the device give the same rows as the per-step values read one by one."""
    seen: list[dict[str, float]] = []

    class Recording(Task):
        def forward(self, batch):
            out = super().forward(batch)
            seen.append({k: float(v.detach()) for k, v in out.items()})
            return out

    res = fit(Recording(), _batches({}), LoopConfig(steps=10, weight_decay=0.0, lr=0.01, log_every=4, accelerator="cpu"))
    spans = [(0, 4), (4, 8), (8, 10)]  # the last row: the 2 steps since the previous one
    for row, (a, b) in zip(res.history, spans, strict=True):
        for key in ("loss", "aux"):
            assert row[key] == pytest.approx(sum(s[key] for s in seen[a:b]) / (b - a), rel=1e-12)


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    # nan at loop step 5 (the 6th step); read at the next logging step, 8
    with pytest.raises(ValueError, match=r"^fit: the loss was not finite at step 6 .*lower the learning rate "
                                         r"\(now 0\.01\)") as err:
        fit(Task(poison_at=5), _batches({}), LoopConfig(steps=20, weight_decay=0.0, lr=0.01, log_every=8, accelerator="cpu"),
            desc="fit")
    assert "\n" not in str(err.value)


def test_non_finite_loss_is_never_saved_for_resume(tmp_path):
    # a snapshot every step: the check runs before each one, so the nan of step 3 is caught at step 3
    with pytest.raises(ValueError, match="at step 3 "):
        fit(Task(poison_at=2), _batches({}), LoopConfig(steps=20, weight_decay=0.0, lr=0.01, log_every=10, save_every=1,
                                                         accelerator="cpu"), out_dir=tmp_path)
    snap = torch.load(tmp_path / "last.pt", weights_only=True)
    assert snap["step"] == 2 and all(torch.isfinite(v).all() for v in snap["task"].values())


def test_a_tiny_temperature_is_named_as_the_cause():
    with pytest.raises(ValueError, match=r"temperature \(now 1e-40\).*raise it"):
        fit(Task(poison_at=1, temperature=1e-40), _batches({}),
            LoopConfig(steps=4, weight_decay=0.0, lr=0.01, log_every=2, accelerator="cpu"))
