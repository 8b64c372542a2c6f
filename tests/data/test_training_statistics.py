"""The intensity normaliser is fitted on training cases only: validation and test frames never move it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslseg.data.synthetic import synthetic_echo
from sslseg.engine.checkpoint import load_checkpoint
from sslseg.experiments.config import resolve_run_config
from sslseg.experiments.pipeline import run_finetune, run_pretrain

SPLITS = ["train"] * 4 + ["val", "test"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cases(change: str | None = None):
    cases = synthetic_echo(num_cases=6, num_frames=4, size=32)
    for c, split in zip(cases, SPLITS, strict=True):
        c.split = split
        if split == change:  # another scanner: darker and inverted
            c.frames = (255 - np.asarray(c.frames) // 3).astype(np.uint8)
    return cases


CFG = {"data.spec": "synthetic-echo", "data.image_size": 32, "model.options": {"base_channels": 4, "depth": 2},
       "pretrain.method": "simclr", "pretrain.steps": 1, "pretrain.batch_size": 4, "pretrain.warmup_steps": 0,
       "finetune.steps": 1, "finetune.batch_size": 2, "finetune.labels": "2", "finetune.warmup_steps": 0,
       "finetune.val_every": 0}


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_normaliser_ignores_validation_and_test_frames(stage, tmp_path):
    cfg = resolve_run_config(overrides=CFG, stage=stage)
    run = run_pretrain if stage == "pretrain" else run_finetune

    def fitted(name: str, change: str | None) -> dict:
        ckpt = run(cfg, tmp_path / name, cases=_cases(change))
        return load_checkpoint(ckpt)["preprocess"]["normalizer"]

    reference = fitted("ref", None)
    assert fitted("test_changed", "test") == reference
    assert fitted("val_changed", "val") == reference
    # and it is fitted on the training frames: changing those changes it (the check above is not vacuous)
    assert fitted("train_changed", "train")["mean"] != pytest.approx(reference["mean"], abs=1e-3)
