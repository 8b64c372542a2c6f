"""One config schema: ``data.options.X`` in runs, ``sslseg data`` and sweeps; ``--config`` alone names a run;
``--print-config``; misspelt nested options list the valid names; the hints the commands print lead to
commands that work."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from cli_helpers import refused, run
from PIL import Image

from sslseg.experiments import sweep

TINY_RUN = {"data": {"spec": "synthetic-echo", "image_size": 32,
                     "options": {"num_cases": 6, "num_frames": 4, "size": 32}},
            "model": {"options": {"base_channels": 4, "depth": 2}},
            "finetune": {"steps": 1, "batch_size": 2, "labels": "1", "val_every": 1}}


def _yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_one_spelling_of_a_data_option_for_runs_data_and_sweeps(tmp_path, capsys):
    # sslseg data: the run's spelling; the older short form still reads, with a one-line note
    code, err, out = run(["data", "synthetic-echo", "--set", "data.options.num_cases=6",
                          "--set", "data.options.num_frames=4"], capsys)
    assert code == 0 and err == [] and "cases: 6 " in out
    code, err, old = run(["data", "synthetic-echo", "--set", "options.num_cases=6",
                          "--set", "data.options.num_frames=4"], capsys)
    assert code == 0 and old == out
    assert err == ["sslseg data: note: --set options.num_cases is the older spelling of --set "
                   "data.options.num_cases (as pretrain, finetune and sweep spell it)"]

    # a run and a sweep take the same key
    code, err, out = run(["finetune", "--data", "synthetic-echo", "--set", "data.options.num_cases=6",
                          "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)["data"]["options"] == {"num_cases": 6}
    s = _yaml(tmp_path / "s.yaml", {"data": "synthetic-echo", "methods": ["none"]})
    code, err, out = run(["sweep", s, "--set", "data.options.num_cases=6", "--print-config"], capsys)
    assert code == 0 and err == [] and yaml.safe_load(out)["data"]["options"] == {"num_cases": 6}
    new = out
    code, err, out = run(["sweep", s, "--set", "data_options.num_cases=6", "--print-config"], capsys)
    assert code == 0 and out == new
    assert err == ["sslseg sweep: note: --set data_options.num_cases is the older spelling of --set "
                   "data.options.num_cases"]
    # the older file keys too: read with a note, refused beside their new spelling
    old = _yaml(tmp_path / "old.yaml", {"data": "synthetic-echo", "methods": ["none"], "data_options": {"num_cases": 6}})
    code, err, out = run(["sweep", old, "--print-config"], capsys)
    assert code == 0 and out == new and len(err) == 1 and "data_options is the older spelling of data.options" in err[0]
    both = _yaml(tmp_path / "both.yaml", {"data": {"spec": "synthetic-echo", "options": {"num_cases": 6}},
                                          "data_options": {"num_cases": 8}})
    refused(["sweep", both, "--out", str(tmp_path / "x")], capsys,
            "data_options and data.options are both given; keep data.options")


def test_print_config_is_the_resolved_config_and_reads_back(tmp_path, capsys):
    code, err, out = run(["finetune", "--data", "synthetic-echo", "--print-config"], capsys)
    cfg = yaml.safe_load(out)
    assert code == 0 and err == []
    assert cfg["model"] == {"arch": "unet", "options": {"base_channels": 16, "depth": 4, "norm": "batch"}}
    assert cfg["finetune"]["lr"] == 0.001 and cfg["data"]["image_size"] == 112
    assert "pretrain" not in cfg and "evaluate" not in cfg  # a fine-tuning run reads neither
    # the printed config, given back as --config, names the same run (nothing else needed)
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert run(["finetune", "--config", str(printed), "--print-config"], capsys)[2] == out

    code, _, out = run(["pretrain", "--data", "synthetic-mri", "--method", "byol", "--print-config"], capsys)
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["pretrain"]["method"] == "byol" and "finetune" not in cfg

    s = _yaml(tmp_path / "s.yaml", {"data": {"spec": "synthetic-echo", "options": {"num_cases": 6}},
                                    "methods": ["none"], "finetune": {"lr": 0.01}})
    code, _, out = run(["sweep", s, "--print-config"], capsys)
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["finetune"]["lr"] == 0.01 and cfg["finetune"]["steps"] == 600  # defaults included
    assert sweep.sweep_dict(sweep.load_sweep_config(_yaml(tmp_path / "again.yaml", cfg))) == cfg


def test_config_alone_names_a_run(tmp_path, capsys):
    my = _yaml(tmp_path / "my.yaml", TINY_RUN)
    out = tmp_path / "run"
    code, err, text = run(["finetune", "--config", my, "--out", str(out)], capsys)
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["spec"] == "synthetic-echo"
    assert saved["model"]["options"] == {"base_channels": 4, "depth": 2, "norm": "batch"}  # as built
    assert "pretrain" not in saved  # a fine-tuning run records the sections it reads
    code, err, text = run(["finetune", "--config", my, "--out", str(out)], capsys)
    assert code == 0 and "already finished with this configuration" in text

    # data: SPEC is short for data: {spec: SPEC}, in a run's config as in a sweep's
    code, _, text = run(["pretrain", "--config", _yaml(tmp_path / "short.yaml", {"data": "synthetic-mri"}),
                         "--method", "byol", "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(text)["data"]["spec"] == "synthetic-mri"

    refused(["finetune", "--out", str(tmp_path / "o")], capsys, "give --data, or data.spec in --config")
    refused(["pretrain", "--config", my, "--out", str(tmp_path / "p")], capsys,
            "give --method, or pretrain.method in --config")
    refused(["finetune", "--config", my], capsys, "give --out, the run folder")


@pytest.mark.parametrize("argv, needles", [
    (["finetune", "--data", "synthetic-echo", "--set", "model.options.base_channel=8"],
     ["model.options: unknown option 'base_channel' for unet; valid options: base_channels, depth, norm"]),
    (["finetune", "--data", "synthetic-echo", "--arch", "deeplabv3", "--set", "model.options.stride=8"],
     ["model.options: unknown option 'stride' for deeplabv3; valid options: output_stride, atrous_rates"]),
    (["pretrain", "--data", "synthetic-echo", "--method", "simclr", "--set", "data.options.num_case=8"],
     ["data.options: unknown option 'num_case' for synthetic-echo; valid options: num_cases, seed, num_frames"]),
])
def test_a_misspelt_nested_option_lists_the_valid_names(tmp_path, capsys, argv, needles):
    refused([*argv, "--out", str(tmp_path / "o")], capsys, *needles)
    assert not (tmp_path / "o").exists()  # refused before the run folder is made


def test_a_misspelt_model_option_in_a_sweep_lists_the_valid_names(tmp_path, capsys):
    s = _yaml(tmp_path / "s.yaml", {"data": "synthetic-echo", "methods": ["none"]})
    refused(["sweep", s, "--set", "model.options.base_channel=8", "--out", str(tmp_path / "o")], capsys,
            "sweep: model.options: unknown option 'base_channel' for unet; valid options: base_channels")


def test_the_spacing_hint_leads_to_a_working_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "pics" / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "pics" / "images" / f"c{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 1
        Image.fromarray(mask).save(tmp_path / "pics" / "masks" / f"c{i}.png")
    spec = f"folder:{tmp_path / 'pics'}"
    code, err, out = run(["data", spec], capsys)
    assert code == 0 and "(set data.options.spacing=MM, or [ROW_MM, COL_MM])" in out
    for value, shown in (("0.5", "rows 0.500-0.500, columns 0.500-0.500"),
                         ("[0.5, 0.25]", "rows 0.500-0.500, columns 0.250-0.250")):
        code, err, out = run(["data", spec, "--set", f"data.options.spacing={value}"], capsys)
        assert code == 0 and err == [] and shown in out, (err, out)
    refused(["data", spec, "--set", "data.options.spacing=[1, 2, 3]"], capsys,
            "data.options.spacing = [1, 2, 3] is not allowed: expected mm per pixel, one number or [row mm, column mm]")
