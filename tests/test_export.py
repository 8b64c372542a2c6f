"""Export: ONNX (checked with onnxruntime) and TorchScript give PyTorch's logits within 1e-4."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import refused

from sslseg.cli import main
from sslseg.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sslseg.export import export_model, read_metadata
from sslseg.models.build import build_model

PRE = {"normalizer": {"mean": 0.2, "std": 0.2, "scale": 255.0}, "image_size": 32}


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    kwargs = {"base_channels": 4, "depth": 2}
    model = build_model("unet", **kwargs)
    # non-trivial BatchNorm statistics, so that eval-mode normalisation is part of what is compared
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 1, 32, 32) * 2 + 0.5)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, "unet", kwargs, {}, stage="finetune", preprocess=PRE)
    return path


def _reference(ckpt, x: np.ndarray) -> np.ndarray:
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_onnx_parity_with_onnxruntime(tmp_path, ckpt):
    ort = pytest.importorskip("onnxruntime")
    res = export_model(ckpt, "onnx", tmp_path / "model.onnx")
    assert res.path.exists() and res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    # an independent run: another batch size, another input
    x = np.random.default_rng(1).normal(size=(5, 1, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x})[0]
    ref = _reference(ckpt, x)
    assert out.shape == (5, 2, 32, 32)
    assert np.abs(out - ref).max() <= 1e-4
    assert np.abs(ref).max() > 1e-2  # a non-trivial output was compared
    meta = read_metadata(res.path)
    assert meta["image_size"] == 32 and meta["normalizer"] == PRE["normalizer"] and meta["num_classes"] == 2


def test_torchscript_parity(tmp_path, ckpt):
    res = export_model(ckpt, "torchscript", tmp_path / "model.ts.pt")
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    x = np.random.default_rng(2).normal(size=(3, 1, 32, 32)).astype(np.float32)
    loaded = torch.jit.load(str(res.path))
    with torch.inference_mode():
        out = loaded(torch.from_numpy(x)).numpy()
    assert np.abs(out - _reference(ckpt, x)).max() <= 1e-4
    assert read_metadata(res.path)["in_channels"] == 1


def test_cli_export_and_errors(tmp_path, ckpt, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", str(ckpt), "--format", "onnx"]) == 0
    assert ckpt.with_suffix(".onnx").exists()  # default: next to the checkpoint
    assert "max |exported - PyTorch|" in capsys.readouterr().out
    pre = tmp_path / "pre.pt"
    save_checkpoint(pre, build_model("unet", base_channels=4, depth=2), "unet",
                    {"base_channels": 4, "depth": 2}, {}, stage="pretrain", preprocess=PRE)
    assert main(["export", "--model", str(pre)]) == 2
    assert "pretrain checkpoint has no trained segmentation head" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(ckpt, "tflite")


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot create files in: chmod 0o500, or for root (whom chmod does not bind)
    sysfs, which refuses new files to root too."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
        return
    sysfs = Path("/sys")
    try:
        (sysfs / "sslseg-probe").open("x").close()
    except OSError:
        yield sysfs
        return
    (sysfs / "sslseg-probe").unlink()
    pytest.skip("no folder here refuses new files to this user")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_read_only_out_is_one_line(read_only_folder, ckpt, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
    before = sorted(p.name for p in read_only_folder.iterdir())
    out = read_only_folder / "sslseg-model.out"
    refused(["export", "--model", str(ckpt), "--format", fmt, "--out", str(out)], capsys,
            f"{out}: cannot be written (folder {read_only_folder}: ")
    assert sorted(p.name for p in read_only_folder.iterdir()) == before


def test_disk_full_during_export_names_the_file_and_leaves_no_temporary(tmp_path, ckpt, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.jit, "save", full)
    refused(["export", "--model", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.ts")], capsys,
            f"{tmp_path / 'm.ts'}: disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
