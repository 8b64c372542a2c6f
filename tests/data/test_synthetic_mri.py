"""Synthetic prostate MRI: determinism, labels, geometry, Rician noise, export as NIfTI."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from sslseg.cli import main
from sslseg.data.registry import load_dataset
from sslseg.data.synthetic_mri import make_mri_case, synthetic_mri

S, SIZE = 20, 40


@pytest.fixture(scope="module")
def cases():
    return synthetic_mri(num_cases=4, seed=2, num_slices=S, size=SIZE)


def test_shapes_dtypes_and_labels(cases):
    for c in cases:
        assert c.frames.dtype == np.float32 and c.frames.shape == (S, SIZE, SIZE)
        assert np.isfinite(c.frames).all() and c.frames.min() >= 0
        assert c.labelled_indices == list(range(S))  # per-slice labels, every slice
        assert all(m.dtype == np.int64 and set(np.unique(m)) <= {0, 1, 2} for m in c.masks.values())
        assert c.spacing[0] == c.spacing[1] and 120 / SIZE <= c.spacing[0] <= 150 / SIZE
        assert c.volume and c.meta["label_names"] == {0: "background", 1: "PZ", 2: "TZ"}
        fg = [int(c.masks[s].any()) for s in range(S)]
        assert fg[0] == 0 and fg[-1] == 0 and sum(fg) >= 3  # the gland ends inside the volume


def test_deterministic_and_independent_of_num_cases(cases):
    again = make_mri_case(1, seed=2, num_slices=S, size=SIZE)
    np.testing.assert_array_equal(again.frames, cases[1].frames)
    np.testing.assert_array_equal(again.masks[5], cases[1].masks[5])
    other = make_mri_case(1, seed=3, num_slices=S, size=SIZE)
    assert not np.array_equal(other.frames, cases[1].frames)


def test_zones_pz_behind_tz_and_cases_vary(cases):
    for c in cases:
        mid = max(range(S), key=lambda s: int(c.masks[s].astype(bool).sum()))
        m = c.masks[mid]
        assert (m == 1).any() and (m == 2).any()
        rows = np.arange(SIZE)[:, None] * np.ones((1, SIZE))
        # rows run anterior -> posterior: the peripheral zone lies behind the transition zone
        assert rows[m == 1].mean() > rows[m == 2].mean()
        # the organ sits inside brighter-than-air tissue
        assert c.frames[mid][m > 0].mean() > 5 * c.frames[mid][:3, :3].mean()
    vols = [sum(int(c.masks[s].astype(bool).sum()) for s in range(S)) * c.spacing[0] ** 2 * c.meta["slice_thickness"]
            for c in cases]
    assert max(vols) / min(vols) > 1.1  # varied size (mm3)
    centres = [np.argwhere(np.stack([c.masks[s] for s in range(S)]) > 0).mean(0) for c in cases]
    assert np.ptp(np.array(centres), axis=0).max() > 1.0  # varied position
    assert len({round(c.meta["pz_tz_contrast"], 3) for c in cases}) == len(cases)  # varied contrast


def test_air_is_rayleigh_distributed():
    """Magnitude of complex Gaussian noise with zero signal: mean/std = sqrt(pi / (4 - pi))."""
    vals = []
    for i in range(3):
        c = make_mri_case(i, seed=0, num_slices=6, size=64)
        f = np.asarray(c.frames)
        for sl in (np.s_[:, :6, :6], np.s_[:, :6, -6:], np.s_[:, -6:, :6], np.s_[:, -6:, -6:]):
            vals.append(f[sl].ravel() / f[sl].std())  # per case: sigma differs
    v = np.concatenate([x / x.mean() for x in vals])
    ratio = v.mean() / v.std()
    assert ratio == pytest.approx(math.sqrt(math.pi / (4 - math.pi)), rel=0.08)


def test_spec_summary_and_nifti_export(tmp_path, capsys):
    cases = load_dataset("synthetic-mri", num_cases=2, num_slices=6, size=32)
    assert len(cases) == 2
    with pytest.raises(ValueError, match="unknown option 'slices'; valid options: num_cases"):
        load_dataset("synthetic-mri", slices=3)
    out = tmp_path / "exp"
    assert main(["data", "synthetic-mri", "--export", str(out), "--image-size", "24", "--set", "options.num_cases=3",
                 "--set", "options.num_slices=6", "--set", "options.size=32"]) == 0
    text = capsys.readouterr().out
    assert "slices: 18" in text and "1 PZ" in text and "2 TZ" in text
    img = nib.load(str(out / "images" / "synth_mri_0000.nii.gz"))
    lab = nib.load(str(out / "masks" / "synth_mri_0000.nii.gz"))
    assert img.shape == (24, 24, 6) and lab.shape == (24, 24, 6)
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2}
    c = load_dataset("synthetic-mri", num_cases=1, num_slices=6, size=32)[0]
    assert img.header.get_zooms()[0] == pytest.approx(c.spacing[1] * 32 / 24, rel=1e-4)
