"""Inference: training preprocessing, resize vs tiling, flip TTA and its variance, videos, bad input."""

from __future__ import annotations

import csv
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from sslseg.cli import main
from sslseg.data.batches import Normalizer
from sslseg.engine.checkpoint import load_checkpoint, model_from_checkpoint
from sslseg.evaluate.inference import predict_frames, tta_probabilities
from sslseg.io.intensity import training_range
from sslseg.io.video import write_video
from sslseg.predict.io import read_mask_video
from sslseg.predict.run import Predictor, predict_file

av = pytest.importorskip("av")
nib = pytest.importorskip("nibabel")


# --------------------------------------------------------------------------- #
# pure functions
# --------------------------------------------------------------------------- #
def test_training_range():
    u8 = np.array([[[0, 51, 255]]], np.uint8)
    assert training_range(u8, 255.0) is u8  # 8-bit data for an 8-bit model: untouched
    np.testing.assert_allclose(training_range(u8, 1.0), u8 / 255.0, rtol=1e-6)
    x = np.arange(1000, dtype=np.float32).reshape(1, 10, 100)
    p = np.percentile(x, 99.5)
    np.testing.assert_allclose(training_range(x, 1.0, "scale"), x / p, rtol=1e-6)
    z = training_range(x, 1.0, "zscore")
    assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_array_equal(training_range(x, 1.0, "none"), x)
    e = training_range(x, 255.0)  # float data for an 8-bit model: 0..255
    assert e.min() == 0 and e.max() == 255 and e[0, 5, 0] == pytest.approx(500 / p * 255, rel=1e-5)
    # per channel statistics for (N, C, H, W)
    two = np.stack([x, 10 * x], axis=1)
    np.testing.assert_allclose(training_range(two, 1.0)[:, 0], training_range(two, 1.0)[:, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="scan: 1 NaN"):
        training_range(np.array([[[np.nan, 1.0]]], np.float32), 1.0, where="scan")
    with pytest.raises(ValueError, match="intensity must be one of"):
        training_range(x, 1.0, "minmax")


# --------------------------------------------------------------------------- #
# the predictor
# --------------------------------------------------------------------------- #
def test_resized_prediction_is_the_evaluation_one(ckpt):
    """Without TTA the labels equal sslseg.evaluate.inference.predict_frames' (a second implementation)."""
    ck = load_checkpoint(ckpt)
    model = model_from_checkpoint(ck).eval()
    norm = Normalizer.from_dict(ck["preprocess"]["normalizer"])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 45, 61)).astype(np.uint8)
    ref = predict_frames(model, frames, norm, 32)
    got = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=2).predict(frames).labels
    assert got.shape == (5, 45, 61)
    assert (got != ref).mean() < 1e-3  # identical up to float ties
    assert got.min() >= 0 and got.max() <= 1


def test_tiling_of_a_pointwise_model_is_exact(threshold):
    """Sliding windows + Gaussian blending give back a pointwise model's answer everywhere."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (3, 70, 97)).astype(np.uint8)
    pred = threshold(tile=True, batch_size=7).predict(frames)
    np.testing.assert_array_equal(pred.labels, frames >= 52)
    # resizing like training blurs (bilinear, antialiased) a pixel-noise image: not the same
    assert (threshold().predict(frames).labels != (frames >= 52)).mean() > 0.1


def test_tiling_small_image_equals_one_native_pass(ckpt):
    """An image no larger than the window goes through the model once, at native size."""
    p = Predictor.from_checkpoint(ckpt, device="cpu", tile=True)
    frames = np.random.default_rng(2).integers(0, 255, (2, 24, 30)).astype(np.uint8)
    x = p.normalizer(torch.from_numpy(frames).float()[:, None])
    with torch.inference_mode():
        ref = p.model(x).argmax(1).numpy()
    np.testing.assert_array_equal(p.predict(frames).labels, ref)


@pytest.mark.parametrize(
    "tile, native, size, tiles",
    [
        ("auto", (32, 32), (64, 48), True),  # trained without resizing, larger input: tiled
        ("auto", (32, 32), (32, 32), False),  # the training size: one pass either way
        ("auto", (112, 90), (64, 48), False),  # training resized its frames: resize like training
        ("auto", None, (64, 48), False),  # nothing recorded: resize
        (True, None, (64, 48), True),
        (False, (32, 32), (64, 48), False),
    ],
)
def test_automatic_tiling_only_for_models_trained_at_native_scale(threshold, tile, native, size, tiles):
    p = threshold(32, tile=tile, native_size=native)
    assert p.tiles(size) is tiles
    frames = np.random.default_rng(3).integers(0, 255, (1, *size)).astype(np.uint8)
    # the pointwise model is exact only when tiled at native size (resizing blurs pixel noise)
    exact = (p.predict(frames).labels == (frames >= 52)).all()
    assert exact == (tiles or size == (32, 32))


def test_finetuning_records_the_native_frame_size(tmp_path):
    from sslseg.engine.checkpoint import load_checkpoint
    from sslseg.experiments.config import RunConfig
    from sslseg.experiments.pipeline import run_finetune

    cfg = RunConfig()
    cfg.data.options = {"num_cases": 6, "num_frames": 4}
    cfg.data.image_size = 32
    cfg.model.options = {"base_channels": 4, "depth": 2}
    cfg.finetune.steps, cfg.finetune.batch_size, cfg.finetune.labels = 2, 2, "1"
    pre = load_checkpoint(run_finetune(cfg, tmp_path / "ft"))["preprocess"]
    assert pre["native_size"] == [112, 112] and pre["image_size"] == 32
    # synthetic echo: sector squares, as EchoNet-Dynamic's frames; its pixel size (mm) is recorded
    assert pre["frames"] == "echo-sector" and len(pre["spacing"]) == 2 and 0.5 < pre["spacing"][0] < 3
    p = Predictor.from_checkpoint(tmp_path / "ft" / "checkpoint.pt", device="cpu")
    assert p.native_size == (112, 112) and p.trained_on == "echo-sector"
    assert p.preparation((480, 640), echo=True) == "echo" and p.preparation((480, 640)) == "resize"


class _Ramp(nn.Module):
    """Logits that ignore the image and grow from left to right: not mirror-symmetric."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        f = torch.linspace(-2, 2, w).expand(x.shape[0], 1, x.shape[-2], w)
        return torch.cat([-f, f], 1)


