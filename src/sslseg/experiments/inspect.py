"""``sslseg data``: what is in a data set, and the frames exactly as the model sees them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..data.batches import frames_to_tensor, masks_to_tensor
from ..data.sample import Case


def summarise(spec: str, cases: list[Case]) -> str:
    n_frames = sum(c.num_frames for c in cases)
    n_lab = sum(len(c.masks) for c in cases)
    splits = Counter(c.split for c in cases)
    counts: Counter = Counter()
    total_px = 0
    for c in cases:
        for m in c.masks.values():
            vals, cnt = np.unique(m, return_counts=True)
            counts.update(dict(zip(vals.tolist(), cnt.tolist())))
            total_px += m.size
    sp = np.array([c.spacing for c in cases], dtype=float)
    shapes = Counter(c.image_shape for c in cases)
    lines = [
        f"data set: {spec}",
        f"cases: {len(cases)} ({', '.join(f'{k} {splits.get(k, 0)}' for k in ('train', 'val', 'test'))})",
        f"frames/slices: {n_frames} (all usable for pretraining), labelled: {n_lab} "
        f"in {sum(1 for c in cases if c.masks)} cases",
        f"image sizes: {', '.join(f'{h}x{w} ({n})' for (h, w), n in shapes.most_common(5))}",
        f"spacing (mm): rows {sp[:, 0].min():.3f}-{sp[:, 0].max():.3f}, columns {sp[:, 1].min():.3f}-{sp[:, 1].max():.3f}",
        "classes (pixel fraction in labelled frames): "
        + ", ".join(f"{k}: {v / max(1, total_px):.3f}" for k, v in sorted(counts.items())),
    ]
    skipped = [s for c in cases[:1] for s in c.meta.get("dataset_skipped", [])]
    if skipped:
        lines.append(f"skipped: {len(skipped)} ({skipped[0]})")
    return "\n".join(lines)


def export_dataset(cases: list[Case], out_dir: str | Path, image_size: int) -> int:
    """Write each labelled frame (resized as for the model) as ``images/<case>_<frame>.png`` and ``masks/...png`` at model size."""
    from PIL import Image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n = 0
    for c in cases:
        for i in c.labelled_indices:
            img = frames_to_tensor(c.frames[i][None], image_size)[0, 0].numpy()
            lo, hi = float(img.min()), float(img.max())
            img8 = ((img - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
            m = masks_to_tensor(c.masks[i][None], image_size)[0].numpy().astype(np.uint8)
            # images min-max scaled to 0..255; masks keep their label values (0, 1, 2, ...)
            Image.fromarray(img8).save(out / "images" / f"{c.case_id}_{i:04d}.png")
            Image.fromarray(m).save(out / "masks" / f"{c.case_id}_{i:04d}.png")
            n += 1
    return n
