"""The one inference path: frames at their native size in, labels on the same grid out; and scoring.

:func:`segment` is what evaluation (:func:`predict_frames`, :func:`score_cases`)
and prediction (:class:`sslseg.predict.run.Predictor`) both run:

* frames resized to the training square (bilinear, antialiased, as in
  training), normalised, batched through the model; the log-probabilities
  resized back to the native grid (bilinear) before the arg-max; or
* ``tile=True``: frames at their native size, covered by sliding windows of
  ``image_size`` (a smaller dimension taken whole) with ``overlap``, blended
  with a Gaussian importance map (sigma 1/8 of the window, as nnU-Net) by
  MONAI's ``sliding_window_inference``;
* ``tta=True``: each frame and its left-right mirror in one batch, the two
  softmax maps averaged (the mirrored one flipped back); the uncertainty is
  the variance of the class probabilities over the two passes, averaged over
  classes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import Normalizer, frames_to_tensor
from ..data.sample import Case
from ..errors import UserError
from .metrics import dice_per_class, hd95_per_class, image_diagonal, overlap_counts

#: maps log-probabilities ``(B, K, h, w)`` and the TTA variance ``(B, h, w)`` (or None) to scores and
#: variance on the output grid
ToGrid = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(1)`` (the first class among equals), one class at a time.

    On the CPU, PyTorch's arg-max over the class axis of a large ``(B, K, H, W)``
    map strides through memory and took 11 s for 32 frames of 480 x 640; K
    element-wise comparisons take a fraction of a second.

    Shape:
        ``(B, K, H, W)`` -> ``(B, H, W)`` int64.
    """
    best, out = scores[:, 0], torch.zeros(scores.shape[:1] + scores.shape[2:], dtype=torch.long, device=scores.device)
    for k in range(1, scores.shape[1]):
        better = scores[:, k] > best
        out[better] = k
        best = torch.where(better, scores[:, k], best)
    return out


