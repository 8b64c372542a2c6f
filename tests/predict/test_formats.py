"""Inputs in their own formats; masks written back on exactly the input's grid."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from scipy.spatial.transform import Rotation

from sslseg.cli import main
from sslseg.predict.io import read_mask_video, read_study
from sslseg.predict.run import predict_file

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")
av = pytest.importorskip("av")


def _oblique_affine(zooms, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix() @ np.diag(zooms)
    a[:3, 3] = origin
    return a


def _blocks(shape_ijk) -> np.ndarray:
    """A volume whose bright block moves with the slice, so a swapped axis or slice order shows."""
    i, j, k = shape_ijk
    v = np.zeros(shape_ijk, np.float32)
    for z in range(k):
        v[2 + z : 9 + z, 3 : 8 + 2 * z, z] = 100.0
    return v


def _dicom(name: str) -> str:
    p = get_testdata_file(name, download=False)
    if p is None:
        pytest.skip(f"pydicom test file {name} is not available offline")
    return p


def test_nifti_oblique_anisotropic_round_trip(tmp_path, ckpt, threshold):
    vol = _blocks((20, 24, 5))
    affine = _oblique_affine([0.7, 1.3, 2.5], [12.5, -30.0, 7.0])
    img = nib.Nifti1Image(vol, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm")
    src = tmp_path / "scan.nii.gz"
    nib.save(img, src)

    assert main(["predict", "--model", str(ckpt), str(src), "--out", str(tmp_path / "out")]) == 0
    inp, out = nib.load(src), nib.load(tmp_path / "out" / "scan_mask.nii.gz")
    assert np.array_equal(out.affine, inp.affine)  # bit for bit
    assert out.shape == inp.shape == (20, 24, 5)
    assert out.header.get_zooms() == inp.header.get_zooms() == pytest.approx((0.7, 1.3, 2.5))
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 1)
    assert np.array_equal(out.header.get_qform(), inp.header.get_qform())
    assert out.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(out.dataobj))) <= {0, 1}

    # content: a pointwise model at native resolution gives back exactly the bright voxels, in place
    res = predict_file(threshold(tile=True), src, tmp_path / "t" / "scan")
    mask = np.asarray(nib.load(res.outputs["mask"]).dataobj)
    np.testing.assert_array_equal(mask, vol > 0)


def test_nifti_2d_and_4d_channels(tmp_path, threshold):
    img2 = np.zeros((30, 20), np.float32)
    img2[5:12, 3:9] = 50
    nib.save(nib.Nifti1Image(img2, np.diag([0.5, 0.8, 1, 1])), tmp_path / "flat.nii")
    res = predict_file(threshold(tile=True), tmp_path / "flat.nii", tmp_path / "o" / "flat")
    out = nib.load(res.outputs["mask"])
    assert out.shape == (30, 20) and res.outputs["mask"].name == "flat_mask.nii"
    np.testing.assert_array_equal(np.asarray(out.dataobj), img2 > 0)

    # 4D with the channels last (Decathlon): a 2-channel model reads both, the mask is 3D
    vol = np.stack([_blocks((16, 18, 3)), np.ones((16, 18, 3), np.float32)], axis=-1)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), tmp_path / "mm.nii.gz")
    st = read_study(tmp_path / "mm.nii.gz", channels=2)
    assert st.frames.shape == (3, 2, 18, 16)
    np.testing.assert_array_equal(st.frames[1, 0], vol[:, :, 1, 0].T)
    with pytest.raises(ValueError, match="mm.nii.gz: wrong channel count: the image has 2 channel"):
        read_study(tmp_path / "mm.nii.gz", channels=1)


@pytest.mark.parametrize("ext", [".mha", ".nrrd", ".mhd"])
def test_metaimage_origin_spacing_direction_preserved(tmp_path, ckpt, ext, threshold):
    vol = _blocks((20, 24, 5))  # (i, j, k)
    img = sitk.GetImageFromArray(vol.transpose(2, 1, 0))  # numpy (k, j, i)
    img.SetOrigin((10.0, -5.0, 3.25))
    img.SetSpacing((0.6, 0.9, 2.0))
    img.SetDirection(tuple(Rotation.from_euler("zyx", [30, 10, -20], degrees=True).as_matrix().ravel()))
    folder = tmp_path / "in"
    folder.mkdir()
    src = folder / f"heart{ext}"
    sitk.WriteImage(img, str(src))
    (folder / "notes.txt").write_text("not an image: passed over in a folder")

    # a folder input: the .mhd's .raw data file and the text file are not inputs
    assert main(["predict", "--model", str(ckpt), str(folder), "--out", str(tmp_path / "out")]) == 0
    inp = sitk.ReadImage(str(src))
    out = sitk.ReadImage(str(tmp_path / "out" / f"heart_mask{ext}"))
    assert out.GetSize() == inp.GetSize() == (20, 24, 5)
    np.testing.assert_allclose(out.GetOrigin(), inp.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(out.GetSpacing(), inp.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(out.GetDirection(), inp.GetDirection(), atol=1e-9)
    assert len(list((tmp_path / "out").glob("*_mask*"))) == (2 if ext == ".mhd" else 1)  # .mhd + its data

    res = predict_file(threshold(tile=True), src, tmp_path / "t" / "heart")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(res.outputs["mask"]))),
                                  vol.transpose(2, 1, 0) > 0)


def test_dicom_cine_grey_spacing_and_outputs(tmp_path, threshold):
    path = _dicom("examples_ybr_color.dcm")
    st = read_study(path, channels=1)
    ds = pydicom.dcmread(path)
    y = pixel_array(ds, as_rgb=False)[..., 0]
    assert st.frames.dtype == np.uint8 and st.frames.shape == (30, 240, 320)
    np.testing.assert_array_equal(st.frames, y)  # the luma plane, as in training
    # the 2D tissue region is calibrated in cm (PhysicalDeltaX/Y 0.051...): mm = 10 x
    delta = float(ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY)
    assert st.spacing == pytest.approx((10 * delta, 10 * delta))
    assert st.is_cine and st.fps and st.fps > 0
    assert read_study(path, channels=3).frames.shape == (30, 3, 240, 320)

    # threshold at (x / 255 - 0.2) / 0.2 > 0.01, i.e. grey value >= 52; tiled at native size: exact
    res = predict_file(threshold(image_size=128, tile=True), path, tmp_path / "cine")
    nii = nib.load(res.outputs["mask"])
    assert nii.shape == (320, 240, 30)
    assert nii.header.get_zooms()[:2] == pytest.approx((10 * delta, 10 * delta))
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), y >= 52)
    np.testing.assert_array_equal(read_mask_video(res.outputs["mask_video"], 2), y >= 52)
    with av.open(str(res.outputs["overlay"])) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 30
    assert res.echo is not None and res.echo["frames"] == 30 and res.echo["unit"] == "mm"
    assert res.outputs["lv_csv"].exists() and res.outputs["lv_plot"].exists()

    # PNG sequence instead of NIfTI
    res = predict_file(threshold(image_size=128, tile=True), path, tmp_path / "png" / "cine", dicom_masks="png", echo=False)
    pngs = sorted(res.outputs["mask"].glob("*.png"))
    assert len(pngs) == 30
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[7])), y[7] >= 52)


def test_dicom_patient_geometry_to_ras(tmp_path, threshold):
    path = _dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    res = predict_file(threshold(), path, tmp_path / "mr")
    aff = nib.load(res.outputs["mask"]).affine
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ps = [float(v) for v in ds.PixelSpacing]
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    # voxel (0, 0, 0) is the centre of the first pixel; one column step moves along IOP[:3] by the column spacing
    np.testing.assert_allclose(aff[:3, 3], lps_to_ras * ipp, atol=1e-4)
    np.testing.assert_allclose(aff[:3, 0], lps_to_ras * iop[:3] * ps[1], atol=1e-5)
    np.testing.assert_allclose(aff[:3, 1], lps_to_ras * iop[3:] * ps[0], atol=1e-5)
    assert "overlay" in res.outputs and res.outputs["overlay"].suffix == ".png"


def test_pictures_colour_to_grey_and_multipage(tmp_path, threshold):
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[10:30, 5:25] = (250, 200, 120)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    st = read_study(tmp_path / "colour.png", 1)
    assert st.frames.shape == (1, 40, 50)
    assert st.frames[0, 15, 10] == round(250 * 0.299 + 200 * 0.587 + 120 * 0.114)
    res = predict_file(threshold(), tmp_path / "colour.png", tmp_path / "o" / "colour")
    assert np.asarray(Image.open(res.outputs["mask"])).shape == (40, 50)
    assert res.outputs["overlay"].exists()

    pages = [Image.fromarray((np.arange(30 * 20).reshape(30, 20) % (60 + 40 * k)).astype(np.uint8)) for k in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    res = predict_file(threshold(tta=True), tmp_path / "stack.tif", tmp_path / "o" / "stack")
    with Image.open(res.outputs["mask"]) as im:
        assert im.n_frames == 3 and im.size == (20, 30)
    with Image.open(res.outputs["uncertainty"]) as im:
        assert im.n_frames == 3 and im.mode == "F"
