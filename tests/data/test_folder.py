"""Plain folders: images/ + masks/ (+ unlabelled/, cases.csv) in every supported format."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.data import get_testdata_file

from sslseg.cli import main
from sslseg.data.folder import load_folder
from sslseg.data.registry import load_dataset
from sslseg.io.files import split_name
from sslseg.io.pictures import luma
from sslseg.io.volumes import read_voxels, voxels_to_frames


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)


def png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_split_name_and_luma():
    assert split_name("a/b/x.nii.gz") == ("x", ".nii.gz")
    assert split_name("Y.PNG") == ("Y", ".png")
    assert luma(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)).tolist() == [[76, 150, 29]]


def test_pictures_masks_unlabelled_and_skips(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (20, 24), dtype=np.uint8)
    png(tmp_path / "images" / "a.png", a)
    png(tmp_path / "masks" / "a.png", disc(20, 24, 10, 12, 5) * 255)  # black/white mask
    rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    png(tmp_path / "images" / "colour.png", rgb)
    png(tmp_path / "masks" / "colour.png", disc(20, 24, 8, 8, 4) * 2)  # class 2
    pages = [rng.integers(0, 255, (20, 24), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(pages[0]).save(tmp_path / "images" / "cine.tif", save_all=True, append_images=[Image.fromarray(p) for p in pages[1:]])
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "masks" / "cine.tif", save_all=True,
                                                        append_images=[Image.fromarray(disc(20, 24, 10, 10, 3)) for _ in range(2)])
    png(tmp_path / "images" / "wrong.png", a)
    png(tmp_path / "masks" / "wrong.png", np.zeros((10, 10), np.uint8))
    png(tmp_path / "masks" / "orphan.png", np.zeros((20, 24), np.uint8))
    png(tmp_path / "unlabelled" / "u.png", a)
    cases = load_folder(tmp_path)
    by = {c.case_id: c for c in cases}
    assert sorted(by) == ["a", "cine", "colour", "u"]
    np.testing.assert_array_equal(by["a"].frames[0], a)
    assert by["a"].frames.dtype == np.uint8 and by["a"].spacing == (1.0, 1.0)
    np.testing.assert_array_equal(by["a"].masks[0], disc(20, 24, 10, 12, 5))  # 255 -> 1
    np.testing.assert_array_equal(by["colour"].frames[0], luma(rgb))
    assert by["colour"].masks[0].max() == 2 and by["colour"].masks[0].dtype == np.int64
    assert by["cine"].num_frames == 3 and by["cine"].labelled_indices == [0, 1, 2]
    np.testing.assert_array_equal(by["cine"].frames[2], pages[2])
    assert len(by["u"].masks) == 0
    skipped = "\n".join(cases.skipped)
    assert "orphan.png: mask without an image" in skipped
    assert "wrong.png: mask shape (1, 10, 10) differs from its image's (1, 20, 24)" in skipped
    assert any("pictures carry no pixel size" in n for n in cases.notes)
    assert not any(c.spacing_known for c in cases)  # 1 pixel = 1 "mm" is not a spacing the checkpoint records


def test_volumes_in_mixed_formats_share_one_orientation(tmp_path):
    rng = np.random.default_rng(1)
    vox = rng.uniform(0, 100, (12, 10, 5)).astype(np.float32)  # (i, j, k)
    lab = np.zeros((12, 10, 5), np.uint8)
    lab[2:6, 3:9, 1:4] = 1
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    nib.save(nib.Nifti1Image(vox, np.diag([0.5, 0.8, 2.0, 1.0])), str(tmp_path / "images" / "v.nii.gz"))
    m = sitk.GetImageFromArray(lab.transpose(2, 1, 0))  # SimpleITK arrays are (k, j, i)
    m.SetSpacing((0.5, 0.8, 2.0))
    sitk.WriteImage(m, str(tmp_path / "masks" / "v.mha"))
    (c,) = load_folder(tmp_path, intensity="none")
    assert c.frames.shape == (5, 10, 12) and c.spacing == pytest.approx((0.8, 0.5))
    np.testing.assert_allclose(c.frames[2], vox[:, :, 2].T)
    np.testing.assert_array_equal(c.masks[2], lab[:, :, 2].T)  # NIfTI image, MetaImage mask: aligned
    assert c.volume
    (s,) = load_folder(tmp_path)  # default: divided by the 99.5th percentile
    np.testing.assert_allclose(s.frames[2], vox[:, :, 2].T / np.percentile(vox, 99.5), rtol=1e-5)


def test_voxels_to_frames_axes():
    vox = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    f, sp = voxels_to_frames(vox, (1.0, 2.0, 3.0), axis=1)
    assert f.shape == (3, 4, 2) and sp == (3.0, 1.0)
    np.testing.assert_array_equal(f[1], vox[:, 1, :].T)


def test_case_table_groups_files_and_fixes_splits(tmp_path):
    for i in range(4):
        png(tmp_path / "images" / f"f{i}.png", np.full((8, 8), 10 * i, np.uint8))
        png(tmp_path / "masks" / f"f{i}.png", disc(8, 8, 4, 4, 1 + i % 3))
    (tmp_path / "cases.csv").write_text("file,case_id,split\nf0.png,p1,train\nf1.png,p1,train\nf2.png,p2,test\nf3.png,p2,test\n")
    cases = load_dataset(f"folder:{tmp_path}")
    assert [(c.case_id, c.num_frames, c.split) for c in cases] == [("p1", 2, "train"), ("p2", 2, "test")]
    assert cases[1].frames[1][0, 0] == 30
    (tmp_path / "cases.csv").write_text("file,case\nf0.png,p1\n")
    with pytest.raises(ValueError, match=r"cases\.csv: missing column\(s\) case_id"):
        load_folder(tmp_path)
    (tmp_path / "cases.csv").write_text("file,case_id\nnope.png,p1\n")
    with pytest.raises(ValueError, match=r"cases\.csv line 2: file 'nope.png'"):
        load_folder(tmp_path)


def test_dicom_image_with_png_mask_and_nan_volume(tmp_path):
    (tmp_path / "images").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "images" / "mr.dcm")
    png(tmp_path / "masks" / "mr.png", disc(64, 64, 30, 30, 10))
    bad = np.ones((6, 6, 2), np.float32)
    bad[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(tmp_path / "images" / "bad.nii"))
    cases = load_folder(tmp_path)
    assert [c.case_id for c in cases] == ["mr"]
    assert cases[0].spacing == (0.3125, 0.3125) and cases[0].frames.dtype == np.float32
    assert "bad.nii: 1 NaN or Inf value(s)" in "\n".join(cases.skipped)


def test_errors_and_export(tmp_path, capsys):
    out = tmp_path / "out"  # beside the data set: an export inside it is refused (tests/test_refusals.py)
    tmp_path = tmp_path / "data"
    tmp_path.mkdir()
    with pytest.raises(ValueError, match="no images found"):
        load_folder(tmp_path)
    with pytest.raises(ValueError, match="unknown image format"):
        read_voxels(Path(__file__))
    png(tmp_path / "images" / "a.png", np.zeros((16, 16), np.uint8))
    png(tmp_path / "masks" / "a.png", disc(16, 16, 8, 8, 4))
    with pytest.raises(ValueError, match="unknown option 'axes'"):
        load_dataset(f"folder:{tmp_path}", axes=1)
    assert main(["data", f"folder:{tmp_path}", "--export", str(out), "--image-size", "8"]) == 0
    text = capsys.readouterr().out
    assert "cases: 1" in text and "classes (pixel fraction in labelled frames): 0: " in text
    assert Image.open(out / "masks" / "a_0000.png").size == (8, 8)


def _two_labelled(tmp_path, mask_b=None):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        png(tmp_path / "images" / f"{name}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    png(tmp_path / "masks" / "a.png", disc(16, 16, 8, 8, 4))
    png(tmp_path / "masks" / "b.png", disc(16, 16, 8, 8, 3) if mask_b is None else mask_b)


@pytest.mark.parametrize("rows, message", [
    ("file,case_id\na.png,p1\na.png,p2\n", r"line 3: file 'a.png' already belongs to case 'p1', not 'p2' \(line 2\)"),
    ("file,case_id\na.png,p1\nb.png,p1\na.png,p1\n", r"line 4: file 'a.png' listed twice for case 'p1' \(line 2\)"),
    ("file,case_id,split\na.png,p1,train\nb.png,p1,test\n", r"line 3: case 'p1' is given split 'test' here and 'train'"),
])
def test_case_table_overlap_and_duplicates_are_errors(tmp_path, rows, message):
    _two_labelled(tmp_path)
    (tmp_path / "cases.csv").write_text(rows)
    with pytest.raises(ValueError, match=message):
        load_folder(tmp_path)


def test_stray_mask_value_is_an_error_not_a_class(tmp_path):
    m = disc(16, 16, 8, 8, 3)
    m[0, 0] = 255  # one stray pixel in a 0/1 mask
    _two_labelled(tmp_path, m)
    with pytest.raises(ValueError, match=r"b.png: mask value\(s\) \[255\] outside the classes 0..1"):
        load_folder(tmp_path)
    assert {c.case_id for c in load_folder(tmp_path, labels=[0, 1, 255])} == {"a", "b"}  # declared: accepted


def test_declared_labels_refuse_other_values(tmp_path):
    _two_labelled(tmp_path, disc(16, 16, 8, 8, 3) * 2)
    with pytest.raises(ValueError, match=r"b.png: mask value\(s\) \[2\] outside the data.options.labels \[0, 1\]"):
        load_folder(tmp_path, labels=[1])


def test_bad_case_table_exits_2_with_one_line(tmp_path, capsys):
    _two_labelled(tmp_path)
    (tmp_path / "cases.csv").write_text("file,case_id\na.png,p1\na.png,p2\n")
    assert main(["data", f"folder:{tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already belongs to case 'p1'" in err


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b.replace(b"ElementDataFile = LOCAL", b"ElementDataFile = LO"), "ElementDataFile"),
    (lambda b: b[:-10], "truncated MetaImage"),
    (lambda b: b.replace(b"DimSize = 5 6 2", b"DimSize = 5 6"), "DimSize"),
    (lambda b: b.replace(b"ElementType = MET_UCHAR", b"ElementType = MET_UCHAK"), "ElementType"),
])
def test_damaged_metaimage_header_is_refused_before_simpleitk(tmp_path, damage, needle):
    # a damaged .mha header can abort SimpleITK's reader (found by benchmarks/fuzz_inputs.py); it is checked first
    import SimpleITK as sitk

    from sslseg.io.volumes import check_metaimage, read_voxels

    good = tmp_path / "v.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(60, dtype=np.uint8).reshape(2, 6, 5)), str(good))
    assert b"DimSize = 5 6 2" in good.read_bytes() and b"ElementType = MET_UCHAR" in good.read_bytes()
    check_metaimage(good)  # the intact file passes and reads
    assert read_voxels(good)[0].shape == (5, 6, 2)
    bad = tmp_path / "bad.mha"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(ValueError, match=needle) as err:
        read_voxels(bad)
    assert str(bad) in str(err.value)
