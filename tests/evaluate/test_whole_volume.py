"""A test volume is scored whole, whatever empty-slice policy shaped the training slices."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from sslseg.data.batches import Normalizer
from sslseg.data.decathlon import load_decathlon
from sslseg.evaluate.inference import as_scored, score_cases, scored_masks

X, Y, Z = 12, 10, 8
ZOOMS = (0.6, 0.7, 3.6)


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def task(tmp_path):
    """One Decathlon volume: foreground (6 x 6 voxels) on slices 2..5 of 8, background elsewhere."""
    root = tmp_path / "Task"
    img = np.random.default_rng(0).uniform(0, 1000, (X, Y, Z)).astype(np.float32)
    lab = np.zeros((X, Y, Z), np.uint8)
    lab[3:9, 2:8, 2:6] = 1
    for sub, arr in (("imagesTr", img), ("labelsTr", lab)):
        (root / sub).mkdir(parents=True)
        nib.save(nib.Nifti1Image(arr, np.diag([*ZOOMS, 1.0])), str(root / sub / "p_00.nii.gz"))
    spec = {"labels": {"0": "background", "1": "fg"},
            "training": [{"image": "./imagesTr/p_00.nii.gz", "label": "./labelsTr/p_00.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


class Constant(torch.nn.Module):
    """Foreground everywhere: the same prediction whatever the frames."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1] = 1.0
        return logits


@pytest.mark.parametrize("policy", ["drop", 0.5])
def test_policy_does_not_change_the_test_score(task, policy):
    def score(p):
        case = load_decathlon(task, empty_slices=p)[0]
        case.split = "test"
        return case, score_cases(Constant(), [case], Normalizer(0.0, 1.0, 1.0), 16, 2)[1][0]

    keep_case, keep = score("keep")
    case, other = score(policy)
    print(f"keep: dice {keep['dice']:.3f} hd95 {keep['hd95']:.1f} frames {keep['frames']}; "
          f"{policy}: dice {other['dice']:.3f} hd95 {other['hd95']:.1f} frames {other['frames']}")
    # the policy still shapes the labelled (training) slices ...
    assert len(case.labelled_indices) < Z == len(keep_case.labelled_indices)
    # ... but the test scores the whole volume: 144 foreground voxels, 960 predicted
    assert keep["dice"] == pytest.approx(2 * 144 / (960 + 144))
    assert other["frames"] == keep["frames"] == Z
    assert other["dice"] == pytest.approx(keep["dice"])
    assert other["hd95"] == pytest.approx(keep["hd95"])
    assert sorted(scored_masks(case)) == list(range(Z))


def test_validation_sees_the_whole_volume_and_training_the_policy(task):
    case = load_decathlon(task, empty_slices="drop")[0]
    assert case.labelled_indices == [2, 3, 4, 5]
    whole = as_scored(case)
    assert whole.labelled_indices == list(range(Z))
    assert case.labelled_indices == [2, 3, 4, 5]  # the training case is left as it was
    np.testing.assert_array_equal(whole.masks[3], case.masks[3])
    assert not whole.masks[0].any()
    keep = load_decathlon(task)[0]
    assert as_scored(keep) is keep and keep.scored_masks is None
