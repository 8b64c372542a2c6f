"""Frames resident on the device (``data.resident``): the same run, bit for bit, as frames on the host.

On a CPU ``auto`` keeps the frames on the host; ``always`` puts them on the training device (here the CPU),
so the device path is exercised without a GPU.
"""

import numpy as np
import pytest
import torch

from sslseg.data import batches
from sslseg.data.splits import apply_splits, assign_splits
from sslseg.experiments.config import RunConfig
from sslseg.experiments.pipeline import run_finetune, run_pretrain


def _weights(path):
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if v.is_floating_point()}


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = batches.ResidentFramePool.load

    def load(self, flat):
        calls.append(len(flat))
        return original(self, flat)

    monkeypatch.setattr(batches.ResidentFramePool, "load", load)
    return calls


def _cases(tiny_cases):
    apply_splits(tiny_cases, assign_splits(tiny_cases, 0.2, 0.2, 0))
    return tiny_cases


@pytest.mark.parametrize("stage", ["pretrain", "bcp"])
def test_resident_frames_train_the_same_weights(tiny_cases, tmp_path, counted, stage):
    cases = _cases(tiny_cases)
    got = {}
    for resident in ("never", "always", "auto"):
        cfg = RunConfig()
        cfg.data.image_size, cfg.data.resident = 32, resident
        cfg.model.options = {"base_channels": 4, "depth": 2}
        before = len(counted)
        if stage == "pretrain":
            cfg.pretrain.steps, cfg.pretrain.batch_size, cfg.pretrain.warmup_steps = 3, 4, 0
            path = run_pretrain(cfg, tmp_path / resident, cases)
        else:
            cfg.finetune.labels, cfg.finetune.steps, cfg.finetune.batch_size = "2", 4, 4
            cfg.finetune.val_every, cfg.finetune.mode = 0, "bcp"
            path = run_finetune(cfg, tmp_path / resident, cases)
        # the device path cuts every step's (unlabelled) batch; auto on a CPU never does
        assert (len(counted) - before > 0) == (resident == "always"), (resident, len(counted) - before)
        got[resident] = _weights(path)
    for resident in ("always", "auto"):
        diffs = [float((got[resident][k] - got["never"][k]).abs().max()) for k in got["never"]]
        assert max(diffs) == 0.0, (resident, max(diffs))
    assert np.isfinite(sum(float(v.sum()) for v in got["always"].values()))


def test_resident_setting_is_checked():
    from sslseg.experiments.config import check_choices

    cfg = RunConfig()
    cfg.data.resident = "on"
    with pytest.raises(ValueError, match="data.resident = 'on' is not allowed: expected one of auto, always, never"):
        check_choices(cfg)
