"""Issue 25: data a model was not made for, runs that would lose work, files that read where they should not.

Every refusal is one line on stderr with exit code 2, and leaves what was there in place.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import refused, run
from PIL import Image

from sslseg.engine.checkpoint import atomic_save, save_checkpoint
from sslseg.experiments.config import RunConfig, to_dict
from sslseg.models.build import build_model

SYN = ["--data", "synthetic-echo", "--set", "data.options.num_cases=6", "--set", "data.options.num_frames=4",
       "--set", "data.options.size=32", "--image-size", "32", "--steps", "2", "--batch-size", "2",
       "--set", "model.options.base_channels=4", "--set", "model.options.depth=2"]
FT = ["finetune", *SYN, "--labels", "1"]


def png(path: Path, values=None, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        arr = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    else:
        arr = np.zeros(size, np.uint8)
        arr[4:12, 4:12] = values
    Image.fromarray(arr).save(path)
    return path


def folder(root: Path, names) -> Path:
    for name in names:
        png(root / "images" / f"{name}.png")
        png(root / "masks" / f"{name}.png", values=1)
    return root


def fine_tuned(path: Path, num_classes: int = 2, dataset: str | None = "synthetic-echo", splits=None,
               options: dict | None = None, nan: bool = False) -> Path:
    """A small fine-tuned ``sslseg/1`` checkpoint (untrained weights) recording ``dataset`` and ``splits``."""
    kwargs = {"in_channels": 1, "num_classes": num_classes, "base_channels": 4, "depth": 2}
    torch.manual_seed(0)
    model = build_model("unet", **kwargs)
    if nan:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    cfg = to_dict(RunConfig())
    cfg["data"]["spec"] = dataset or "synthetic-echo"
    cfg["data"]["options"] = {"num_cases": 6, "num_frames": 4, "size": 32} if options is None else options
    extra = {"stage": "finetune", "splits": {"case0000": "train"} if splits is None else splits,
             "preprocess": {"normalizer": {"mean": 0.5, "std": 0.2, "scale": 255.0}, "image_size": 32,
                            "native_size": None}}
    if dataset is not None:
        extra["dataset"] = dataset
    save_checkpoint(path, model, "unet", kwargs, cfg, **extra)
    return path


# --------------------------------------------------------------------------- #
# item 5: evaluate refuses data the model was not made for; NaN weights
# --------------------------------------------------------------------------- #
def test_evaluate_refuses_another_kind_of_data(tmp_path, capsys):
    """A synthetic-echo LV model on synthetic-mri (old code: scored it, Dice 0.02, exit 0)."""
    ckpt = fine_tuned(tmp_path / "m.pt")
    line = refused(["evaluate", "--data", "synthetic-mri", "--model", str(ckpt), "--out", str(tmp_path / "o")],
                   capsys, "synthetic-echo")
    assert "m.pt" in line
    assert not (tmp_path / "o").exists()


def test_evaluate_refuses_frames_exported_from_the_training_data(tmp_path, capsys):
    """``sslseg data synthetic-echo --export X`` then ``evaluate --data folder:X``: another kind of data."""
    ckpt = fine_tuned(tmp_path / "m.pt")
    data = folder(tmp_path / "exported", ["case0000_0000", "case0000_0002"])
    refused(["evaluate", "--data", f"folder:{data}", "--model", str(ckpt), "--out", str(tmp_path / "o")],
            capsys, "trained on synthetic-echo")


def test_evaluate_refuses_another_number_of_classes(tmp_path, capsys):
    """A 3-class model on 2-class echo, and a 2-class model on 3-class MRI (same kind of data each)."""
    three = fine_tuned(tmp_path / "three.pt", num_classes=3)
    refused(["evaluate", "--data", "synthetic-echo", "--model", str(three), "--out", str(tmp_path / "o")],
            capsys, "predicts 3 classes")
    mri = {"num_cases": 2, "num_slices": 3, "size": 32}
    two = fine_tuned(tmp_path / "two.pt", num_classes=2, dataset=None, options=mri, splits={"x": "train"})
    raw = torch.load(two, weights_only=True)
    raw["config"]["data"]["spec"] = "synthetic-mri"
    torch.save(raw, two)
    refused(["evaluate", "--data", "synthetic-mri", "--model", str(two), "--out", str(tmp_path / "o")],
            capsys, "hold 3")


def test_evaluate_refuses_cases_derived_from_training_ones(tmp_path, capsys):
    """Frames of training case ``a`` under new ids (``a_0000``) are not 'never seen'."""
    ckpt = fine_tuned(tmp_path / "m.pt", dataset=f"folder:{tmp_path / 'train'}", options={},
                      splits={"a": "train", "b": "val", "c": "test"})
    data = folder(tmp_path / "again", ["a_0000", "a_0003"])
    refused(["evaluate", "--data", f"folder:{data}", "--model", str(ckpt), "--out", str(tmp_path / "o")],
            capsys, "'a_0000'")


def test_evaluate_reports_unknown_cases(tmp_path, capsys):
    ckpt = fine_tuned(tmp_path / "m.pt", dataset=f"folder:{tmp_path / 'train'}", options={},
                      splits={"a": "train", "b": "val", "c": "test"})
    data = folder(tmp_path / "new", ["c", "zeta"])
    code, err, out = run(["evaluate", "--data", f"folder:{data}", "--model", str(ckpt), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "1 of 2 case(s) are not in the checkpoint's recorded split (e.g. 'zeta')" in out


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_nan_weights_are_refused(tmp_path, capsys, command):
    """Old code: evaluate scored, predict wrote masks and export passed its check with max diff = nan."""
    ckpt = fine_tuned(tmp_path / "nan.pt", nan=True)
    argv = {"evaluate": ["evaluate", "--data", "synthetic-echo", "--model", str(ckpt), "--out", str(tmp_path / "o")],
            "predict": ["predict", str(png(tmp_path / "in" / "i.png")), "--model", str(ckpt), "--out",
                        str(tmp_path / "o")],
            "export": ["export", "--model", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]}
    line = refused(argv[command], capsys, "nan.pt")
    assert "NaN" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.ts").exists()


def test_export_check_fails_on_nan(tmp_path, monkeypatch):
    import sslseg.export as export

    ckpt = fine_tuned(tmp_path / "m.pt")
    monkeypatch.setattr(export, "_export_torchscript",
                        lambda model, example, probe, path, meta, check: np.full((3, 2, 32, 32), np.nan, np.float32))
    with pytest.raises(RuntimeError, match="nan"):
        export.export_model(ckpt, "torchscript", tmp_path / "m.ts")


# --------------------------------------------------------------------------- #
# item 7: run folders that would lose work
# --------------------------------------------------------------------------- #
def test_finetune_refuses_an_init_inside_the_folder_it_would_clear(tmp_path, capsys):
    """Old code: --overwrite deleted run/checkpoint.pt, then failed to read it."""
    run_dir = tmp_path / "pre"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    init = run_dir / "checkpoint.pt"
    init.write_bytes(b"pretrained weights")
    refused([*FT, "--init", str(init), "--out", str(run_dir), "--overwrite"], capsys, "--init")
    assert init.read_bytes() == b"pretrained weights"
    assert (run_dir / "config.yaml").read_text() == "seed: 0\n"


def test_finished_run_with_a_damaged_config_is_refused(tmp_path, capsys):
    """Old code: the run was cleared silently and trained again (exit 0)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"finished")
    (run_dir / "config.yaml").write_text("seed: [0,\n")
    refused([*FT, "--out", str(run_dir)], capsys, "config.yaml")
    assert (run_dir / "checkpoint.pt").read_bytes() == b"finished"
    # a checkpoint without any config.yaml is not cleared either
    (run_dir / "config.yaml").unlink()
    refused([*FT, "--out", str(run_dir)], capsys, "no config.yaml")
    assert (run_dir / "checkpoint.pt").read_bytes() == b"finished"


