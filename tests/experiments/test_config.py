"""Configuration resolved in one place: base + overrides + --set, checked once, for the command line and the sweep."""

import pytest

from sslseg.experiments import sweep_config
from sslseg.experiments.config import RunConfig, resolve_run_config


def test_overrides_then_sets_then_checks():
    base = RunConfig()
    cfg = resolve_run_config(base, {"seed": 3, "finetune.lr": "1e-4", "data.options.num_cases": 6},
                             ["seed=4"], stage="finetune")
    assert (cfg.seed, cfg.finetune.lr, cfg.data.options) == (4, 1e-4, {"num_cases": 6})
    assert base == RunConfig()  # the base is left as it was


@pytest.mark.parametrize("overrides, stage, where, message", [
    ({"model.arch": "vnet"}, None, "", "unknown architecture 'vnet'; choose one of deeplabv3, unet"),
    ({"data.spec": "nosuch:/x"}, None, "", "unknown data set 'nosuch:/x'; choose one of"),
    ({"pretrain.method": "mae"}, "pretrain", "sweep", "sweep: unknown pretraining method 'mae'; choose one of"),
    ({"pretrain.options": {"nosuch": 1}}, "pretrain", "", "pretrain.options.nosuch: method 'simclr' takes no option"),
    ({"finetune.nosuch": 1}, None, "sweep", "sweep: finetune.nosuch: unknown key 'nosuch'; valid keys here:"),
    ({"finetune.steps": 0}, None, "sweep", "sweep.finetune.steps = 0 is not allowed"),
    ({"finetune.init": "missing.pt"}, "finetune", "", "checkpoint not found: missing.pt"),
    ({"evaluate.convention": "slab"}, None, "", "evaluate.convention must be one of auto, volume, frame"),
    ({"finetune.loss": "focal"}, None, "", "finetune.loss = 'focal' is not allowed: expected one of dice, dice_ce, ce"),
])
def test_one_line_errors(overrides, stage, where, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        resolve_run_config(None, overrides, stage=stage, where=where)


def test_a_sweep_run_is_the_config_its_keys_name():
    sw = sweep_config.SweepConfig(data=sweep_config.SweepData(image_size=64, split_seed=2), model=sweep_config.SweepModel({"depth": 3}),
                           finetune={"steps": 9})
    rc = sweep_config.run_config(sw, "unet", 1, ("synthetic-mri", {"num_cases": 4}), {"finetune.labels": "2"})
    expected = resolve_run_config(None, {"seed": 1, "data.spec": "synthetic-mri", "data.options": {"num_cases": 4},
                                         "data.image_size": 64, "data.split_seed": 2, "model.options": {"depth": 3},
                                         "finetune.steps": 9, "finetune.labels": "2"})
    assert rc == expected
    # a sweep's defaults are a run's
    defaults = sweep_config.run_config(sweep_config.SweepConfig(), "unet", 0)
    assert defaults == resolve_run_config(None, {"data.spec": defaults.data.spec})