def test_tta_variance_analytic():
    s = 32
    frames = np.zeros((2, s, s), np.uint8)
    pred = Predictor(_Ramp(), Normalizer(0.0, 1.0), s, tta=True).predict(frames)
    f = torch.linspace(-2, 2, s)
    p1, p2 = torch.sigmoid(2 * f), torch.sigmoid(2 * f.flip(0))  # the pass and the mirrored pass
    expected = ((p1 - p2) / 2) ** 2  # variance of two values, the same for both classes
    np.testing.assert_allclose(pred.uncertainty[0, 5], expected.numpy(), atol=1e-6)
    assert pred.uncertainty.shape == (2, s, s)


def test_tta_of_a_mirror_symmetric_model_changes_nothing(threshold):
    frames = np.random.default_rng(3).integers(0, 255, (2, 40, 40)).astype(np.uint8)
    plain = threshold().predict(frames)
    tta = threshold(tta=True).predict(frames)
    np.testing.assert_array_equal(plain.labels, tta.labels)
    assert plain.uncertainty is None and np.abs(tta.uncertainty).max() < 1e-7
    x = torch.randn(2, 1, 16, 16)
    logp, var = tta_probabilities(threshold().model, x, tta=False)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(2, 16, 16))
    assert var is None


# --------------------------------------------------------------------------- #
# videos
# --------------------------------------------------------------------------- #
def _ellipse_video(frames=100, size=96, period=40, ed0=10):
    """Bright ellipses (semi-axes 36 x 16 px at ED) shrinking by 10% x 20% at ES, on a dark background."""
    r, c = np.mgrid[:size, :size].astype(np.float64)
    t = np.arange(frames)
    s = (1 - np.cos(2 * np.pi * (t - ed0) / period)) / 2
    a, b = 36 * (1 - 0.1 * s), 16 * (1 - 0.2 * s)
    th = 0.4
    u = np.cos(th) * (r - 47.3) + np.sin(th) * (c - 46.8)
    v = -np.sin(th) * (r - 47.3) + np.cos(th) * (c - 46.8)
    inside = (u[None] / a[:, None, None]) ** 2 + (v[None] / b[:, None, None]) ** 2 <= 1
    return np.where(inside, 200, 20).astype(np.uint8), a, b


def test_avi_in_mask_video_out_and_ef(tmp_path, ckpt, threshold):
    video, a, b = _ellipse_video()
    src = tmp_path / "echo.avi"
    write_video(video, src, Fraction(50), lossless=True)

    # the CLI with a real (tiny) checkpoint: a mask video and an overlay video with every frame
    assert main(["predict", "--model", str(ckpt), str(src), "--out", str(tmp_path / "cli")]) == 0
    for name in ("echo_mask.avi", "echo_overlay.avi"):
        with av.open(str(tmp_path / "cli" / name)) as cont:
            st = cont.streams.video[0]
            assert sum(1 for _ in cont.decode(st)) == 100
            assert st.average_rate == 50
    assert (tmp_path / "cli" / "echo_summary.csv").exists()

    # a pointwise model segments the ellipses exactly: the mask video holds them, and the EF is the analytic one
    res = predict_file(threshold(image_size=64, tile=True), src, tmp_path / "t" / "echo")
    np.testing.assert_array_equal(read_mask_video(res.outputs["mask_video"], 2), video > 100)
    ef_true = 100 * (1 - 0.9 * 0.8**2)
    assert res.echo["ef_percent"] == pytest.approx(ef_true, abs=1.5)
    assert res.echo["ed_frames"] == "10 50" and res.echo["es_frames"] == "30 70"
    assert res.echo["unit"] == "px" and res.echo["fps"] == 50
    rows = list(csv.DictReader(open(res.outputs["lv_csv"])))
    assert len(rows) == 100 and float(rows[10]["area_px2"]) == (video[10] > 100).sum()


