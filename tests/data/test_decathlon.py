"""Decathlon reader: a Task05-like task written here, 4D NIfTI images (modality last)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sslseg.data.decathlon import load_decathlon, select_empty
from sslseg.data.registry import load_dataset

X, Y, Z = 12, 10, 8
ZOOMS = (0.6, 0.7, 3.6)


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 1000, (X, Y, Z, 2)).astype(np.float32)
    img[..., 1] *= 3  # ADC on another scale
    lab = np.zeros((X, Y, Z), np.uint8)
    lab[3:9, 2:8, 2:6] = 2  # TZ
    lab[3:9, 6:8, 2:6] = 1  # PZ behind it
    return img, lab


def save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*ZOOMS, 1.0])), str(path))


def make_task(root: Path, n: int = 3, extra: list | None = None) -> dict:
    vols = {}
    training = []
    for i in range(n):
        img, lab = volume(i)
        save(root / "imagesTr" / f"prostate_{i:02d}.nii.gz", img)
        save(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", lab)
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
        vols[f"prostate_{i:02d}"] = (img, lab)
    save(root / "imagesTs" / "prostate_90.nii.gz", volume(90)[0])
    spec = {
        "name": "PROSTATE", "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": n, "training": training + (extra or []), "test": ["./imagesTs/prostate_90.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return vols


@pytest.fixture
def task(tmp_path):
    root = tmp_path / "Task05_Prostate"
    return root, make_task(root)


def test_slices_spacing_and_modality(task):
    root, vols = task
    cases = load_decathlon(root, modality="T2")
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_01", "prostate_02"]
    c = cases[0]
    img, lab = vols["prostate_00"]
    assert c.frames.dtype == np.float32 and c.frames.shape == (Z, Y, X)
    t2 = img[..., 0]
    expect = t2.transpose(2, 1, 0) / np.percentile(np.abs(t2), 99.5)  # slice k, rows j, columns i
    np.testing.assert_allclose(np.asarray(c.frames), expect, rtol=1e-5)
    assert c.spacing == pytest.approx((0.7, 0.6))
    assert c.split is None and c.volume and c.meta["label_names"] == {0: "background", 1: "PZ", 2: "TZ"}
    assert c.modality == "MR" and c.channels == ("T2",)  # the channel chosen, by its dataset.json name
    assert c.labelled_indices == list(range(Z))
    np.testing.assert_array_equal(c.masks[3], lab[:, :, 3].T.astype(np.int64))
    assert c.masks[3].dtype == np.int64


def test_all_modalities_become_channels(task):
    root, vols = task
    c = load_decathlon(root)[1]
    assert c.frames.shape == (Z, 2, Y, X)
    adc = vols["prostate_01"][0][..., 1]
    np.testing.assert_allclose(c.frames[4][1], adc[:, :, 4].T / np.percentile(adc, 99.5), rtol=1e-5)
    c = load_decathlon(root, modality=["ADC"])[1]
    assert c.frames.shape == (Z, Y, X)


def test_merge_labels_and_empty_slice_policy(task):
    root, _ = task
    c = load_decathlon(root, modality="T2", merge={"1": 1, "2": 1}, empty_slices="drop")[0]
    assert c.labelled_indices == [2, 3, 4, 5]  # foreground slices only
    assert set(np.unique(c.masks[2])) == {0, 1}
    assert c.meta["label_names"] == {0: "background", 1: "PZ+TZ"}
    assert c.num_frames == Z  # dropped slices stay available for pretraining
    c = load_decathlon(root, modality="T2", empty_slices=0.5)[0]
    assert len(c.labelled_indices) == 4 + 2 and {2, 3, 4, 5} <= set(c.labelled_indices)


def test_select_empty():
    fg = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    assert select_empty(fg, "keep") == list(range(10))
    assert select_empty(fg, "drop") == [2, 3, 4, 5]
    # 4 of the 6 background-only slices [0, 1, 6, 7, 8, 9], evenly spaced: positions 0, 2, 3, 5
    assert select_empty(fg, 1.0) == [0, 2, 3, 4, 5, 6, 7, 9]
    assert select_empty(fg, 0) == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="empty_slices"):
        select_empty(fg, "some")


def test_other_axis(task):
    root, vols = task
    c = load_decathlon(root, modality=0, axis=0)[0]
    t2 = vols["prostate_00"][0][..., 0]
    assert c.frames.shape == (X, Z, Y)  # slices along i: rows k, columns j
    assert c.spacing == pytest.approx((3.6, 0.7))
    np.testing.assert_allclose(c.frames[5], t2[5].T / np.percentile(t2, 99.5), rtol=1e-5)


def test_bad_cases_are_skipped_and_counted(tmp_path):
    root = tmp_path / "Task"
    img, lab = volume(7)
    save(root / "imagesTr" / "p_shape.nii.gz", img)
    save(root / "labelsTr" / "p_shape.nii.gz", lab[:, :, :4])
    nan = img.copy()
    nan[1, 1, 1, 0] = np.nan
    save(root / "imagesTr" / "p_nan.nii.gz", nan)
    save(root / "labelsTr" / "p_nan.nii.gz", lab)
    extra = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"}
             for n in ("p_shape", "p_nan", "p_missing")]
    make_task(root, n=1, extra=extra)
    cases = load_decathlon(root, modality="T2", include_test=True)
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_90"]
    assert len(cases[1].masks) == 0  # a test image: unlabelled, for pretraining
    skipped = "\n".join(cases.skipped)
    assert "p_shape.nii.gz: label shape (12, 10, 4) differs from image shape (12, 10, 8)" in skipped
    assert "p_nan.nii.gz: 1 NaN or Inf value(s)" in skipped
    assert "p_missing.nii.gz: image listed in dataset.json not found" in skipped
    assert len(cases.skipped) == 3


def test_label_value_outside_dataset_json_is_an_error(tmp_path):
    # a stray 255 would make a 256-class model; it stops the load instead of being skipped
    root = tmp_path / "Task"
    img, lab = volume(7)
    bad_label = lab.copy()
    bad_label[0, 0, 0] = 255
    save(root / "imagesTr" / "p_bad_label.nii.gz", img)
    save(root / "labelsTr" / "p_bad_label.nii.gz", bad_label)
    make_task(root, n=1, extra=[{"image": "./imagesTr/p_bad_label.nii.gz", "label": "./labelsTr/p_bad_label.nii.gz"}])
    with pytest.raises(ValueError, match=r"p_bad_label.nii.gz: label value\(s\) \[255\] not listed in dataset.json"):
        load_decathlon(root, modality="T2")


def test_slice_spacing_recorded(task):
    c = load_decathlon(task[0], modality="T2")[0]
    assert c.slice_spacing == pytest.approx(ZOOMS[2])


def test_errors(tmp_path, task):
    root, _ = task
    with pytest.raises(ValueError, match="modality 'DWI' is not listed; choose one of T2, ADC"):
        load_decathlon(root, modality="DWI")
    with pytest.raises(ValueError, match=r"dataset\.json: file not found"):
        load_decathlon(tmp_path)
    with pytest.raises(ValueError, match="merge: label 4 is not in dataset.json labels"):
        load_decathlon(root, merge={4: 1})
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_decathlon(root)
    empty = tmp_path / "Empty"
    empty.mkdir()
    (empty / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="no usable case"):
        load_decathlon(empty)


def test_registry_spec(task):
    root, _ = task
    cases = load_dataset(f"decathlon:{root}", modality="T2", merge={1: 1, 2: 1})
    assert len(cases) == 3 and max(int(m.max()) for c in cases for m in c.masks.values()) == 1
