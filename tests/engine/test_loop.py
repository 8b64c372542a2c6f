import csv

import pytest
import torch
from torch import nn

from sslseg.engine.loop import LoopConfig, fit, lr_lambda


class Quadratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0, -2.0]))

    def forward(self, batch):
        return {"loss": ((self.w - batch) ** 2).sum()}


def test_fit_reduces_loss_and_writes_metrics(tmp_path):
    task = Quadratic()
    cfg = LoopConfig(steps=60, lr=0.1, weight_decay=0.0, log_every=10, accelerator="cpu")
    res = fit(task, lambda s: torch.zeros(2), cfg, out_dir=tmp_path)
    assert res.history[-1]["loss"] < 0.05 * res.history[0]["loss"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(10, 61, 10))
    assert (tmp_path / "log.txt").read_text().count("loss") >= 6
    assert not (tmp_path / "last.pt").exists()


def test_resume_continues_from_last_snapshot(tmp_path):
    cfg = LoopConfig(steps=20, lr=0.05, weight_decay=0.0, log_every=5, save_every=10, accelerator="cpu")
    calls = []

    def batch(step):
        calls.append(step)
        if step == 15:
            raise KeyboardInterrupt  # killed mid-run, after the step-10 snapshot
        return torch.zeros(2)

    try:
        fit(Quadratic(), batch, cfg, out_dir=tmp_path)
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "last.pt").exists()
    calls.clear()
    fresh = Quadratic()
    fit(fresh, batch_ok := (lambda s: (calls.append(s), torch.zeros(2))[1]), cfg, out_dir=tmp_path)
    assert calls[0] == 10 and calls[-1] == 19  # restarted at the snapshot, not at 0
    # same final weights as an uninterrupted run
    ref = Quadratic()
    fit(ref, lambda s: torch.zeros(2), cfg, out_dir=tmp_path / "ref")
    assert torch.allclose(fresh.w, ref.w, atol=1e-6)
    del batch_ok


def test_warmup_then_cosine():
    cfg = LoopConfig(steps=100, lr=0.01, weight_decay=0.0, warmup_steps=10)
    assert lr_lambda(0, cfg) == 0.1 and lr_lambda(9, cfg) == 1.0
    assert abs(lr_lambda(55, cfg) - 0.5) < 1e-9 and lr_lambda(100, cfg) == 0.0


def test_best_weights_restored():
    task = Quadratic()
    cfg = LoopConfig(steps=30, lr=0.1, weight_decay=0.0, val_every=10, accelerator="cpu")
    scores = iter([5.0, 1.0, 0.0])  # best at step 10

    def validate(t):
        return {"score": next(scores)}

    snapshots = {}
    res = fit(task, lambda s: torch.zeros(2), cfg, validate=validate, monitor="score",
              after_step=lambda s, n: snapshots.__setitem__(s + 1, task.w.detach().clone()))
    assert res.best["step"] == 10
    assert torch.equal(task.w.detach(), snapshots[10])


def test_a_warmup_as_long_as_the_run_is_said(caplog):
    """Issue 28 item 6: 20 steps with 50 warm-up steps never reach the set learning rate; say so."""
    fit(Quadratic(), lambda s: torch.zeros(2), LoopConfig(steps=20, lr=0.01, weight_decay=0.0, warmup_steps=50, accelerator="cpu"))
    assert any("warm-up of 50 steps is as long as the run (20 steps)" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    caplog.clear()
    fit(Quadratic(), lambda s: torch.zeros(2), LoopConfig(steps=20, lr=0.01, weight_decay=0.0, warmup_steps=5, accelerator="cpu"))
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]


def test_the_loop_holds_no_opinion_of_a_stages_optimiser():
    from sslseg.experiments.config import RunConfig
    from sslseg.experiments.pipeline import _loop_cfg

    with pytest.raises(TypeError, match="weight_decay"):
        LoopConfig(steps=10, lr=0.1)  # the stage configs own steps, lr and weight decay
    cfg = RunConfig()
    for stage in (cfg.pretrain, cfg.finetune):
        loop = _loop_cfg(cfg, stage, 7)
        assert (loop.steps, loop.lr, loop.weight_decay, loop.warmup_steps) == \
            (7, stage.lr, stage.weight_decay, stage.warmup_steps)
    assert cfg.pretrain.weight_decay != cfg.finetune.weight_decay  # two stages, two settings, one place each
