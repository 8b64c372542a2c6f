"""Post-processing: largest connected component per class and hole filling (MONAI), checked against scipy."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from sslseg.evaluate import inference
from sslseg.evaluate.postprocess import parse_steps, postprocess

pytest.importorskip("skimage")

FULL = np.ones((3, 3), bool)  # 8-connectivity, MONAI's default in 2D


def test_speck_removed_hole_filled_by_hand():
    m = np.zeros((8, 8), np.int64)
    m[1:6, 1:6] = 1
    m[3, 3] = 0  # a hole inside the class
    m[7, 7] = 1  # a speck, e.g. along an echo sector's edge
    out = postprocess(m, 2)
    want = np.zeros((8, 8), np.int64)
    want[1:6, 1:6] = 1
    assert np.array_equal(out, want)
    assert m[3, 3] == 0 and m[7, 7] == 1  # the input is left as it was
    only_lcc = postprocess(m, 2, fill_holes=False)
    assert only_lcc[7, 7] == 0 and only_lcc[3, 3] == 0
    only_fill = postprocess(m, 2, largest_component=False)
    assert only_fill[7, 7] == 1 and only_fill[3, 3] == 1


def _scipy_reference(m: np.ndarray, num_classes: int) -> np.ndarray:
    """Largest 8-connected component of each class on its own, then each class's enclosed holes filled."""
    out = m.copy()
    for k in range(1, num_classes):
        lab, n = ndimage.label(m == k, structure=FULL)
        if n > 1:
            sizes = ndimage.sum(np.ones_like(lab), lab, index=range(1, n + 1))
            assert (sizes == sizes.max()).sum() == 1, "two largest components: a tie either may break"
            out[(lab > 0) & (lab != 1 + int(np.argmax(sizes)))] = 0
    filled = out.copy()
    for k in range(1, num_classes):
        holes = ndimage.binary_fill_holes(out == k, structure=FULL) & (out == 0)
        # MONAI fills a background region only when a single class encloses it
        lab, n = ndimage.label(holes, structure=FULL)
        for j in range(1, n + 1):
            ring = ndimage.binary_dilation(lab == j, structure=FULL) & ~(lab == j)
            if set(np.unique(out[ring])) == {k}:
                filled[lab == j] = k
    return filled


@pytest.mark.parametrize("seed", range(1, 5))  # seed 0 draws two largest components of equal size
def test_agrees_with_scipy_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    # blobs of two classes with specks and holes: smoothed noise thresholded twice
    field = ndimage.gaussian_filter(rng.normal(size=(40, 40)), 2.5)
    m = np.zeros((40, 40), np.int64)
    m[field > 0.05] = 1
    m[field > 0.15] = 2
    m[rng.random((40, 40)) < 0.03] = 0  # holes
    assert np.array_equal(postprocess(m, 3), _scipy_reference(m, 3))


def test_leading_dimensions_tensors_and_empty_maps():
    rng = np.random.default_rng(0)
    maps = (rng.random((2, 3, 16, 16)) < 0.3).astype(np.int64)
    out = postprocess(maps, 2)
    assert out.shape == maps.shape and out.dtype == maps.dtype
    for i in range(2):
        for j in range(3):
            assert np.array_equal(out[i, j], postprocess(maps[i, j], 2))  # each map on its own
    t = postprocess(torch.as_tensor(maps), 2)
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.as_tensor(out))
    assert not postprocess(np.zeros((4, 4), np.int64), 2).any()
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        postprocess(np.zeros(5, np.int64), 2)


@pytest.mark.parametrize("value, want", [
    ("none", (False, False)), (None, (False, False)), ([], (False, False)), ("all", (True, True)),
    (True, (True, True)), ("largest_component", (True, False)), ("largest_component,fill_holes", (True, True)),
    (["fill_holes"], (False, True)),
])
def test_parse_steps(value, want):
    got = parse_steps(value)
    assert (got["largest_component"], got["fill_holes"]) == want


def test_parse_steps_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown step 'lcc'; choose from none, all, largest_component"):
        parse_steps("lcc")


def test_evaluation_scores_the_cleaned_prediction(monkeypatch, tiny_cases):
    """A prediction equal to the truth plus a far speck: raw Dice < 1 and HD95 > 0; cleaned, a perfect score."""
    case = tiny_cases[0]

    def predict(model, frames, normalizer, image_size, device="cpu"):
        out = []
        for f in frames:
            i = next(j for j in case.labelled_indices if np.array_equal(case.frames[j], f))
            m = case.masks[i].copy()
            m[0:2, 0:2] = 1  # a speck in the corner
            out.append(m)
        return np.stack(out)

    monkeypatch.setattr(inference, "predict_frames", predict)
    raw = inference.score_cases(None, [case], None, 32, 2)[0]
    clean = inference.score_cases(None, [case], None, 32, 2, postprocess=parse_steps("all"))[0]
    assert all(r["dice"] < 1 and r["hd95"] > 0 for r in raw)
    assert all(r["dice"] == pytest.approx(1.0) and r["hd95"] == pytest.approx(0.0) for r in clean)
