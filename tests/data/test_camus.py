"""CAMUS reader: one patient written in both releases (MetaImage via SimpleITK, NIfTI via nibabel)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from sslseg.data.cache import MappedArray
from sslseg.data.camus import load_camus, read_cfg
from sslseg.data.registry import load_dataset

T = 6
# per view: (rows, columns), spacing (row mm, column mm), ED and ES frame (0-based)
VIEW = {"4CH": ((24, 20), (0.15, 0.3), 0, 4), "2CH": ((20, 16), (0.3, 0.6), 1, 5)}


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def labels_for(shape: tuple[int, int], t: int) -> np.ndarray:
    """LV cavity (1) inside a myocardium ring (2), the atrium (3) below; the LV shrinks with t."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    r = ((yy - h * 0.4) / (h * 0.3 - t * 0.5)) ** 2 + ((xx - w / 2) / (w * 0.25)) ** 2
    lab = np.zeros(shape, np.uint8)
    lab[r < 1.6] = 2
    lab[r < 1.0] = 1
    lab[(((yy - h * 0.85) / (h * 0.12)) ** 2 + ((xx - w / 2) / (w * 0.2)) ** 2) < 1] = 3
    return lab


def view_data(view: str, seed: int) -> dict:
    shape, spacing, ed, es = VIEW[view]
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, 256, (T,) + shape, dtype=np.uint8)
    gts = np.stack([labels_for(shape, t) for t in range(T)])
    return {"seq": seq, "gt": gts, "spacing": spacing, "ed": ed, "es": es}


def write_mhd(path: Path, arr: np.ndarray, spacing: tuple[float, float]) -> None:
    img = sitk.GetImageFromArray(arr if arr.ndim == 3 else arr[None])  # (z, rows, columns)
    img.SetSpacing((spacing[1], spacing[0], 1.0))  # x = columns, y = rows
    sitk.WriteImage(img, str(path))


def write_nii(path: Path, arr: np.ndarray, spacing: tuple[float, float]) -> None:
    # NIfTI voxel order (i = columns, j = rows[, t]), as SimpleITK writes CAMUS
    vox = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.T
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vox), np.diag([spacing[1], spacing[0], 1.0, 1.0])), str(path))


def write_patient(root: Path, pid: str, release: str, data: dict[str, dict], gt: bool = True) -> Path:
    d = root / pid
    d.mkdir(parents=True)
    for view, v in data.items():
        b = f"{pid}_{view}"
        ed, es, sp = v["ed"], v["es"], v["spacing"]
        if release == "mhd":
            write_mhd(d / f"{b}_sequence.mhd", v["seq"], sp)
            for ph, i in (("ED", ed), ("ES", es)):
                write_mhd(d / f"{b}_{ph}.mhd", v["seq"][i], sp)
                if gt:
                    write_mhd(d / f"{b}_{ph}_gt.mhd", v["gt"][i], sp)
            (d / f"Info_{view}.cfg").write_text(
                f"ED: {ed + 1}\nES: {es + 1}\nNbFrame: {T}\nSex: F\nAge: 61\nImageQuality: Good\n"
                f"LVedv: 101.5\nLVesv: 40.2\nLVef: 60.4\n")
        else:  # the NIfTI release: the half sequence runs from ED to ES
            half = slice(ed, es + 1)
            write_nii(d / f"{b}_half_sequence.nii.gz", v["seq"][half], sp)
            if gt:
                write_nii(d / f"{b}_half_sequence_gt.nii.gz", v["gt"][half], sp)
            for ph, i in (("ED", ed), ("ES", es)):
                write_nii(d / f"{b}_{ph}.nii.gz", v["seq"][i], sp)
                if gt:
                    write_nii(d / f"{b}_{ph}_gt.nii.gz", v["gt"][i], sp)
            (d / f"Info_{view}.cfg").write_text(
                f"ED: {ed + 1}\nES: {es + 1}\nNbFrame: {es - ed + 1}\nSex: F\nAge: 61\nImageQuality: Medium\n"
                f"EF: 60.4\nFrameRate: 25.0\n")
    return d


@pytest.fixture
def data():
    return {"4CH": view_data("4CH", 0), "2CH": view_data("2CH", 1)}


def test_metaimage_release(tmp_path, data):
    write_patient(tmp_path / "training", "patient0001", "mhd", data)
    (c,) = load_camus(tmp_path, labels="all")
    v = data["4CH"]
    assert c.case_id == "patient0001" and c.split is None
    assert isinstance(c.frames, MappedArray) and c.frames.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(c.frames), v["seq"])  # rows and columns as written
    assert c.spacing == pytest.approx(v["spacing"])
    assert c.phases == {0: "ED", 4: "ES"}
    assert c.labelled_indices == [0, 4]
    np.testing.assert_array_equal(c.masks[4], v["gt"][4].astype(np.int64))
    assert c.masks[4].dtype == np.int64
    assert c.meta["image_quality"] == "Good" and c.meta["ef"] == 60.4 and c.meta["edv"] == 101.5
    assert c.meta["cfg"]["4CH"]["NbFrame"] == T
    (lv,) = load_camus(tmp_path, labels="lv")
    np.testing.assert_array_equal(lv.masks[0], (v["gt"][0] == 1).astype(np.int64))


