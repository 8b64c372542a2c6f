"""A planned run's folder name: the one function that makes it, and the names existing sweep folders hold."""

from pathlib import Path

import pytest

from sslseg.experiments.sweep_config import sweep_config, validate
from sslseg.experiments.sweep_plan import plan, run_dir, run_key


def test_run_folders_keep_the_names_existing_sweeps_hold():
    sw = validate(sweep_config({"data": "synthetic-mri", "methods": ["none", "simclr"], "modes": ["supervised"],
                                "budgets": [1, "50%"], "seeds": [3], "pretrain_seed": 0}))
    runs = plan(sw, 4)
    assert [run_key(r) for r in runs] == ["none_unet_1_seed3", "none_unet_50pct_seed3", "simclr_unet_1_seed3",
                                          "simclr_unet_50pct_seed3", "supervised_unet_100pct_seed3"]
    simclr = runs[2]
    # one pretraining run per (data set, method, arch, pretrain_seed), whatever the fine-tuning seed
    assert run_key(simclr, "pretrain") == "simclr_unet_seed0"
    assert run_key({**simclr, "pretrain_seed": None}, "pretrain") == "simclr_unet_seed3"
    # a semi-supervised run starts from its init's pretraining: the folder names the init, not the method
    assert run_key({**simclr, "method": "simclr+bcp", "mode": "bcp"}, "pretrain") == "simclr_unet_seed0"
    # with several data sets each name is prefixed with its data set's tag
    assert run_key({**simclr, "data": "synthetic-mri"}) == "synthetic-mri_simclr_unet_1_seed3"
    assert run_key({**simclr, "data": "synthetic-mri"}, "pretrain") == "synthetic-mri_simclr_unet_seed0"
    assert run_dir(Path("out"), simclr) == Path("out/runs/simclr_unet_1_seed3")
    assert run_dir(Path("out"), simclr, "pretrain") == Path("out/pretrain/simclr_unet_seed0")
    with pytest.raises(ValueError, match="stage 'evaluate'"):
        run_key(simclr, "evaluate")
