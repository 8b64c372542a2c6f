"""Plain progress lines where no bar is shown; the optional TensorBoard logger."""

import csv
import io

import pytest
import torch

from sslseg.engine.loop import LoopConfig, fit
from sslseg.engine.progress import Progress, check_logger, format_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_line_every_n_seconds_with_step_mean_loss_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress("pretrain simclr", 100, every_seconds=30, stream=out, clock=clock)
    for step in range(1, 101):
        clock.t = float(step)  # one step a second
        p.update(step, float(step))  # loss = step
    lines = out.getvalue().splitlines()
    assert [int(line.split("step ")[1].split("/")[0]) for line in lines] == [30, 60, 90, 100]  # and the last
    # mean loss since the previous line: steps 1..30 -> 15.5; 1 step/s with 70 to go -> 1m10s
    assert lines[0] == "pretrain simclr: step 30/100 (30%) loss 15.5000 1.00 steps/s ETA 1m10s"
    assert "loss 45.5000" in lines[1] and lines[-1].endswith("ETA 0s")


def test_resumed_run_counts_its_rate_from_where_it_started():
    clock, out = Clock(), io.StringIO()
    p = Progress("finetune", 100, start=50, every_seconds=10, stream=out, clock=clock)
    for step in range(51, 61):
        clock.t = 2.0 * (step - 50)  # 0.5 step/s since the restart
        p.update(step, 1.0)
    assert out.getvalue().strip().endswith("0.50 steps/s ETA 1m20s")


def test_nothing_printed_where_a_bar_is_shown():
    out = io.StringIO()
    p = Progress("x", 10, show=False, every_seconds=0, stream=out)
    for step in range(1, 11):
        p.update(step, 1.0)
    assert out.getvalue() == ""


@pytest.mark.parametrize("s, text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_format_duration(s, text):
    assert format_duration(s) == text


class Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))

    def forward(self, batch):
        return {"loss": ((self.w - batch) ** 2).sum()}


def test_loop_prints_progress_when_output_is_not_a_terminal(tmp_path, capsys):
    # under pytest neither stream is a terminal: tqdm stays silent, the loop prints lines
    cfg = LoopConfig(steps=12, lr=0.1, weight_decay=0.0, log_every=4, accelerator="cpu", progress_seconds=0)
    fit(Quadratic(), lambda s: torch.zeros(2), cfg, out_dir=tmp_path, desc="quad")
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("quad: step")]
    # a line at each logging step (the loss is read from the device no more often)
    assert [line.split("/")[0] for line in lines] == ["quad: step 4", "quad: step 8", "quad: step 12"]
    assert lines[-1].startswith("quad: step 12/12 (100%) loss ")


def test_unknown_logger_is_refused():
    with pytest.raises(ValueError, match="unknown logger 'wandb'; choose one of csv, tensorboard"):
        check_logger("wandb")


def test_tensorboard_logs_what_metrics_csv_holds(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = LoopConfig(steps=20, lr=0.1, weight_decay=0.0, log_every=5, accelerator="cpu", logger="tensorboard",
                     val_every=10)
    fit(Quadratic(), lambda s: torch.zeros(2), cfg, out_dir=tmp_path, validate=lambda t: {"score": float(t.w[0])})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("loss")}
    assert loss == pytest.approx({int(r["step"]): float(r["loss"]) for r in rows if r["loss"]})
    assert sorted(e.step for e in acc.Scalars("val_score")) == [10, 20]