def tta_probabilities(model: torch.nn.Module, x: torch.Tensor, tta: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log of the mean class probabilities ``(B, K, H, W)`` and the TTA variance ``(B, H, W)`` (or None).

    Only the horizontal flip: vertical flips put the apex of an apical echo view
    at the bottom, which the model never saw.  Without TTA the first is the
    log-softmax of the logits (no exponentiation round trip) and the variance is None.
    """
    if not tta:
        return F.log_softmax(model(x).float(), dim=1), None
    b = x.shape[0]
    # (2B, C, H, W): the frames and their mirror images in one forward pass
    p = F.softmax(model(torch.cat([x, x.flip(-1)])).float(), dim=1)
    passes = torch.stack([p[:b], p[b:].flip(-1)])  # (2, B, K, H, W)
    mean = passes.mean(0)
    var = passes.var(0, unbiased=False).mean(1)  # over passes, then averaged over classes
    return mean.clamp_min(1e-12).log(), var


def tiled_probabilities(model: torch.nn.Module, x: torch.Tensor, window: int, batch_size: int,
                        overlap: float = 0.5, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities ``(B, K, H, W)`` (and the TTA variance) of normalised native-size frames.

    MONAI's ``sliding_window_inference`` with Gaussian blending (sigma 1/8 of
    the window); a dimension smaller than the window is taken whole, so nothing
    is padded.
    """
    from monai.inferers import sliding_window_inference

    h, w = x.shape[-2:]
    roi = (min(window, h), min(window, w))

    def windows(t: torch.Tensor):
        logp, var = tta_probabilities(model, t, tta)
        # the variance rides along as one more channel, blended with the same weights
        return logp.exp() if var is None else torch.cat([logp.exp(), var[:, None]], 1)

    out = sliding_window_inference(x, roi, batch_size, windows, overlap=overlap, mode="gaussian", sigma_scale=0.125)
    out = torch.as_tensor(out)  # a plain tensor, not MONAI's MetaTensor
    if tta:
        return out[:, :-1], out[:, -1]
    return out, None


def _resized_back(size: tuple[int, int]) -> ToGrid:
    def to_grid(logp: torch.Tensor, var: torch.Tensor | None):
        if tuple(logp.shape[-2:]) != size:
            logp = F.interpolate(logp, size=size, mode="bilinear", align_corners=False)
            if var is not None:
                var = F.interpolate(var[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return logp, var

    return to_grid


@torch.inference_mode()
def segment(
    model: torch.nn.Module,
    frames: np.ndarray,
    normalizer: Normalizer,
    image_size: int,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    tta: bool = False,
    tile: bool = False,
    overlap: float = 0.5,
    to_grid: ToGrid | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels for frames in the training value range, and the TTA uncertainty (see the module notes).

    Args:
        frames: ``(N, H, W)`` or ``(N, C, H, W)``, before the normaliser
            (``uint8``, or floats as the readers give them).
        batch_size: frames (or windows, when tiling) per forward pass.
        tile: sliding windows over native-size frames instead of resizing.
        to_grid: where the labels go when not tiling: maps the log-probabilities
            at ``image_size`` (and the variance) to scores on the output grid;
            default the frames' own grid (bilinear).

    Returns:
        labels ``(N, H', W')`` int64 and, with TTA, the uncertainty ``(N, H', W')`` float32 (else None).
    """
    model.eval()
    to_grid = to_grid or _resized_back(tuple(frames.shape[-2:]))
    labels, uncertainty = [], []
    for s in range(0, frames.shape[0], batch_size):
        batch = frames[s : s + batch_size]
        if tile:
            x = normalizer(frames_to_tensor(batch, None)).to(device)  # native size
            scores, var = tiled_probabilities(model, x, image_size, batch_size, overlap, tta)
        else:
            # the same operations, in the same order, as training: resize raw values, then normalise
            x = normalizer(frames_to_tensor(batch, image_size)).to(device)
            scores, var = to_grid(*tta_probabilities(model, x, tta))
        labels.append(class_argmax(scores).cpu().numpy())
        if var is not None:
            uncertainty.append(var.cpu().numpy())
    return (np.concatenate(labels).astype(np.int64),
            np.concatenate(uncertainty).astype(np.float32) if uncertainty else None)


def predict_frames(
    model: torch.nn.Module,
    frames: np.ndarray,
    normalizer: Normalizer,
    image_size: int,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Label maps ``(N, H, W)`` for frames ``(N, H, W)`` or ``(N, C, H, W)`` at their native size.

    Resized to ``image_size`` as in training, the log-probabilities resized back
    (bilinear), then arg-maxed (:func:`segment`).
    """
    return segment(model, frames, normalizer, image_size, batch_size=batch_size, device=device)[0]


CONVENTIONS = ("auto", "volume", "frame")
HD95_EMPTY = ("diagonal", "nan")


def case_convention(case: Case, convention: str = "auto") -> str:
    """``"volume"`` (3D metrics of the stacked labelled slices) or ``"frame"`` (mean of 2D frame metrics).

    ``auto``: volume for cases whose frames are slices (``Case.volume``, set
    by the readers), frame for cines and pictures.

    Raises:
        ValueError: an unknown convention, or ``volume`` asked of a cine.
    """
    if convention not in CONVENTIONS:
        raise UserError(f"evaluation convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if convention == "auto":
        return "volume" if case.volume else "frame"
    if convention == "volume" and not case.volume:
        raise UserError(f"case {case.case_id!r}: its frames run along time, not slices; "
                        "the volume convention needs slices (use frame or auto)")
    return convention


def scored_masks(case: Case) -> Mapping[int, np.ndarray]:
    """The masks that validation and test score: every labelled frame of the case.

    A reader whose option narrows the labelled frames for training (Decathlon's
    ``empty_slices``) keeps the whole label stack in ``Case.scored_masks``: a
    volume is scored whole whatever the training policy, so the same predictions
    get the same 3D Dice and HD95 under every policy.
    """
    return case.masks if case.scored_masks is None else case.scored_masks


def as_scored(case: Case) -> Case:
    """``case`` with :func:`scored_masks` as its masks (the case itself when they are the same)."""
    whole = scored_masks(case)
    return case if whole is case.masks else dataclasses.replace(case, masks=whole)


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

    The frames scored are :func:`scored_masks`: a volume whole, whatever
    empty-slice policy chose its training slices.

    Per case, ``dice``/``hd95`` are the primary scores of its convention (see
    :func:`case_convention`): for volumes the 3D Dice and 3D HD95 (mm, slice
    spacing included) of the stacked labelled slices, as the Decathlon (MSD) and
    Umapathy et al. (ISMRM 2022) report; for cines the mean over labelled frames
    of the 2D scores (the published echo numbers pool the frames instead: see
    :func:`sslseg.evaluate.metrics.pooled_dice`). ``dice_frames``/``hd95_frames``
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
        raise UserError(f"hd95_empty must be one of {', '.join(HD95_EMPTY)}, got {hd95_empty!r}")
    classes = list(range(1, num_classes))  # foreground only: background is never scored
    frame_rows: list[dict] = []
    case_rows: list[dict] = []
    for case in cases:
        masks = scored_masks(case)  # the whole volume, whatever the training's empty-slice policy
        idx = sorted(masks)
        if not idx:
            continue
        conv = case_convention(case, convention)
        pred = predict_frames(model, case.frames[idx], normalizer, image_size, device=device)
        if postprocess and any(postprocess.values()):
            pred = clean(pred, num_classes, **postprocess)
        gt = np.stack([np.asarray(masks[i]) for i in idx]).astype(np.int64)
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
                    "case_id": case.case_id, "index": i, "phase": case.phases.get(i, ""),
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
            sp3 = (case.slice_spacing or 1.0,) + sp2
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
