"""A run that diverges ends in one line naming the step and what to change (exit 2), not a traceback."""

from __future__ import annotations

import pytest
from cli_helpers import refused

from sslseg.models.build import build_model
from sslseg.pretrain.global_local import GlobalContrastive, LocalContrastive
from sslseg.pretrain.simclr import SimCLR

TINY = ["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--image-size", "32", "--batch-size", "4",
        "--steps", "3", "--set", "pretrain.warmup_steps=0", "--set", "model.options.base_channels=4",
        "--set", "model.options.depth=2", "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4"]


def test_a_diverging_learning_rate_is_one_line(tmp_path, capsys):
    """Old code: a FloatingPointError traceback."""
    line = refused([*TINY, "--lr", "1e9", "--out", str(tmp_path / "o")], capsys,
                   "pretrain simclr: the loss was not finite at step ", "lower the learning rate (now 1e+09)")
    assert "temperature" not in line


def test_a_tiny_temperature_is_named_not_the_learning_rate(tmp_path, capsys):
    """Old code: a FloatingPointError traceback saying "lower the learning rate"."""
    line = refused([*TINY, "--set", "pretrain.options.temperature=1.0e-40", "--out", str(tmp_path / "o")], capsys,
                   "the loss was not finite at step 1 ", "the temperature (now 1e-40)", "raise it")
    assert "learning rate" not in line


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan")])
def test_methods_refuse_a_temperature_that_is_not_positive(temperature):
    """The Python interface too (the command line checks options before building a method)."""
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    for make in (SimCLR, GlobalContrastive, LocalContrastive):
        with pytest.raises(ValueError, match=r"temperature = .* is not allowed: expected a number > 0"):
            make(model, temperature=temperature)
