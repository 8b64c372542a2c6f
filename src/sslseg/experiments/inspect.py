"""``sslseg data``: what is in a data set, and the frames exactly as the model sees them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..data.batches import frames_to_tensor, masks_to_tensor
from ..data.sample import Case, Cases
from ..io.tables import write_table
from ..io.volumes import write_nifti

_MAX_LISTED = 8  # skipped items printed one per line; the rest are counted


def _class_fractions(cases: list[Case]) -> tuple[dict[int, float], int]:
    """Pixel fraction of every label value over all labelled frames, and the number of frames."""
    counts = np.zeros(0, dtype=np.int64)
    total, n = 0, 0
    for c in cases:
        for m in c.masks.values():
            b = np.bincount(np.asarray(m).ravel().astype(np.int64))
            if b.size > counts.size:
                counts = np.pad(counts, (0, b.size - counts.size))
            counts[: b.size] += b
            total += m.size
            n += 1
    return {int(k): counts[k] / max(1, total) for k in np.flatnonzero(counts)}, n


def summarise(spec: str, cases: Cases) -> str:
    """A few lines on a loaded data set: cases, frames, labels, classes, splits, spacing, skips, notes."""
    n_frames = sum(c.num_frames for c in cases)
    n_lab = sum(len(c.masks) for c in cases)
    splits = Counter(c.split for c in cases)
    sources = sorted({str(c.meta["split_source"]) for c in cases if c.meta.get("split_source")})
    fractions, _ = _class_fractions(cases)
    names: dict[int, str] = {}
    for c in cases:
        for k, v in (c.meta.get("label_names") or {}).items():
            names.setdefault(int(k), str(v))
    sp = np.array([c.spacing for c in cases], dtype=float)
    shapes = Counter(c.image_shape for c in cases)
    channels = Counter(1 if c.frames.ndim == 3 else int(c.frames.shape[1]) for c in cases)
    dtypes = Counter(str(np.dtype(c.frames.dtype)) for c in cases)
    kind = "slices" if all(c.volume for c in cases) else "frames"
    split_how = f"from the data set ({', '.join(sources)})" if sources else "drawn per case (seeded)"
    lines = [
        f"data set: {spec}",
        f"cases: {len(cases)} ({', '.join(f'{k} {splits.get(k, 0)}' for k in ('train', 'val', 'test'))}); splits {split_how}",
        f"{kind}: {n_frames} (all usable for pretraining), labelled: {n_lab} in {sum(1 for c in cases if c.masks)} cases",
        f"image sizes: {', '.join(f'{h}x{w} ({n})' for (h, w), n in shapes.most_common(5))}"
        + (f" and {len(shapes) - 5} more" if len(shapes) > 5 else "")
        + f"; channels: {', '.join(f'{k} ({n})' for k, n in sorted(channels.items()))}"
        + f"; stored as {', '.join(sorted(dtypes))}",
        f"spacing (mm): rows {sp[:, 0].min():.3f}-{sp[:, 0].max():.3f}, columns {sp[:, 1].min():.3f}-{sp[:, 1].max():.3f}",
        "classes (pixel fraction in labelled frames): "
        + (", ".join(f"{k} {names[k]}: {v:.3f}" if k in names else f"{k}: {v:.3f}" for k, v in sorted(fractions.items()))
           or "none (no labelled frame)"),
    ]
    skipped = cases.skipped
    if skipped:
        lines.append(f"skipped: {len(skipped)} item(s)")
        lines += [f"  - {s}" for s in skipped[:_MAX_LISTED]]
        if len(skipped) > _MAX_LISTED:
            lines.append(f"  ... and {len(skipped) - _MAX_LISTED} more")
    else:
        lines.append("skipped: none")
    for note in cases.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    # images min-max scaled to 0..255 for viewing; masks keep their label values (0, 1, 2, ...)
    lo, hi = float(img.min()), float(img.max())
    return ((img - lo) / (hi - lo + 1e-8) * 255).round().astype(np.uint8)


def export_dataset(cases: list[Case], out_dir: str | Path, image_size: int) -> int:
    """Write every labelled frame resized as for the model, and its mask.

    2D data: ``images/<case>_<frame>.png`` (min-max scaled to 0..255; one file
    per channel, ``_c<k>``, for multi-channel frames) and ``masks/<case>_<frame>.png``
    (label values).  Volumes (``Case.volume``): ``images/<case>.nii.gz`` and
    ``masks/<case>.nii.gz`` holding the labelled slices in order, as resized for
    the model (float32 values before the data set's mean/std normalisation),
    with the resized pixel size.  ``index.csv`` lists every exported frame.

    Returns:
        the number of labelled frames written.
    """
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    n = 0
    for c in cases:
        idx = c.labelled_indices
        if not idx:
            continue
        phase = c.phases
        h, w = c.image_shape
        if c.volume:
            imgs = frames_to_tensor(np.stack([c.frames[i] for i in idx]), image_size).numpy()
            masks = masks_to_tensor(np.stack([c.masks[i] for i in idx]), image_size).numpy()
            imgs = imgs[:, 0] if imgs.shape[1] == 1 else imgs
            sp = (c.spacing[0] * h / image_size, c.spacing[1] * w / image_size, c.slice_spacing or 1.0)
            affine = np.diag([sp[1], sp[0], sp[2], 1.0])  # voxels (i = column, j = row, k = slice)
            write_nifti(out / "images" / f"{c.case_id}.nii.gz", imgs.astype(np.float32), affine)
            write_nifti(out / "masks" / f"{c.case_id}.nii.gz", masks.astype(np.int16), affine)
            for k, i in enumerate(idx):
                rows.append({"case_id": c.case_id, "frame": i, "file": f"{c.case_id}.nii.gz", "slice": k,
                             "split": c.split or "", "phase": phase.get(i, "")})
            n += len(idx)
            continue
        for i in idx:
            img = frames_to_tensor(c.frames[i][None], image_size)[0].numpy()  # (C, S, S)
            m = masks_to_tensor(c.masks[i][None], image_size)[0].numpy().astype(np.uint8)
            name = f"{c.case_id}_{i:04d}"
            if img.shape[0] == 1:
                Image.fromarray(_to_uint8(img[0])).save(out / "images" / f"{name}.png")
            else:
                for k in range(img.shape[0]):
                    Image.fromarray(_to_uint8(img[k])).save(out / "images" / f"{name}_c{k}.png")
            Image.fromarray(m).save(out / "masks" / f"{name}.png")
            rows.append({"case_id": c.case_id, "frame": i, "file": f"{name}.png", "slice": "",
                         "split": c.split or "", "phase": phase.get(i, "")})
            n += 1
    write_table(out / "index.csv", rows, ["case_id", "frame", "file", "slice", "split", "phase"])
    return n