def test_nifti_release_reads_the_same_pixels(tmp_path, data):
    write_patient(tmp_path / "database_nifti", "patient0001", "nifti", data)
    (c,) = load_camus(tmp_path / "database_nifti", labels="all")
    v = data["4CH"]
    np.testing.assert_array_equal(np.asarray(c.frames), v["seq"][0:5])
    assert c.spacing == pytest.approx(v["spacing"])
    assert c.phases == {0: "ED", 4: "ES"}
    np.testing.assert_array_equal(c.masks[0], v["gt"][0])
    assert c.meta["image_quality"] == "Medium" and c.meta["ef"] == 60.4
    (every,) = load_camus(tmp_path, labelled="all", labels="all")
    assert every.labelled_indices == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(every.masks[2], v["gt"][2])


def test_both_views_one_case_per_patient(tmp_path, data):
    write_patient(tmp_path, "patient0001", "mhd", data)
    (c,) = load_camus(tmp_path, views="both")
    two, four = data["2CH"], data["4CH"]
    assert c.meta["views"] == {"2CH": (0, T), "4CH": (T, 2 * T)}
    assert c.spacing == pytest.approx(two["spacing"])  # the 2CH pixel size
    assert c.image_shape == (20, 16)
    np.testing.assert_array_equal(np.asarray(c.frames[:T]), two["seq"])
    assert c.phases == {1: "ED", 5: "ES", T + 0: "ED", T + 4: "ES"}
    # the 4CH view, resampled by (0.15/0.3, 0.3/0.6) = 0.5: its LV keeps its area in mm2
    area_mm2 = (four["gt"][0] == 1).sum() * 0.15 * 0.3
    res = c.masks[T].sum() * 0.3 * 0.6
    assert res == pytest.approx(area_mm2, rel=0.25)
    assert c.frames[T][12:].max() == 0  # below the 12 resampled rows: canvas


def test_patient_without_ground_truth_is_unlabelled(tmp_path, data):
    write_patient(tmp_path / "testing", "patient0451", "mhd", {"4CH": data["4CH"]}, gt=False)
    (c,) = load_camus(tmp_path)
    assert len(c.masks) == 0
    assert c.num_frames == T and c.phases == {0: "ED", 4: "ES"}


def test_bad_labels_and_shapes_are_counted_skips(tmp_path, data):
    write_patient(tmp_path, "patient0001", "mhd", {"4CH": data["4CH"]})
    bad = dict(data["4CH"], gt=data["4CH"]["gt"].copy())
    bad["gt"][0][0, 0] = 7
    write_patient(tmp_path, "patient0002", "mhd", {"4CH": bad})
    d = write_patient(tmp_path, "patient0003", "mhd", {"4CH": data["4CH"]})
    write_mhd(d / "patient0003_4CH_ES_gt.mhd", np.zeros((5, 5), np.uint8), (0.15, 0.3))
    cases = load_camus(tmp_path)
    assert [c.case_id for c in cases] == ["patient0001"]
    skipped = cases.skipped
    assert len(skipped) == 2
    assert "patient0002" in skipped[0] and "patient0002_4CH_ED_gt.mhd: label value(s) [7]" in skipped[0]
    assert "patient0003" in skipped[1] and "mask size" in skipped[1]


def test_errors(tmp_path, data):
    with pytest.raises(ValueError, match="no patientXXXX folder"):
        load_camus(tmp_path)
    write_patient(tmp_path, "patient0001", "mhd", {"4CH": data["4CH"]})
    with pytest.raises(ValueError, match="views must be"):
        load_camus(tmp_path, views="3CH")
    with pytest.raises(ValueError, match="no usable CAMUS patient"):
        load_camus(tmp_path, views="2CH")  # this patient has no 2CH files
    with pytest.raises(ValueError, match="unknown option 'view'"):
        load_dataset(f"camus:{tmp_path}", view="4CH")
    assert len(load_dataset(f"camus:{tmp_path}", views="4CH")) == 1


def test_read_cfg(tmp_path):
    p = tmp_path / "Info_2CH.cfg"
    p.write_text("ED: 1\nES: 14\nImageQuality: Poor\nLVef: 55.5\n")
    assert read_cfg(p) == {"ED": 1, "ES": 14, "ImageQuality": "Poor", "LVef": 55.5}
