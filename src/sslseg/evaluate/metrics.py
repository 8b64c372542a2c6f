"""Segmentation metrics on label maps, with physical spacing (MONAI underneath).

Label maps are 2D ``(H, W)`` frames or 3D ``(S, H, W)`` volumes; ``spacing``
gives the voxel size in mm along the same axes. Only foreground classes are
scored (the caller passes ``classes``, background excluded).

Conventions (README, "How we score, and how the papers scored"):

- Dice: an empty ground truth with a non-empty prediction scores 0 (an error,
  as MONAI's ``ignore_empty=False`` and the MSD challenge count it); both empty
  is undefined (NaN: nothing to segment, nothing predicted) and left out of
  means, never silently 0 or 1. ``empty_truth="nan"`` gives the earlier
  behaviour (every empty-truth frame left out, false positives included).
- HD95: undefined when prediction or truth is empty. With ``penalty`` given,
  an undefined value with exactly one side empty becomes ``penalty`` (we use the
  image diagonal in mm, :func:`image_diagonal`, as BraTS does with 373.13 mm,
  the diagonal of its 240 x 240 x 155 mm grid); callers count how often.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from ..errors import UserError


def _onehot(label: np.ndarray | torch.Tensor, classes: list[int]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(label))
    # (H, W) or (S, H, W) -> (1, K, ...) binary maps, one per requested class
    return torch.stack([(t == c) for c in classes])[None].float()


def image_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Length in mm of the diagonal of a grid of ``shape`` voxels of size ``spacing``."""
    if len(shape) != len(spacing):
        raise UserError(f"shape {tuple(shape)} and spacing {tuple(spacing)} differ in length")
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def dice_per_class(pred: np.ndarray, gt: np.ndarray, classes: list[int], empty_truth: str = "nan") -> list[float]:
    """Dice of each class in ``classes`` between two label maps (2D or 3D, same shape).

    Args:
        empty_truth: ``"nan"``: NaN wherever the class is absent from the ground
            truth; ``"score"``: 0 when the truth is empty and the prediction is
            not (a false positive counts), NaN when both are empty.
    """
    if empty_truth not in ("nan", "score"):
        raise UserError(f"empty_truth must be 'nan' or 'score', got {empty_truth!r}")
    p, g = _onehot(pred, classes), _onehot(gt, classes)
    d = compute_dice(p, g, include_background=True, ignore_empty=empty_truth == "nan")
    out = [float(v) for v in d[0]]
    if empty_truth == "score":
        # MONAI gives 1 for an empty prediction of an empty truth: nothing to score, so undefined here
        dims = tuple(range(2, p.ndim))
        both_empty = ((p.sum(dims) + g.sum(dims)) == 0)[0]
        out = [float("nan") if both_empty[k] else v for k, v in enumerate(out)]
    return out


def dice_per_frame(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, classes: list[int]) -> np.ndarray:
    """Dice of each frame and class between batches of label maps; NaN where the class is absent from the truth.

    The selection score of validation during training: each frame on its own,
    a frame with nothing to find left out (MONAI's ``ignore_empty=True``).

    Shape:
        ``(B, H, W)`` and ``(B, H, W)`` -> ``(B, len(classes))``.
    """
    p, g = torch.as_tensor(pred), torch.as_tensor(gt)
    # (B, H, W) -> (B, K, H, W) binary maps, one per requested class
    p = torch.stack([p == c for c in classes], 1).float()
    g = torch.stack([g == c for c in classes], 1).float()
    return compute_dice(p, g, include_background=True, ignore_empty=True).numpy()


def hd95_per_class(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: list[int],
    spacing: tuple[float, ...] = (1.0, 1.0),
    penalty: float | None = None,
) -> list[float]:
    """95th-percentile symmetric Hausdorff distance (mm) for each class.

    Args:
        pred, gt: label maps ``(H, W)`` or ``(S, H, W)``.
        spacing: voxel size in mm along the same axes (``(row, column)`` or
            ``(slice, row, column)``).
        penalty: value for a class present on one side only (empty prediction
            or empty truth); None keeps NaN. Both empty is always NaN.
    """
    if len(spacing) != np.asarray(gt).ndim:
        raise UserError(f"spacing {tuple(spacing)} does not match a {np.asarray(gt).ndim}D label map")
    p, g = _onehot(pred, classes), _onehot(gt, classes)
    out = []
    for k in range(len(classes)):
        ep, eg = bool(p[0, k].sum() == 0), bool(g[0, k].sum() == 0)
        if ep or eg:
            out.append(float(penalty) if penalty is not None and ep != eg else float("nan"))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(
                p[:, k : k + 1], g[:, k : k + 1], include_background=True, percentile=95,
                spacing=[float(s) for s in spacing],
            )
        out.append(float(hd[0, 0]))
    return out


def overlap_counts(pred: np.ndarray, gt: np.ndarray, classes: list[int]) -> tuple[int, int]:
    """``(sum |P & G|, sum |P| + |G|)`` over ``classes``: the terms of a pooled Dice.

    EchoNet-Dynamic (Ouyang et al., Nature 2020) reports the Dice of a whole
    split pooled over its frames: ``2 * sum(intersection) / sum(|P| + |G|)``.
    """
    p, g = np.asarray(pred), np.asarray(gt)
    inter = total = 0
    for c in classes:
        pc, gc = p == c, g == c
        inter += int(np.count_nonzero(pc & gc))
        total += int(np.count_nonzero(pc)) + int(np.count_nonzero(gc))
    return inter, total


def pooled_dice(rows: list[dict]) -> float:
    """Pooled Dice, ``2 * sum(overlap) / sum(total)``, over rows carrying ``overlap`` and ``total`` (e.g. the
    results.csv rows of one run's test set); NaN when ``total`` sums to 0.

    The definition published echo numbers use: EchoNet-Dynamic pools its whole test split;
    contrastive-echo's ``dice_coeff`` pools each batch of 128 test frames and averages the batches,
    which is this over a test set of up to 128 frames. A mean of per-frame Dice weighs a small
    ventricle as much as a large one and is lower.
    """
    inter = sum(float(r["overlap"]) for r in rows)
    total = sum(float(r["total"]) for r in rows)
    return 2 * inter / total if total > 0 else float("nan")
