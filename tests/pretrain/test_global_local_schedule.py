"""global_local's local stage: its own warm-up and cosine, starting where the stage switches."""

import math

import numpy as np
import pytest

from sslseg.engine.loop import LoopConfig, LoopResult, lr_lambda
from sslseg.models.build import build_model
from sslseg.pretrain.build import build_method


@pytest.mark.parametrize("steps, fraction", [(100, 0.5), (37, 0.3), (10, 0.75)])
def test_restart_is_the_first_local_step(steps, fraction):
    method = build_method("global_local", build_model("unet", base_channels=4, depth=3), global_fraction=fraction)
    stages = []
    for step in range(steps):
        stages.append(method.stage)
        method.after_step(step, steps)
    assert method.schedule_restarts(steps) == [stages.index("local")]


def test_each_stage_gets_its_own_warmup_and_cosine():
    cfg = LoopConfig(steps=100, lr=0.01, weight_decay=0.0, warmup_steps=10, restarts=(60,))
    lr = [lr_lambda(s, cfg) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)  # global stage: warm-up over 10 steps
    assert lr[59] < 0.01  # decayed to ~0 at the end of the global stage
    assert lr[60] == pytest.approx(0.1) and lr[69] == pytest.approx(1.0)  # local stage: warm-up again
    t = (80 - 70) / 30  # then its own cosine over the 30 remaining steps
    assert lr[80] == pytest.approx(0.5 * (1 + math.cos(math.pi * t)))
    # without restarts: the one schedule as before
    assert [lr_lambda(s, LoopConfig(steps=100, lr=0.01, weight_decay=0.0, warmup_steps=10)) for s in range(100)] == \
        [lr_lambda(s, LoopConfig(steps=100, lr=0.01, weight_decay=0.0, warmup_steps=10, restarts=())) for s in range(100)]


def test_pipeline_passes_the_restart_to_the_loop(tmp_path, monkeypatch):
    import sslseg.experiments.pipeline as pipeline
    from sslseg.data.sample import Case
    from sslseg.data.splits import apply_splits, assign_splits
    from sslseg.experiments.config import RunConfig

    rng = np.random.default_rng(0)
    cases = [Case(f"c{i}", rng.integers(0, 255, (6, 32, 32), dtype=np.uint8), {0: np.eye(32, dtype=np.int64)})
             for i in range(6)]
    apply_splits(cases, assign_splits(cases, 0.2, 0.2, seed=0))
    seen = []
    monkeypatch.setattr(pipeline, "fit", lambda task, next_batch, cfg, **kw: seen.append(cfg) or
                        LoopResult(steps=cfg.steps, seconds=0.0))
    cfg = RunConfig()
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 3}
    cfg.pretrain.method, cfg.pretrain.steps, cfg.pretrain.options = "global_local", 40, {"global_fraction": 0.25}
    pipeline.run_pretrain(cfg, tmp_path, cases)
    assert seen[0].restarts == (10,)
    cfg.pretrain.method, cfg.pretrain.options = "simclr", {}
    pipeline.run_pretrain(cfg, tmp_path / "s", cases)
    assert seen[1].restarts == ()
