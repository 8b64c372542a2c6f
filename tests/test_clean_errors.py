"""Issue 25, "clean errors still missing": model and method options out of range, duplicate YAML keys, a huge seed.

Each is one line on stderr, exit code 2, naming the option and what is allowed; the run folder is not created.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import refused

SYN = ["--data", "synthetic-echo", "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4",
       "--set", "data.options.size=32", "--image-size", "32", "--steps", "2", "--batch-size", "2"]
FT = ["finetune", *SYN, "--labels", "1"]
PT = ["pretrain", *SYN, "--method", "simclr", "--set", "model.options.base_channels=4",
      "--set", "model.options.depth=2"]


@pytest.mark.parametrize("value", ["0", "-4", "abc", "2.5", "100000"])
def test_unet_base_channels_out_of_range(tmp_path, capsys, value):
    """Old code: 0 and -4 were a RuntimeError traceback, abc 'not all arguments converted during string formatting'."""
    refused([*FT, "--set", f"model.options.base_channels={value}", "--out", str(tmp_path / "o")], capsys,
            "model.options.base_channels", "from 1 to 512")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["12", "0", "abc"])
def test_unet_depth_out_of_range(tmp_path, capsys, value):
    """Old code: depth 12 built a UNet of 65536 channels (memory exhausted; a traceback or a killed process)."""
    refused([*FT, "--set", f"model.options.depth={value}", "--out", str(tmp_path / "o")], capsys,
            "model.options.depth", "from 1 to 8")
    assert not (tmp_path / "o").exists()


def test_deeplabv3_options_out_of_range():
    from sslseg.models.build import build_model, check_model_options

    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_model("deeplabv3", output_stride=4)
    with pytest.raises(ValueError, match="atrous_rates = 'abc' .* three integers"):
        build_model("deeplabv3", atrous_rates="abc")
    check_model_options("unet", {"base_channels": 16, "depth": 4, "norm": "batch"})  # the defaults pass


@pytest.mark.parametrize("value, allowed", [("abc", "expected a number > 0"), ("-0.1", "expected a number > 0"),
                                            ("0", "expected a number > 0"), ("true", "expected a number")])
def test_method_temperature_is_checked(tmp_path, capsys, value, allowed):
    """Old code: abc was a TypeError traceback at the first step; -0.1 trained (exit 0)."""
    refused([*PT, "--set", f"pretrain.options.temperature={value}", "--out", str(tmp_path / "o")], capsys,
            "pretrain.options.temperature", allowed)
    assert not (tmp_path / "o").exists()


def test_method_options_types_and_ranges():
    from sslseg.pretrain.build import method_options

    with pytest.raises(ValueError, match=r"pretrain.options.byol.momentum = 1.5 .* >= 0 and <= 1"):
        method_options("byol", {"byol": {"momentum": 1.5}})
    with pytest.raises(ValueError, match=r"n_parts = 2.5 .* expected an integer >= 1"):
        method_options("global_contrastive", {"n_parts": 2.5})
    with pytest.raises(ValueError, match=r"strategy = 3 .* expected a name"):
        method_options("global_contrastive", {"strategy": 3})
    with pytest.raises(ValueError, match=r"gather_distributed = 'yes' .* true or false"):
        method_options("simclr", {"gather_distributed": "yes"})
    assert method_options("simclr", {"temperature": 1, "proj_hidden": None}) == {"temperature": 1, "proj_hidden": None}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_duplicate_yaml_keys_are_refused_with_their_lines(tmp_path, capsys):
    """Old code: the second ``finetune:`` block replaced the first without a word (its lr was lost)."""
    cfg = write(tmp_path / "c.yaml", "finetune:\n  lr: 0.01\nseed: 1\nfinetune:\n  steps: 2\n")
    i = FT.index("--steps")
    refused([*FT[:i], *FT[i + 2:], "--config", str(cfg), "--out", str(tmp_path / "o")], capsys,
            "c.yaml", "'finetune'", "line 1 and line 4")
    assert not (tmp_path / "o").exists()


def test_duplicate_yaml_keys_inside_a_section(tmp_path):
    from sslseg.experiments.config import load_yaml

    with pytest.raises(ValueError, match="'lr' appears twice .* line 2 and line 3"):
        load_yaml(write(tmp_path / "s.yaml", "finetune:\n  lr: 0.01\n  lr: 0.1\n"))
    assert load_yaml(write(tmp_path / "ok.yaml", "a: {lr: 1}\nb: {lr: 2}\n")) == {"a": {"lr": 1}, "b": {"lr": 2}}


@pytest.mark.parametrize("seed", [str(2**32), str(2**70)])
def test_huge_seed_flag(tmp_path, capsys, seed):
    """Old code: 2**70 ended 'Overflow when unpacking long long'; 2**32 trained, NumPy seeded with seed % 2**32."""
    refused([*FT, "--seed", seed, "--out", str(tmp_path / "o")], capsys, f"--seed = {seed}", "4294967295")
    assert not (tmp_path / "o").exists()


def test_huge_seed_in_a_config(tmp_path, capsys):
    refused([*FT, "--set", f"seed={2**40}", "--out", str(tmp_path / "o")], capsys, f"seed = {2**40}", "4294967295")


def test_largest_seed_is_taken():
    from sslseg.engine.seed import MAX_SEED, seed_everything

    seed_everything(MAX_SEED)
    with pytest.raises(ValueError, match="seed = 4294967296"):
        seed_everything(MAX_SEED + 1)
