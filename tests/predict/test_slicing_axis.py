"""A model trained on volumes cut along one voxel axis predicts along that axis (one path from volume to frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslseg.engine.checkpoint import load_checkpoint, save_checkpoint
from sslseg.engine.trained import open_trained
from sslseg.io.volumes import read_voxels, voxels_to_frames
from sslseg.models.build import build_model
from sslseg.predict.io import read_study
from sslseg.predict.run import Predictor, predict_file

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")

SHAPE = (6, 20, 12)  # (i, j, k): anisotropic, every axis of another size
ZOOMS = (4.0, 1.0, 1.5)


def _volume(seed: int = 0) -> np.ndarray:
    """Bright voxels at random places: any swapped, flipped or transposed axis changes the mask."""
    return (np.random.default_rng(seed).random(SHAPE) * 100).astype(np.float32)


def _save_nifti(path, vox) -> None:
    img = nib.Nifti1Image(vox, np.diag([*ZOOMS, 1.0]))
    nib.save(img, str(path))


def test_model_finetuned_on_axis_0_predicts_along_axis_0(tmp_path):
    from sslseg.experiments.config import RunConfig
    from sslseg.experiments.pipeline import run_finetune

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for n in range(4):
        vox = _volume(n)
        _save_nifti(data / "images" / f"v{n}.nii.gz", vox)
        _save_nifti(data / "masks" / f"v{n}.nii.gz", (vox > 50).astype(np.uint8))
    cfg = RunConfig()
    cfg.data.spec = f"folder:{data}"
    cfg.data.options = {"axis": 0, "intensity": "zscore"}
    cfg.data.image_size = 16
    cfg.model.options = {"base_channels": 4, "depth": 2}
    cfg.finetune.steps, cfg.finetune.batch_size, cfg.finetune.labels = 1, 2, "1"
    ckpt = run_finetune(cfg, tmp_path / "ft")
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    res = predict_file(p, data / "images" / "v0.nii.gz", tmp_path / "out" / "v0")
    # frames along i (6 of them), each k rows by j columns: what the training reader cut
    assert (res.frames, res.shape) == (SHAPE[0], (SHAPE[2], SHAPE[1]))
    assert nib.load(res.outputs["mask"]).shape == SHAPE
    pre = load_checkpoint(ckpt)["preprocess"]
    assert pre["axis"] == 0 and pre["intensity"] == "zscore"
    assert p.axis == 0 and p.intensity == "zscore"


def test_prediction_cuts_volumes_with_the_training_function(tmp_path):
    vox = _volume()
    _save_nifti(tmp_path / "v.nii.gz", vox)
    sitk.WriteImage(sitk.GetImageFromArray(vox.transpose(2, 1, 0)), str(tmp_path / "v.nrrd"))
    for axis in (0, 1, 2):
        want, _ = voxels_to_frames(*read_voxels(tmp_path / "v.nii.gz"), axis)
        for name in ("v.nii.gz", "v.nrrd"):
            np.testing.assert_array_equal(read_study(tmp_path / name, axis=axis).frames, want)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name", ["v.nii.gz", "v.nrrd"])
def test_masks_go_back_through_the_same_axis(tmp_path, threshold, axis, name):
    vox = (_volume() * 2.55).astype(np.uint8)  # 8-bit: the grey values reach the model as they are
    _save_nifti(tmp_path / "v.nii.gz", vox)
    sitk.WriteImage(sitk.GetImageFromArray(vox.transpose(2, 1, 0)), str(tmp_path / "v.nrrd"))
    res = predict_file(threshold(tile=True, axis=axis), tmp_path / name, tmp_path / "o" / "v")
    assert res.frames == SHAPE[axis]
    mask, _ = read_voxels(res.outputs["mask"])
    # the pointwise model marks grey values >= 52 (tests/predict/conftest.py) wherever they are
    np.testing.assert_array_equal(mask, vox >= 52)


def test_checkpoint_without_axis_keeps_cutting_along_k(tmp_path):
    torch.manual_seed(0)
    kwargs = {"base_channels": 4, "depth": 2, "in_channels": 1, "num_classes": 2}
    save_checkpoint(tmp_path / "old.pt", build_model("unet", **kwargs), "unet", kwargs, {}, stage="finetune",
                    preprocess={"normalizer": {"mean": 0.2, "std": 0.2, "scale": 255.0}, "image_size": 16})
    assert open_trained(tmp_path / "old.pt").axis == 2
    _save_nifti(tmp_path / "v.nii.gz", _volume())
    res = predict_file(Predictor.from_checkpoint(tmp_path / "old.pt", device="cpu"), tmp_path / "v.nii.gz",
                       tmp_path / "o" / "v")
    assert (res.frames, res.shape) == (SHAPE[2], (SHAPE[1], SHAPE[0]))


def _multiframe_mr(path, vox) -> None:
    """An enhanced-style multi-frame MR DICOM holding ``vox`` (i, j, k): frames along k, j as rows."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("MR_small.dcm", download=False)
    if src is None:
        pytest.skip("pydicom test file MR_small.dcm is not available offline")
    ds = pydicom.dcmread(src)
    frames = np.ascontiguousarray(vox.transpose(2, 1, 0)).astype(np.int16)  # (k, j, i)
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.PixelSpacing = [ZOOMS[1], ZOOMS[0]]  # row mm (j), column mm (i)
    ds.SliceThickness = ZOOMS[2]
    ds.PixelData = frames.tobytes()
    ds.save_as(path)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_multiframe_dicom_volume_is_cut_along_the_training_axis(tmp_path, threshold, axis):
    vox = np.where(_volume() >= 52, 200.0, 0.0).astype(np.float32)  # two grey values: any intensity scaling keeps them
    _multiframe_mr(tmp_path / "v.dcm", vox)
    study = read_study(tmp_path / "v.dcm", axis=axis)
    want, spacing = voxels_to_frames(vox, ZOOMS, axis)
    np.testing.assert_array_equal(study.frames, want)  # the training reader's cut of the same voxels
    assert study.spacing == pytest.approx(spacing)
    res = predict_file(threshold(tile=True, axis=axis), tmp_path / "v.dcm", tmp_path / "o" / "v")
    assert res.frames == SHAPE[axis]
    # the mask goes back onto the file's frames: voxel (i, j, k) of the NIfTI is voxel (i, j, k) of the DICOM
    mask = np.asarray(nib.load(res.outputs["mask"]).dataobj)
    np.testing.assert_array_equal(mask, vox > 0)
