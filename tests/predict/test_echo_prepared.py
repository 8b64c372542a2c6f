"""Echo clips prepared as EchoNet-Dynamic's on a real cine (pydicom's SonoSite example); the preparation table."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from sslseg.cli import main
from sslseg.engine.checkpoint import save_checkpoint
from sslseg.engine.trained import training_frames
from sslseg.models.build import build_model
from sslseg.predict.io import read_study
from sslseg.predict.run import Predictor, choose_preparation

NORMALIZER = {"mean": 0.2, "std": 0.2, "scale": 255.0}

nib = pytest.importorskip("nibabel")


def _echo_cine() -> str:
    from pydicom.data import get_testdata_file

    p = get_testdata_file("examples_ybr_color.dcm", download=False)
    if p is None:
        pytest.skip("pydicom test file examples_ybr_color.dcm is not available offline")
    return p


def _everywhere_checkpoint(path, frames: str | None):
    """A tiny UNet whose head says 'class 1' everywhere: its mask is exactly the region it was shown."""
    torch.manual_seed(0)
    kwargs = {"base_channels": 4, "depth": 2, "in_channels": 1, "num_classes": 2}
    model = build_model("unet", **kwargs)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-5.0, 5.0]))
    pre = {"normalizer": dict(NORMALIZER), "image_size": 32, "native_size": [32, 32]}
    if frames:
        pre["frames"] = frames
    save_checkpoint(path, model, "unet", kwargs, {}, stage="finetune", preprocess=pre)
    return path


def test_real_echo_cine_through_predict(tmp_path, capsys):
    """pydicom's 30-frame SonoSite cine: sector found, masks inside it, geometry and frames kept, LV measured."""
    import pydicom

    src = _echo_cine()
    ds = pydicom.dcmread(src)
    ck = _everywhere_checkpoint(tmp_path / "echo.pt", "echo-sector")
    assert main(["predict", "--model", str(ck), src, "--out", str(tmp_path / "out")]) == 0
    assert "(dicom, 30 frame(s), prepared: echo, EF" in capsys.readouterr().out
    row = next(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert row["prepared"] == "echo" and "echo sector from the image" in row["notes"]
    # the file's calibration describes a 640 x 480 screen; the pixels were halved afterwards
    assert "does not fit the 320 x 240 frame" in row["notes"]

    nii = nib.load(tmp_path / "out" / "examples_ybr_color_mask.nii.gz")
    assert nii.shape == (320, 240, 30)  # (columns, rows, frames): every frame, the input's grid
    delta = 10 * float(ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX)
    assert nii.header.get_zooms()[:2] == pytest.approx((delta, delta))
    mask = np.asarray(nii.dataobj).transpose(2, 1, 0)  # (frames, rows, columns)
    # the model says 'foreground' wherever it looks: the mask is the sector within the square, in every frame
    assert (mask == mask[0]).all() and 0.2 < mask[0].mean() < 0.6
    rows, cols = np.nonzero(mask[0].any(1))[0], np.nonzero(mask[0].any(0))[0]
    # an independent estimate of where the sector lies: the calibrated region at the halved scale
    r = ds.SequenceOfUltrasoundRegions[0]
    assert abs(rows[0] - r.RegionLocationMinY0 / 2) < 8 and abs(rows[-1] - r.RegionLocationMaxY1 / 2) < 8
    # the square is as wide as the sector is deep, centred on it: the fan's lateral tips are cut
    assert abs((cols[0] + cols[-1]) / 2 - (r.RegionLocationMinX0 + r.RegionLocationMaxX1) / 4) < 8
    assert abs((cols[-1] - cols[0]) - (rows[-1] - rows[0])) <= 2
    # nothing on the text, the logo or the bottom toolbar
    assert not mask[:, :12, :].any() and not mask[:, 215:, :].any() and not mask[:, :, :30].any()

    lv = list(csv.DictReader(open(tmp_path / "out" / "examples_ybr_color_lv.csv")))
    assert len(lv) == 30
    assert float(lv[0]["area_mm2"]) == pytest.approx(mask[0].sum() * delta * delta, rel=1e-6)
    assert (tmp_path / "out" / "echo_summary.csv").exists()

    # the same model told to resize the whole frame: the whole frame is foreground (what --no-tile did)
    frames = read_study(src).frames[:4]
    assert Predictor.from_checkpoint(ck, device="cpu", prepare="resize").predict(frames, echo=True).labels.all()


def test_old_echo_checkpoint_learns_its_frames_from_the_data_spec(tmp_path):
    ck = _everywhere_checkpoint(tmp_path / "old.pt", None)
    p = Predictor.from_checkpoint(ck, device="cpu")
    assert p.trained_on == "native"  # no spec, frames not resized
    blob = torch.load(ck, weights_only=True)
    blob["config"] = {"data": {"spec": "echonet:/data/EchoNet-Dynamic"}}
    torch.save(blob, tmp_path / "echonet.pt")
    assert Predictor.from_checkpoint(tmp_path / "echonet.pt", device="cpu").trained_on == "echo-sector"


@pytest.mark.parametrize(
    "spec, native, modalities, options, expected",
    [
        ("synthetic-echo", (112, 112), None, None, "echo-sector"),
        ("echonet:/d", (112, 112), None, None, "echo-sector"),
        ("camus:/d", (843, 512), None, None, "echo-sector"),
        ("dicom:/d", (112, 112), {"US"}, {"sector": True}, "echo-sector"),  # cines prepared by the reader
        ("dicom:/d", (112, 112), {"US", "MR"}, {"sector": True}, "native"),  # not all ultrasound
        ("dicom:/d", (480, 640), {"US"}, {}, "resized"),  # whole screens, squeezed
        ("synthetic-mri", (96, 96), None, None, "native"),
        ("decathlon:/d", (320, 320), None, {"sector": True}, "resized"),  # no echo_sectors option of its own
        ("folder:/d", None, None, None, "resized"),
    ],
)
def test_what_the_checkpoint_records(spec, native, modalities, options, expected):
    image_size = 112 if native == (112, 112) else 96
    assert training_frames(spec, native, image_size, modalities, options) == expected


def test_a_registered_data_set_states_its_frames_there():
    # the fact lives in the registry: a new echo reader says so once, no list of names to extend
    from sslseg.data.registry import DATASETS

    DATASETS.add("echo-test", lambda: [], "test echo reader", needs_path=False, echo_sectors=True)
    try:
        assert training_frames("echo-test", (96, 96), 96) == "echo-sector"
    finally:
        DATASETS.remove("echo-test")
    assert training_frames("echo-test", (96, 96), 96) == "native"


@pytest.mark.parametrize(
    "trained, echo, size, spacing, train_spacing, expected",
    [
        ("echo-sector", True, (480, 640), (0.3, 0.3), (1.0, 1.0), "echo"),  # any pixel size
        ("echo-sector", False, (480, 640), None, None, "resize"),  # a picture or a volume
        ("native", False, (320, 320), (1.0, 1.0), (1.1, 0.9), "tile"),  # same scale, larger field of view
        ("native", False, (320, 320), None, (1.0, 1.0), "tile"),  # unknown spacing: pixels are the scale
        ("native", False, (320, 320), (0.5, 0.5), (1.0, 1.0), "resize"),  # a finer scan: not the model's scale
        ("native", True, (480, 640), None, None, "tile"),  # an echo clip for a model of native frames
        ("native", False, (96, 96), (1.0, 1.0), (1.0, 1.0), "resize"),  # the training size: one pass
        ("resized", True, (480, 640), (0.3, 0.3), (0.3, 0.3), "resize"),
    ],
)
def test_preparation_table(trained, echo, size, spacing, train_spacing, expected):
    assert choose_preparation(trained, echo, size, 96, spacing, train_spacing) == expected


def test_explicit_preparation_and_bad_options(threshold):
    p = threshold(32, prepare="echo")
    assert p.preparation((100, 100)) == "echo"
    assert threshold(32, tile=True).preparation((100, 100), echo=True) == "tile"
    with pytest.raises(ValueError, match="prepare must be one of"):
        threshold(32, prepare="crop")
    with pytest.raises(ValueError, match="either tile or prepare"):
        threshold(32, tile=True, prepare="echo")
    with pytest.raises(ValueError, match="training frames must be one of"):
        choose_preparation("echo", True, (10, 10), 8)


def test_echo_video_prepared_with_tta(tmp_path, threshold):
    """An AVI is an echo clip: sector prepared, masks and TTA uncertainty empty outside it, frames kept."""
    from fractions import Fraction

    from sslseg.io.video import write_video
    from sslseg.predict.io import read_mask_video
    from sslseg.predict.run import predict_file

    rng = np.random.default_rng(0)
    h, w, n = 90, 120, 6
    r, c = np.mgrid[:h, :w]
    fan = (np.hypot(r - 5, c - 60) <= 80) & (np.abs(np.arctan2(c - 60, r - 5)) <= np.pi / 4)
    clip = np.where(fan, rng.integers(0, 256, (n, h, w)), 0).astype(np.uint8)
    clip[:, 2:8, 2:30] = 255  # static text: bright, so a whole-frame threshold model would mark it
    src = tmp_path / "clip.avi"
    write_video(clip, src, Fraction(25), lossless=True)
    p = threshold(32, tta=True, trained_on="echo-sector")
    res = predict_file(p, src, tmp_path / "out" / "clip", echo=False)
    assert res.preparation == "echo" and res.sector is not None
    labels = read_mask_video(res.outputs["mask_video"], 2)
    assert labels.shape == (n, h, w) and labels.any()
    assert not labels[:, ~res.sector.mask].any() and not labels[:, 2:8, 2:30].any()
    var = np.asarray(nib.load(res.outputs["uncertainty"]).dataobj).transpose(2, 1, 0)
    assert var.shape == (n, h, w) and (var[:, ~res.sector.mask] == 0).all()
