"""Segmentation metrics on label maps, with physical spacing (MONAI underneath).

Undefined values (an empty ground truth, or an empty prediction for a surface
distance) are NaN and counted by the caller, never silently 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance


def _onehot(label: np.ndarray | torch.Tensor, classes: list[int]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(label))
    # (H, W) -> (1, K, H, W) binary maps, one per requested class
    return torch.stack([(t == c) for c in classes])[None].float()


def dice_per_class(pred: np.ndarray, gt: np.ndarray, classes: list[int]) -> list[float]:
    """Dice of each class in ``classes`` between two label maps ``(H, W)``.

    NaN where the class is absent from the ground truth.
    """
    p, g = _onehot(pred, classes), _onehot(gt, classes)
    d = compute_dice(p, g, include_background=True, ignore_empty=True)
    return [float(v) for v in d[0]]


def hd95_per_class(
    pred: np.ndarray, gt: np.ndarray, classes: list[int], spacing: tuple[float, float] = (1.0, 1.0)
) -> list[float]:
    """95th-percentile symmetric Hausdorff distance (mm) for each class.

    ``spacing`` is the pixel size ``(row, column)`` in mm. NaN where either the
    prediction or the ground truth of a class is empty.
    """
    p, g = _onehot(pred, classes), _onehot(gt, classes)
    out = []
    for k in range(len(classes)):
        if p[0, k].sum() == 0 or g[0, k].sum() == 0:
            out.append(float("nan"))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(
                p[:, k : k + 1], g[:, k : k + 1], include_background=True, percentile=95,
                spacing=[float(s) for s in spacing],
            )
        out.append(float(hd[0, 0]))
    return out
