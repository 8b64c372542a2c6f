"""NIfTI writing: frames go back to the voxel layout the readers cut them from."""

from __future__ import annotations

import numpy as np
import pytest

from sslseg.io.volumes import read_nifti, read_voxels, voxels_to_frames, write_nifti

nib = pytest.importorskip("nibabel")


@pytest.mark.parametrize("shape", [(3, 5, 7), (3, 2, 5, 7)])
def test_frames_round_trip_with_their_spacing(tmp_path, shape):
    frames = np.random.default_rng(0).random(shape).astype(np.float32)
    affine = np.diag([0.7, 0.9, 2.5, 1.0])  # column mm, row mm, slice mm
    path = write_nifti(tmp_path / "v.nii.gz", frames, affine)
    img, _ = read_nifti(path)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)
    vox, zooms = read_voxels(path)
    back, spacing = voxels_to_frames(vox, zooms, axis=2)
    np.testing.assert_array_equal(back, frames)
    assert spacing == pytest.approx((0.9, 0.7))


def test_like_keeps_the_input_grid_bit_for_bit(tmp_path):
    affine = np.array([[0.0, -0.8, 0.1, 10.0], [0.9, 0.0, 0.0, -4.0], [0.0, 0.1, 2.0, 3.0], [0, 0, 0, 1]])
    src = nib.Nifti1Image(np.zeros((6, 4, 3, 1), np.int16), affine)
    src.set_qform(affine, code=1)
    src.header.set_slope_inter(2.0, 5.0)
    nib.save(src, tmp_path / "in.nii")
    img, vox = read_nifti(tmp_path / "in.nii")
    labels = np.random.default_rng(1).integers(0, 3, (3, 4, 6)).astype(np.uint8)  # (k, j, i)
    out = nib.load(write_nifti(tmp_path / "out.nii", labels, like=img))
    assert out.shape == (6, 4, 3, 1)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj)[..., 0], labels.transpose(2, 1, 0))
    assert np.array_equal(out.header.get_qform(), img.header.get_qform())
    assert np.array_equal(out.affine, img.affine)
