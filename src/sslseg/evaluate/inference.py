"""Batched inference at the training resolution, mapped back to the native grid."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import Normalizer, frames_to_tensor
from ..data.sample import Case
from .metrics import dice_per_class, hd95_per_class, image_diagonal, overlap_counts


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


CONVENTIONS = ("auto", "volume", "frame")
HD95_EMPTY = ("diagonal", "nan")


def case_convention(case: Case, convention: str = "auto") -> str:
    """``"volume"`` (3D metrics of the stacked labelled slices) or ``"frame"`` (mean of 2D frame metrics).

    ``auto``: volume for cases whose frames are slices (``meta["volume"]``, set
    by the readers), frame for cines and pictures.

    Raises:
        ValueError: an unknown convention, or ``volume`` asked of a cine.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"evaluation convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    is_volume = bool(case.meta.get("volume"))
    if convention == "auto":
        return "volume" if is_volume else "frame"
    if convention == "volume" and not is_volume:
        raise ValueError(f"case {case.case_id!r}: its frames run along time, not slices; "
                         "the volume convention needs slices (use frame or auto)")
    return convention


def _nanmean(values: list[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def score_cases(
    model: torch.nn.Module,
    cases: list[Case],
    normalizer: Normalizer,
    image_size: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    convention: str = "auto",
    hd95_empty: str = "diagonal",
    postprocess: dict | None = None,
) -> tuple[list[dict], list[dict]]:
    """Score every labelled case: rows per (frame, foreground class) and one row per case.

    Per case, ``dice``/``hd95`` are the primary scores of its convention (see
    :func:`case_convention`): for volumes the 3D Dice and 3D HD95 (mm, slice
    spacing included) of the stacked labelled slices, as the Decathlon (MSD) and
    Umapathy et al. (ISMRM 2022) report; for cines the mean over labelled frames
    of the 2D scores, as contrastive-echo reports. ``dice_frames``/``hd95_frames``
    are the per-frame means (for every case), ``dice_pooled`` EchoNet's pooled
    Dice over the case's frames, ``overlap``/``total`` its terms (pool them over
    cases with :func:`sslseg.evaluate.metrics.pooled_dice`).

    Args:
        convention: ``auto``, ``volume`` or ``frame``.
        hd95_empty: ``diagonal``: an HD95 with exactly one side empty becomes the
            image diagonal in mm and is counted in ``hd95_penalised``; ``nan``:
            it stays undefined and is left out of the means (counted in
            ``hd95_undefined`` either way).
        postprocess: keyword arguments of :func:`sslseg.evaluate.postprocess.postprocess`
            (``largest_component``, ``fill_holes``) applied to the predictions before
            scoring; None: raw predictions, as the papers score.

    Returns:
        ``(frame_rows, case_rows)``.
    """
    from .postprocess import postprocess as clean

    if hd95_empty not in HD95_EMPTY:
        raise ValueError(f"hd95_empty must be one of {', '.join(HD95_EMPTY)}, got {hd95_empty!r}")
    classes = list(range(1, num_classes))  # foreground only: background is never scored
    frame_rows: list[dict] = []
    case_rows: list[dict] = []
    for case in cases:
        idx = case.labelled_indices
        if not idx:
            continue
        conv = case_convention(case, convention)
        pred = predict_frames(model, case.frames[idx], normalizer, image_size, device=device)
        if postprocess and any(postprocess.values()):
            pred = clean(pred, num_classes, **postprocess)
        gt = np.stack([np.asarray(case.masks[i]) for i in idx]).astype(np.int64)
        phases = case.meta.get("phase", {})
        sp2 = tuple(float(s) for s in case.spacing)
        diag2 = image_diagonal(gt.shape[1:], sp2)
        rows = []
        for j, i in enumerate(idx):
            pen = diag2 if hd95_empty == "diagonal" else None
            dices = dice_per_class(pred[j], gt[j], classes, empty_truth="score")
            hds = hd95_per_class(pred[j], gt[j], classes, sp2, penalty=pen)
            for c, d, hd in zip(classes, dices, hds, strict=True):
                p_empty, g_empty = not (pred[j] == c).any(), not (gt[j] == c).any()
                inter, total = overlap_counts(pred[j], gt[j], [c])
                rows.append({
                    "case_id": case.case_id, "index": i, "phase": phases.get(i, phases.get(str(i), "")),
                    "class": c, "dice": d, "hd95": hd, "truth_empty": int(g_empty), "pred_empty": int(p_empty),
                    "hd95_undefined": int(p_empty != g_empty), "hd95_penalised": int(p_empty != g_empty and pen is not None),
                    "overlap": inter, "total": total,
                })
        frame_rows.extend(rows)
        inter = sum(r["overlap"] for r in rows)
        total = sum(r["total"] for r in rows)
        row = {
            "case_id": case.case_id,
            "convention": conv,
            "dice_frames": _nanmean([r["dice"] for r in rows]),
            "hd95_frames": _nanmean([r["hd95"] for r in rows]),
            "dice_pooled": 2 * inter / total if total else float("nan"),
            "overlap": inter,
            "total": total,
            "frames": len(idx),
            "empty_truth_fp": sum(1 for r in rows if r["truth_empty"] and not r["pred_empty"]),
        }
        if conv == "volume":
            slice_mm = case.meta.get("slice_spacing")
            sp3 = (float(slice_mm) if slice_mm else 1.0,) + sp2
            pen3 = image_diagonal(gt.shape, sp3) if hd95_empty == "diagonal" else None
            d3 = dice_per_class(pred, gt, classes, empty_truth="score")
            h3 = hd95_per_class(pred, gt, classes, sp3, penalty=pen3)
            undefined = sum(1 for c in classes if (pred == c).any() != (gt == c).any())
            row.update(dice=_nanmean(d3), hd95=_nanmean(h3), hd95_undefined=undefined,
                       hd95_penalised=undefined if pen3 is not None else 0)
        else:
            row.update(dice=row["dice_frames"], hd95=row["hd95_frames"],
                       hd95_undefined=sum(r["hd95_undefined"] for r in rows),
                       hd95_penalised=sum(r["hd95_penalised"] for r in rows))
        case_rows.append(row)
    return frame_rows, case_rows


def evaluate_cases(
    model: torch.nn.Module,
    cases: list[Case],
    normalizer: Normalizer,
    image_size: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    postprocess: dict | None = None,
) -> list[dict]:
    """Per labelled frame and foreground class: Dice and HD95 (mm), on the native grid (see :func:`score_cases`)."""
    return score_cases(model, cases, normalizer, image_size, num_classes, device, postprocess=postprocess)[0]


def per_case(rows: list[dict]) -> list[dict]:
    """Average frame/class rows into one row per case (NaN-aware): the per-frame convention."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["case_id"], []).append(r)
    out = []
    for cid, rs in by.items():
        out.append(
            {
                "case_id": cid,
                "dice": _nanmean([r["dice"] for r in rs]),
                "hd95": _nanmean([r["hd95"] for r in rs]),
                "frames": len({r["index"] for r in rs}),
                "hd95_undefined": sum(int(r.get("hd95_undefined", math.isnan(r["hd95"]))) for r in rs),
            }
        )
    return out
