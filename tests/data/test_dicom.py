"""DICOM reader on real files shipped with pydicom (only those present offline)."""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, pixel_array

from sslseg.data.dicom import load_dicom
from sslseg.data.registry import load_dataset
from sslseg.io.dicom import read_dicom
from sslseg.io.pictures import luma


def _data_file(name: str) -> str:
    p = get_testdata_file(name, download=False)
    if p is None:
        pytest.skip(f"pydicom test file {name} is not available offline")
    return p


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def test_multiframe_ultrasound_cine_luma_and_region_calibration():
    path = _data_file("examples_ybr_color.dcm")
    frames, spacing, meta = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert frames.dtype == np.uint8 and frames.shape == (30, 240, 320)
    ybr = pixel_array(ds, as_rgb=False)
    np.testing.assert_array_equal(frames, ybr[..., 0])  # the Y channel itself
    # an independent route: pydicom's RGB conversion, then BT.601 luma, agrees up to rounding
    # (and RGB clipping in the few saturated colour pixels)
    diff = np.abs(luma(ds.pixel_array).astype(int) - frames)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 1
    # the 2D tissue region is calibrated in cm: PhysicalDeltaX/Y 0.051 cm per pixel
    assert spacing == pytest.approx((0.5104970559477806, 0.5104970559477806))
    assert meta["spacing_source"] == "SequenceOfUltrasoundRegions"
    assert meta["modality"] == "US" and meta["number_of_frames"] == 30


def test_palette_colour_to_grey():
    path = _data_file("examples_palette.dcm")
    frames, spacing, _ = read_dicom(path)
    ds = pydicom.dcmread(path)
    rgb = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(frames[0], luma(rgb))
    # of the two calibrated regions, the larger 2D one in cm (the image, not the Doppler strip)
    assert spacing == pytest.approx((0.2622878766196998, 0.2622878766196998))


def test_mr_spacing_and_rescale():
    path = _data_file("MR_small.dcm")
    frames, spacing, meta = read_dicom(path)
    assert frames.dtype == np.float32 and frames.shape == (1, 64, 64)
    np.testing.assert_array_equal(frames[0], pydicom.dcmread(path).pixel_array.astype(np.float32))
    assert spacing == (0.3125, 0.3125) and meta["spacing_source"] == "PixelSpacing"


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_data_file("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.int64)
    ds.PhotometricInterpretation = "MONOCHROME1"
    p = tmp_path / "mono1.dcm"
    ds.save_as(p)
    frames, _, _ = read_dicom(p)
    np.testing.assert_array_equal(frames[0], raw.max() + raw.min() - raw)


def test_folder_of_files_series_and_skips(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(_data_file("examples_ybr_color.dcm"), src / "cine.dcm")
    shutil.copy(_data_file("MR_small.dcm"), src / "mr.dcm")
    shutil.copy(_data_file("rtplan.dcm"), src / "plan.dcm")  # no pixel data
    (src / "notes.dcm").write_text("not dicom")
    series = sorted(glob.glob(os.path.join(os.path.dirname(_data_file("MR_small.dcm")), "dicomdirtests", "98892003", "MR700", "*")))
    if not series:
        pytest.skip("pydicom's DICOMDIR test series is not available offline")
    (src / "series").mkdir()
    for f in series:
        shutil.copy(f, src / "series" / os.path.basename(f))
    cases = load_dicom(src)
    by = {c.case_id: c for c in cases}
    assert sorted(by) == ["cine", "mr", "series_series700"]  # files by name; a series by folder and number
    assert all(len(c.masks) == 0 for c in cases) and all(c.split is None for c in cases)
    # 8-bit echo and 16-bit MR in one data set: one dtype for all (8-bit divided by 255)
    assert {np.dtype(c.frames.dtype) for c in cases} == {np.dtype(np.float32)}
    ser = by["series_series700"]
    assert ser.num_frames == len(series) and ser.image_shape == (16, 16)
    # radial slices (different orientations): ordered by InstanceNumber
    inst = [pydicom.dcmread(f).InstanceNumber for f in series]
    first = pydicom.dcmread(series[int(np.argmin(inst))]).pixel_array.astype(np.float32)
    np.testing.assert_allclose(ser.frames[0] / ser.frames[0].max(), first / first.max(), rtol=1e-5)
    skipped = "\n".join(cases.skipped)
    assert "plan.dcm" in skipped and "notes.dcm: not a readable DICOM file" in skipped
    assert by["cine"].spacing == pytest.approx((0.5105, 0.5105), rel=1e-3)
    assert by["cine"].spacing_known


def test_unknown_spacing_is_noted_and_spec_works(tmp_path):
    p = tmp_path / "rgb.dcm"
    shutil.copy(_data_file("examples_rgb_color.dcm"), p)
    cases = load_dataset(f"dicom:{p}")
    (c,) = cases
    assert c.frames.dtype == np.uint8 and c.spacing == (1.0, 1.0) and not c.spacing_known
    assert any("spacing set to 1 pixel" in n for n in cases.notes)
    with pytest.raises(ValueError, match="no usable DICOM image"):
        empty = tmp_path / "empty"
        empty.mkdir()
        load_dicom(empty)
    with pytest.raises(ValueError, match="not found"):
        load_dicom(tmp_path / "nope")


def test_echo_cines_prepared_as_echonet_for_pretraining(tmp_path):
    """``sector=True``: the ultrasound cine becomes masked 112 x 112 sector squares; the MR image is left alone."""
    from sslseg.echo.sector import find_sector, prepare_frames

    cine = tmp_path / "cine.dcm"
    shutil.copy(_data_file("examples_ybr_color.dcm"), cine)
    cases = {c.case_id: c for c in load_dataset(f"dicom:{cine}", sector=True, sector_size=112)}
    raw, spacing, meta = read_dicom(cine)
    sec = find_sector(raw, meta["us_region"])
    c = cases["cine"]
    assert c.frames.shape == (30, 112, 112) and c.frames.dtype == np.uint8
    np.testing.assert_array_equal(c.frames, prepare_frames(raw, sec, 112))
    assert c.meta["sector_box"] == list(sec.box) and 150 < sec.box[2] < 240  # the sector's depth, 187 pixels
    # the spacing follows the resize: one prepared pixel spans side / 112 original pixels
    assert c.spacing == pytest.approx((spacing[0] * sec.box[2] / 112, spacing[1] * sec.box[2] / 112))
    assert c.frames[:, :8, :8].max() == 0  # outside the sector: black, as EchoNet's mask
    (mr,) = load_dicom(_data_file("MR_small.dcm"), sector=True)
    assert mr.frames.shape[-2:] == (64, 64) and "sector_box" not in mr.meta
    # the plain reading is still the whole screen (its own cache entry)
    (plain,) = load_dicom(cine)
    assert plain.frames.shape == (30, 240, 320)
    with pytest.raises(ValueError, match="sector_size must be an integer of at least 8"):
        load_dicom(cine, sector=True, sector_size=4)
