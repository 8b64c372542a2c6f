"""Batched inference at the training resolution, mapped back to the native grid."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import Normalizer, frames_to_tensor
from ..data.sample import Case
from .metrics import dice_per_class, hd95_per_class


@torch.inference_mode()
def predict_frames(
    model: torch.nn.Module,
    frames: np.ndarray,
    normalizer: Normalizer,
    image_size: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Label maps ``(N, H, W)`` for frames ``(N, H, W)`` or ``(N, C, H, W)`` at their native size.

    Frames are resized to ``image_size`` (as in training), the logits resized
    back to the native size (bilinear), then arg-maxed.
    """
    model.eval()
    h, w = frames.shape[-2:]
    out = []
    for s in range(0, frames.shape[0], batch_size):
        x = normalizer(frames_to_tensor(frames[s : s + batch_size], image_size)).to(device)
        logits = model(x)
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        out.append(logits.argmax(1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


def evaluate_cases(
    model: torch.nn.Module,
    cases: list[Case],
    normalizer: Normalizer,
    image_size: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    postprocess: dict | None = None,
) -> list[dict]:
    """Per labelled frame and foreground class: Dice and HD95 (mm), on the native grid.

    ``postprocess``: keyword arguments of :func:`sslseg.evaluate.postprocess.postprocess`
    (``largest_component``, ``fill_holes``) applied to the predictions before scoring; None = raw.
    """
    from .postprocess import postprocess as clean

    rows = []
    classes = list(range(1, num_classes))
    for case in cases:
        idx = case.labelled_indices
        if not idx:
            continue
        pred = predict_frames(model, case.frames[idx], normalizer, image_size, device=device)
        if postprocess and any(postprocess.values()):
            pred = clean(pred, num_classes, **postprocess)
        phases = case.meta.get("phase", {})
        for j, i in enumerate(idx):
            gt = case.masks[i]
            dices = dice_per_class(pred[j], gt, classes)
            hds = hd95_per_class(pred[j], gt, classes, case.spacing)
            for c, d, hd in zip(classes, dices, hds, strict=True):
                rows.append(
                    {
                        "case_id": case.case_id,
                        "index": i,
                        "phase": phases.get(i, phases.get(str(i), "")),
                        "class": c,
                        "dice": d,
                        "hd95": hd,
                    }
                )
    return rows


def per_case(rows: list[dict]) -> list[dict]:
    """Average frame/class rows into one row per case (NaN-aware); counts undefined values."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["case_id"], []).append(r)
    out = []
    for cid, rs in by.items():
        d = [r["dice"] for r in rs if not math.isnan(r["dice"])]
        h = [r["hd95"] for r in rs if not math.isnan(r["hd95"])]
        out.append(
            {
                "case_id": cid,
                "dice": float(np.mean(d)) if d else float("nan"),
                "hd95": float(np.mean(h)) if h else float("nan"),
                "frames": len({r["index"] for r in rs}),
                "hd95_undefined": len(rs) - len(h),
            }
        )
    return out