def test_cli_reports_ef_error_against_a_filelist(tmp_path, ckpt, threshold, capsys, monkeypatch):
    video, _, _ = _ellipse_video(frames=60)
    folder = tmp_path / "Videos"
    folder.mkdir()
    write_video(video, folder / "0XAB.avi", Fraction(50), lossless=True)
    (tmp_path / "FileList.csv").write_text("FileName,EF,Split\n0XAB,50.0,TEST\n")
    # the checkpoint's model replaced by the pointwise one, to know the EF the CLI must report
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, path, **kw: threshold(64, tile=True)))
    rc = main(["predict", "--model", str(ckpt), str(folder), "--out", str(tmp_path / "out"),
               "--filelist", str(tmp_path / "FileList.csv")])
    assert rc == 0
    row = next(csv.DictReader(open(tmp_path / "out" / "echo_summary.csv")))
    err = abs(float(row["ef_percent"]) - 50.0)
    assert float(row["ef_abs_error"]) == pytest.approx(err, abs=1e-9)
    assert f"EF mean absolute error against {tmp_path / 'FileList.csv'}: {err:.2f} points over 1 video" in capsys.readouterr().out


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #
def test_bad_inputs_fail_alone_with_one_line_each(tmp_path, ckpt, capsys):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(good)
    unsupported = tmp_path / "scan.xyz"
    unsupported.write_text("hello")
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"not really gzip" * 20)
    channels = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), channels)
    bad_video = tmp_path / "noise.avi"
    bad_video.write_bytes(np.random.default_rng(0).integers(0, 255, 4000).astype(np.uint8).tobytes())
    folder = tmp_path / "more"
    folder.mkdir()
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(folder / "also_good.png")
    (folder / "readme.txt").write_text("passed over")

    rc = main(["predict", "--model", str(ckpt), str(unsupported), str(good), str(corrupt), str(channels),
               str(bad_video), str(folder), str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0
    for path, why in [(unsupported, "unsupported format .xyz"), (corrupt, "not a readable NIfTI file"),
                      (channels, "wrong channel count: the image has 2 channel(s)"),
                      (bad_video, "unreadable video"), (tmp_path / "missing.png", "file not found")]:
        lines = [ln for ln in err.splitlines() if ln.startswith("FAILED") and str(path) in ln]
        assert len(lines) == 1 and why in lines[0], (path, err)
    assert "5 file(s) failed" in err
    # the good files, before and after the bad ones, were processed
    assert (tmp_path / "out" / "good_mask.png").exists()
    assert (tmp_path / "out" / "also_good_mask.png").exists()
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert sorted(r["status"] for r in rows) == ["failed"] * 5 + ["ok"] * 2


def test_grey_image_for_a_three_channel_model(tmp_path, make_ckpt, capsys):
    from PIL import Image

    ck = make_ckpt(tmp_path / "rgb.pt", in_channels=3)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "colour.png")
    rc = main(["predict", "--model", str(ck), str(tmp_path / "grey.png"), str(tmp_path / "colour.png"),
               "--out", str(tmp_path / "out")])
    assert rc != 0
    assert "grey.png: wrong channel count: the image has 1 channel(s) (L), the model expects 3" in capsys.readouterr().err
    assert (tmp_path / "out" / "colour_mask.png").exists()


def test_pretrained_checkpoint_is_refused(tmp_path, make_ckpt, capsys):
    ck = make_ckpt(tmp_path / "pre.pt", stage="pretrain")
    assert main(["predict", "--model", str(ck), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "pretrain checkpoint has no trained segmentation head" in capsys.readouterr().err


def test_postprocess_keeps_the_largest_component_and_fills_holes():
    class Bright(nn.Module):  # class 1 wherever the frame is bright: masks known exactly
        def forward(self, x):
            return torch.cat([-x[:, :1], x[:, :1]], dim=1)

    def threshold_predictor(**options):
        return Predictor(Bright(), Normalizer(0.2, 0.2), 32, **options)

    frames = np.zeros((2, 32, 32), np.uint8)
    frames[:, 4:20, 4:20] = 200  # the object, with a hole
    frames[:, 10:13, 10:13] = 0
    frames[:, 26:29, 26:29] = 200  # a speck apart from it
    raw = threshold_predictor(prepare="resize").predict(frames).labels
    assert raw[:, 27, 27].all() and not raw[:, 11, 11].any()
    clean = threshold_predictor(prepare="resize", postprocess={"largest_component": True, "fill_holes": True})
    labels = clean.predict(frames).labels
    expected = np.zeros((32, 32), np.int64)
    expected[4:20, 4:20] = 1
    assert (labels == expected).all()