@pytest.mark.parametrize("command", ["finetune", "evaluate", "export", "data"])
def test_empty_out_is_refused(tmp_path, capsys, monkeypatch, command):
    """Old code: ``finetune --out ''`` made the working folder a run folder."""
    monkeypatch.chdir(tmp_path)
    ckpt = str(fine_tuned(tmp_path / "m.pt"))
    argv = {"finetune": [*FT, "--out", ""],
            "evaluate": ["evaluate", "--data", "synthetic-echo", "--model", ckpt, "--out", ""],
            "export": ["export", "--model", ckpt, "--out", ""],
            "data": ["data", "synthetic-echo", "--export", ""]}
    refused(argv[command], capsys, "is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# --------------------------------------------------------------------------- #
# item 11: reading where a command should not
# --------------------------------------------------------------------------- #
def test_data_export_inside_the_data_set_is_refused(tmp_path, capsys):
    """Old code: the export landed in the source folder, which then read each case twice."""
    data = folder(tmp_path / "d", ["a", "b"])
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    for target in (data, data / "exported"):
        refused(["data", f"folder:{data}", "--export", str(target)], capsys, "inside the data set's folder")
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before


def test_predict_does_not_read_its_own_outputs(tmp_path, capsys):
    """``predict DIR --out DIR/pred`` twice: the second run sees the same inputs (old code: its own masks too)."""
    ckpt = fine_tuned(tmp_path / "m.pt")
    data = tmp_path / "studies"
    png(data / "one.png")
    png(data / "two.png")
    argv = ["predict", str(data), "--model", str(ckpt), "--out", str(data / "pred"), "--no-echo"]
    for _ in range(2):
        code, err, out = run(argv, capsys)
        assert code == 0, err
        assert "2 of 2 file(s) done" in out, out


def test_predict_refuses_an_input_folder_inside_out(tmp_path, capsys):
    ckpt = fine_tuned(tmp_path / "m.pt")
    png(tmp_path / "out" / "studies" / "one.png")
    refused(["predict", str(tmp_path / "out" / "studies"), "--model", str(ckpt), "--out", str(tmp_path / "out")],
            capsys, "--out")


# --------------------------------------------------------------------------- #
# item 12: permissions
# --------------------------------------------------------------------------- #
@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_checkpoints_get_ordinary_permissions(tmp_path):
    """Old code: 0600 (mkstemp), unreadable to colleagues on shared storage."""
    old = os.umask(0o022)
    try:
        atomic_save({"x": torch.zeros(1)}, tmp_path / "a.pt")
        fine_tuned(tmp_path / "b.pt")
        os.umask(0o027)
        atomic_save({"x": torch.zeros(1)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.pt").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "b.pt").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "c.pt").stat().st_mode & 0o777) == oct(0o640)
