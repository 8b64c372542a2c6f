"""The report's side-by-side predictions: every method of a sweep on the same test frames.

Reads finished run folders (``runs/<run>/checkpoint.pt``, ``per_frame.csv``) by the names the caller gives
(the ``run`` of each row); it knows nothing of how a sweep names or plans its runs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..engine.trained import open_trained
from ..evaluate.inference import predict_frames
from ..io.files import atomic_write


def comparison_path(out: Path, runs: list[dict]) -> Path:
    """Where :func:`save_comparison` writes the frames of a data set and arch: ``DIR/examples/<...>.npz``."""
    r = runs[0]
    prefix = f"{r['data']}_" if r.get("data") else ""
    return out / "examples" / f"{prefix}{r['arch']}.npz"


def save_comparison(out: Path, runs: list[dict], cases, postprocess: dict | None = None) -> Path | None:
    """Every method's prediction on the same frames, for the report's side-by-side overlays.

    At the smallest budget and the first seed, the labelled test frames are
    ranked by random init's Dice (its ``per_frame.csv``; the first method's when
    there is no random init) and the best, median and worst are kept. Each finished
    run at that budget and seed, and the supervised baseline, predicts them; each
    prediction is stored with that frame's own Dice (mean over the classes present
    in the ground truth), post-processed as the sweep scores.

    Args:
        out: the sweep folder.
        runs: the planned runs of one data set and arch (:func:`sslseg.experiments.sweep_plan.plan` rows with
            ``data``, ``run``: the run's folder under ``out/runs``).
        cases: that data set's cases.
        postprocess: :func:`sslseg.evaluate.postprocess.postprocess` keywords, or None.

    Returns:
        The ``.npz`` written, or None when no run at that budget has finished.
    """
    from ..evaluate.metrics import dice_per_class
    from ..evaluate.postprocess import postprocess as clean

    finetune = [r for r in runs if r["kind"] == "finetune"]
    if not finetune:
        return None
    k0, s0 = min(r["k"] for r in finetune), finetune[0]["seed"]
    cols = [r for r in finetune if r["k"] == k0 and r["seed"] == s0]
    cols = sorted(cols, key=lambda r: r["method"] != "none")  # random init first
    cols += [r for r in runs if r["kind"] == "baseline" and r["seed"] == s0]
    cols = [r for r in cols if (out / "runs" / r["run"] / "done.json").exists()]
    ref_csv = out / "runs" / cols[0]["run"] / "per_frame.csv" if cols else None
    if ref_csv is None or not ref_csv.exists():
        return None
    frame_dice: dict[tuple[str, int], list[float]] = {}
    for row in csv.DictReader(open(ref_csv, newline="")):
        frame_dice.setdefault((row["case_id"], int(row["index"])), []).append(float(row["dice"]))
    scored = sorted((float(np.nanmean(v)), key) for key, v in frame_dice.items() if not np.isnan(v).all())
    if not scored:
        return None
    picks = {"worst": scored[0][1], "median": scored[len(scored) // 2][1], "best": scored[-1][1]}
    rows = [(name, key) for name, key in (("best", picks["best"]), ("median", picks["median"]),
                                          ("worst", picks["worst"]))]
    rows = [rk for i, rk in enumerate(rows) if rk[1] not in [k for _, k in rows[:i]]]  # distinct frames only
    ref_name = "random init" if cols[0]["method"] == "none" else cols[0]["method"]
    labels = []
    for r in cols:
        name = {"none": "random init", "supervised": f"supervised (all {r['k']})"}.get(r["method"], r["method"])
        labels.append(name)
    by_id = {c.case_id: c for c in cases}
    arrays: dict[str, np.ndarray] = {"rows": np.array([f"{n} for {ref_name}" for n, _ in rows]),
                                     "columns": np.array(labels)}
    for i, (_, (case_id, idx)) in enumerate(rows):
        case = by_id[case_id]
        frame = np.asarray(case.frames[idx : idx + 1])
        arrays[f"image_{i}"] = (frame[0] if frame.ndim == 3 else frame[0, 0]).astype(np.float32)
        arrays[f"gt_{i}"] = np.asarray(case.masks[idx]).astype(np.uint8)
        arrays[f"info_{i}"] = np.array([case_id, str(idx)])
    for j, r in enumerate(cols):
        trained = open_trained(out / "runs" / r["run"] / "checkpoint.pt")
        num_classes = trained.num_classes
        for i, (_, (case_id, idx)) in enumerate(rows):
            frame = np.asarray(by_id[case_id].frames[idx : idx + 1])
            pred = predict_frames(trained.model, frame, trained.normalizer, trained.image_size)
            if postprocess and any(postprocess.values()):
                pred = clean(pred, num_classes, **postprocess)
            gt = arrays[f"gt_{i}"]
            d = dice_per_class(pred[0], gt, list(range(1, num_classes)))
            arrays[f"pred_{i}_{j}"] = pred[0].astype(np.uint8)
            arrays[f"dice_{i}_{j}"] = np.array(np.nanmean(d) if not np.isnan(d).all() else np.nan)
    path = comparison_path(out, runs)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path
