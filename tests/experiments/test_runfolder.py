"""One owner per run folder; --config values stand unless a flag is given; a failed write keeps the old outputs."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslseg.cli import _config, build_parser, main
from sslseg.experiments.config import RunConfig, to_dict
from sslseg.experiments.runfolder import claim

TINY = ["finetune", "--data", "synthetic-echo", "--image-size", "32", "--batch-size", "2", "--steps", "2",
        "--set", "model.options.base_channels=4", "--set", "model.options.depth=2",
        "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4", "--set", "data.options.size=32"]


def test_config_values_stand_unless_a_flag_is_given(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("seed: 7\nmodel: {arch: deeplabv3}\nfinetune: {labels: '2', lr: 1e-4, batch_size: 3}\n")
    args = build_parser().parse_args(["finetune", "--data", "synthetic-echo", "--config", str(yml), "--out", "x"])
    cfg = _config(args, "finetune")
    assert (cfg.seed, cfg.model.arch, cfg.finetune.labels, cfg.finetune.batch_size) == (7, "deeplabv3", "2", 3)
    assert cfg.finetune.lr == 1e-4  # YAML 1.1 reads 1e-4 as text; a number field takes it as a number
    args = build_parser().parse_args(["finetune", "--data", "synthetic-echo", "--config", str(yml), "--out", "x",
                                      "--seed", "0", "--arch", "unet", "--labels", "4"])
    cfg = _config(args, "finetune")
    assert (cfg.seed, cfg.model.arch, cfg.finetune.labels, cfg.finetune.batch_size) == (0, "unet", "4", 3)


def test_finished_run_other_labels_and_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--labels", "1", "--out", str(out)]
    assert main(argv) == 0
    ckpt = (out / "checkpoint.pt").read_bytes()
    labelled = (out / "labelled.json").read_text()
    capsys.readouterr()
    assert main(argv) == 0  # asked again: said, not trained again
    assert "already finished" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == ckpt
    other = [*TINY, "--labels", "2", "--out", str(out)]
    assert main(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune.labels: '1' there, '2' now" in err[0] and "--overwrite" in err[0]
    assert (out / "labelled.json").read_text() == labelled and (out / "checkpoint.pt").read_bytes() == ckpt
    assert main([*other, "--overwrite"]) == 0
    assert '"budget": "2"' in (out / "labelled.json").read_text()


def test_lock_refuses_a_second_owner_and_survives_a_dead_one(tmp_path):
    cfg = to_dict(RunConfig())
    with claim(tmp_path / "run", cfg):
        with pytest.raises(ValueError, match="is in use by process"):
            with claim(tmp_path / "run", cfg):
                pass
    # a lock file left by a process that died (the OS released its lock): taken over
    (tmp_path / "run" / ".lock").write_text("process 999999")
    with claim(tmp_path / "run", cfg) as folder:
        assert not folder.finished
    # held by another live process: refused, whatever the file says
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"), str(tmp_path / "run" / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="in use"):
            with claim(tmp_path / "run", cfg):
                pass
    finally:
        holder.kill()
        holder.wait()


def checkpoint(path: Path) -> Path:
    """A tiny fine-tuned ``sslseg/1`` checkpoint (untrained weights)."""
    from sslseg.engine.checkpoint import save_checkpoint
    from sslseg.models.build import build_model

    kwargs = {"in_channels": 1, "num_classes": 2, "base_channels": 4, "depth": 2}
    save_checkpoint(path, build_model("unet", **kwargs), "unet", kwargs, to_dict(RunConfig()), stage="finetune",
                    splits={}, preprocess={"normalizer": {"mean": 0.5, "std": 0.2, "scale": 255.0},
                                           "image_size": 32, "native_size": None})
    return path


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A small PNG whose header claims ``side`` x ``side`` pixels (CRC fixed, so only the size is wrong)."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the first chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def test_predict_goes_past_a_bad_file(tmp_path, capsys):
    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(good)
    bomb = bomb_png(tmp_path / "in" / "bomb.png")
    code = main(["predict", "--model", str(checkpoint(tmp_path / "m.pt")), str(bomb), str(good),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "Traceback" not in err
    assert any(p.name.startswith("good") for p in (tmp_path / "out").iterdir())


def test_overwrite_leaves_no_file_of_the_old_run(tmp_path):
    from sslseg.experiments.runfolder import RUN_FOLDERS, RUN_OUTPUTS, clear_outputs

    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    for name in ("provenance.json", "metrics.csv", "log.txt", ".last.pt.host-1.abc.tmp"):
        (out / name).write_text("old")
    (out / "notes.txt").write_text("the user's own file")
    clear_outputs(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert "provenance.json" in RUN_OUTPUTS and "tensorboard" in RUN_FOLDERS
