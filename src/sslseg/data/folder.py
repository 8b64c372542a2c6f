"""Plain folders of images and masks (``folder:PATH``), in any image format :mod:`sslseg.io` reads.

Layout (``folder:PATH``)::

    PATH/images/<name>.<ext>       images (labelled when a mask of the same name exists)
    PATH/masks/<name>.<ext>        label maps (0 background, 1, 2, ... classes;
                                   a 0/255 black-and-white mask is read as 0/1)
    PATH/unlabelled/<name>.<ext>   optional: more images, for pretraining only
    PATH/cases.csv                 optional: columns ``file`` and ``case_id`` (and ``split``)

``<ext>`` is any of PNG, JPEG, BMP, TIFF (multi-page: frames), NIfTI
(``.nii``, ``.nii.gz``), MetaImage (``.mhd``, ``.mha``), NRRD or DICOM
(``.dcm``); a mask may use another format than its image.  Without
``cases.csv`` each file is one case named after the file; with it, the files
of one ``case_id`` become the frames of one case (in the order listed) and a
``split`` column, when present, fixes the split.

Volumes are cut along ``axis`` as :mod:`sslseg.io` describes (default 2,
``k``, axial for the usual acquisitions).  Pixel spacing is ``(row mm, column
mm)`` from the header, ``(1, 1)`` for pictures.

Intensities, per case (:func:`sslseg.io.intensity.normalise_intensity`): 8-bit
data stay ``uint8``; anything else becomes ``float32`` divided by its 99.5th
percentile (``intensity="scale"``), or standardised (``"zscore"``), or left as
read (``"none"``).  When a data set mixes the two, the ``uint8`` cases are
divided by 255 so that all cases share one dtype.
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.files import PICTURES, VOLUMES, split_name
from ..io.intensity import check_intensity, normalise_intensity
from ..io.labels import as_labels, mask_dtype
from ..io.volumes import IMAGE_FILES, read_voxels, voxels_to_frames
from .cache import KeyIndex, StackMasks, cached_arrays, digest
from .paths import check_inside, entry_path
from .sample import SPLITS, Case, Cases, common_dtype

__all__ = ["IMAGE_EXTENSIONS", "check_label_values", "load_folder"]

_VERSION = 3  # 2: parts carry the slice spacing; 3: a 255 beside another mask value stays 255 (refused)
#: the image files a folder data set takes
IMAGE_EXTENSIONS = IMAGE_FILES


def _find(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        check_inside(folder.parent, p)  # a link out of the data set's folder is refused
        stem, ext = split_name(p)
        if ext in IMAGE_EXTENSIONS:
            out.setdefault(stem, p)
    return out


def read_case_csv(path: Path, known: dict[str, Path]) -> tuple[OrderedDict[str, list[str]], dict[str, str]]:
    """A folder's ``cases.csv``: image stems grouped by case, and the splits it fixes (one-line errors naming it).

    ``known`` maps the folder's image stems to their files; a row naming another
    image, a case listed under two splits or an image under two cases is refused.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first column
            reader = csv.DictReader(f)
            rows = list(reader)
            cols = reader.fieldnames or []
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:
        raise UserError(f"{path}: not a readable CSV table ({err})") from None
    missing = [c for c in ("file", "case_id") if c not in cols]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (needs file, case_id[, split])")
    groups: OrderedDict[str, list[str]] = OrderedDict()
    splits: dict[str, str] = {}
    owner: dict[str, tuple[str, int]] = {}  # file stem -> (case_id, line) that listed it first
    for n, row in enumerate(rows, start=2):
        if row.get("file") is None or row.get("case_id") is None or None in row:
            raise UserError(f"{path} line {n}: expected the {len(cols)} columns of the header ({', '.join(cols)})")
        entry_path(path.parent, row["file"], f"{path} line {n} file")  # no absolute or '..' path
        stem = split_name(row["file"])[0]
        if stem not in known:
            raise UserError(f"{path} line {n}: file {row['file']!r} is not in images/ or unlabelled/")
        if stem in owner:
            # a file in two cases could sit in train and test at once; twice in one case duplicates its frames
            cid, first = owner[stem]
            what = "listed twice for case" if cid == row["case_id"] else f"already belongs to case {cid!r}, not"
            raise UserError(f"{path} line {n}: file {row['file']!r} {what} {row['case_id']!r} (line {first})")
        owner[stem] = (row["case_id"], n)
        groups.setdefault(row["case_id"], []).append(stem)
        s = (row.get("split") or "").strip().lower()
        if s:
            if s not in SPLITS:
                raise UserError(f"{path} line {n}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            if splits.get(row["case_id"], s) != s:
                raise UserError(f"{path} line {n}: case {row['case_id']!r} is given split {s!r} here and "
                                f"{splits[row['case_id']]!r} on an earlier line")
            splits[row["case_id"]] = s
    return groups, splits


def check_label_values(cases: list[Case], labels: list[int] | None) -> None:
    """Every mask value must be a declared class: ``labels``, else ``0..K-1`` with no gap.

    A stray value (a 255 in a 0/1 mask, say) would otherwise add classes to the model.

    Raises:
        ValueError: naming the case, its mask file and the values outside the classes.
    """
    seen: dict[str, set[int]] = {}
    for c in cases:
        idx = c.labelled_indices
        if idx:
            seen[c.case_id] = {int(v) for i in idx for v in np.unique(np.asarray(c.masks[i]))}
    if not seen:
        return
    if labels is not None:
        allowed = {int(v) for v in labels} | {0}
        how = f"data.options.labels {sorted(allowed)}"
    else:
        values = set().union(*seen.values()) | {0}
        top = max(values)
        allowed = set(range(top + 1))
        if values >= allowed:
            return
        allowed = set(range(min(set(range(top + 2)) - values)))  # the classes up to the first gap
        how = f"classes 0..{max(allowed)} (declare data.options.labels if a class in between is absent)"
    for c in cases:
        bad = sorted(seen.get(c.case_id, set()) - allowed)
        if bad:
            src = (c.meta.get("mask_source") or [c.case_id])[0]
            raise UserError(f"{src}: mask value(s) {bad} outside the {how}; fix the mask")


def load_folder(
    path: str | os.PathLike,
    *,
    csv_file: str = "cases.csv",
    axis: int = 2,
    intensity: str = "scale",
    spacing: list[float] | float | None = None,
    labels: list[int] | None = None,
    cache_dir: str | None = None,
) -> list[Case]:
    """Cases from ``images/``, ``masks/`` and ``unlabelled/`` under ``path``.

    Args:
        path: the folder.
        csv_file: name (in ``path``) of the optional case table.
        axis: voxel axis along which volumes are cut into slices.
        intensity: ``"scale"``, ``"zscore"`` or ``"none"`` for non-8-bit images.
        spacing: ``[row mm, column mm]`` (or one number: square pixels) for pictures, which carry none.
        labels: the label values masks may hold (background 0 implied); default
            ``0..K-1`` with no gap, so a stray value is an error, not a class.
        cache_dir: cache folder (default ``$SSLSEG_CACHE`` or ``~/.cache/sslseg``).

    Raises:
        ValueError: no ``images/`` or ``unlabelled/`` folder, a bad case table
            (a file in two cases or listed twice, two splits for one case), a
            mask value outside the classes, or nothing usable.  Single bad files are skipped and counted.
    """
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        spacing = [spacing, spacing]  # one number: square pixels
    if spacing is not None and (not isinstance(spacing, (list, tuple)) or len(spacing) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)):
        raise UserError(f"data.options.spacing = {spacing!r} is not allowed: expected mm per pixel, one number "
                        "or [row mm, column mm]")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    images, masks, unlab = _find(root / "images"), _find(root / "masks"), _find(root / "unlabelled")
    if not images and not unlab:
        raise UserError(f"{root}: no images found in images/ or unlabelled/ (formats: {', '.join(IMAGE_EXTENSIONS)})")
    check_intensity(intensity)
    dup = sorted(set(images) & set(unlab))
    if dup:
        raise UserError(f"{root}: {dup[0]!r} is both in images/ and unlabelled/")
    skipped: list[str] = []
    notes: list[str] = []
    for stem in sorted(set(masks) - set(images)):
        skipped.append(f"{masks[stem]}: mask without an image of the same name")
    no_mask = sorted(set(images) - set(masks))
    files = {**images, **unlab}
    table = root / csv_file
    if table.is_file():
        groups, fixed = read_case_csv(table, files)
    else:
        groups = OrderedDict((s, [s]) for s in sorted(files))
        fixed = {}
    index = KeyIndex(root, cache_dir)
    cases: list[Case] = []
    for cid, stems in groups.items():
        srcs = [(files[s], masks.get(s) if s in images else None) for s in stems]
        try:
            keys = [[index.key(img), index.key(m) if m else None] for img, m in srcs]
            key = digest("folder", _VERSION, keys, axis, intensity)
            arrs = cached_arrays(key, lambda srcs=srcs, cid=cid: _build_case(srcs, cid, axis, intensity),
                                 ("frames", "masks", "parts"), cache_dir, group="folder")
        except ValueError as err:
            skipped.append(str(err))
            continue
        # parts: one row per file: row mm, column mm, number of frames, labelled (0/1), slice mm
        parts = np.asarray(arrs["parts"])
        if not np.allclose(parts[:, :2], parts[0, :2], rtol=1e-4):
            notes.append(f"case {cid!r}: its files have different spacing; the first file's is used")
        offsets = np.concatenate([[0], np.cumsum(parts[:, 2])]).astype(int)
        lab = [f for i, p in enumerate(parts) if p[3] > 0 for f in range(offsets[i], offsets[i + 1])]
        cases.append(Case(
            case_id=cid,
            frames=arrs["frames"],  # type: ignore[arg-type]
            masks=StackMasks(arrs["masks"], lab),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in (spacing or parts[0, :2])),  # type: ignore[arg-type]
            split=fixed.get(cid),
            meta={"source": [str(img) for img, _ in srcs], "mask_source": [str(m) for _, m in srcs if m]},
            volume=any(split_name(img)[1] in VOLUMES for img, _ in srcs),
            slice_spacing=float(parts[0, 4]),
            # pictures carry no pixel size: 1 pixel = 1 "mm" unless the spacing option gives it
            spacing_known=spacing is not None or not all(split_name(img)[1] in PICTURES for img, _ in srcs),
        ))
    index.save()
    if not cases:
        reason = f"; skipped: {skipped[0]}" if skipped else ""
        raise UserError(f"{root}: no usable case{reason}")
    # images without a mask that were read (a skipped one is listed with the skipped files instead)
    read = {src for c in cases for src in c.meta["source"]}
    no_mask = [s for s in no_mask if str(images[s]) in read]
    if no_mask and masks:
        notes.append(f"{len(no_mask)} image(s) in images/ have no mask (e.g. {no_mask[0]!r}); used unlabelled")
    check_label_values(cases, labels)
    cases = common_dtype(cases, notes)
    if not any(c.spacing_known for c in cases):
        notes.append("pictures carry no pixel size: spacing is 1 pixel = 1.0 'mm' "
                     "(set data.options.spacing=MM, or [ROW_MM, COL_MM])")
    return Cases(cases, skipped, notes)


def _build_case(srcs: list[tuple[Path, Path | None]], cid: str, axis: int, intensity: str) -> dict[str, np.ndarray]:
    """Read the files of one case: frames, the label stack (zeros where unlabelled) and per-file facts."""
    frames, stack, parts = [], [], []
    for img, m in srcs:
        vox, zooms = read_voxels(img)
        try:
            fr, sp = voxels_to_frames(vox, zooms, axis)
        except ValueError as err:
            raise UserError(f"{img}: {err}") from None
        if fr.ndim == 4:
            raise UserError(f"{img}: multi-channel volumes are not supported in a folder data set")
        mk = np.zeros(fr.shape, dtype=np.int64)
        if m is not None:
            mv, mz = read_voxels(m)
            try:
                mf, _ = voxels_to_frames(mv, mz, axis)
            except ValueError as err:
                raise UserError(f"{m}: {err}") from None
            if mf.shape != fr.shape:
                raise UserError(f"{m}: mask shape {tuple(mf.shape)} differs from its image's {tuple(fr.shape)}")
            mk = as_labels(mf, str(m))
        frames.append(fr)
        stack.append(mk)
        z = tuple(zooms) + (1.0,) * 3
        parts.append([sp[0], sp[1], fr.shape[0], float(m is not None), float(z[axis])])
    shapes = sorted({f.shape[1:] for f in frames})
    if len(shapes) != 1:
        raise UserError(f"case {cid!r} ({srcs[0][0].parent}): its files have different image sizes {shapes}")
    fr = normalise_intensity(np.concatenate(frames), intensity, f"{srcs[0][0]}")
    mk = np.concatenate(stack)
    return {"frames": fr, "masks": mk.astype(mask_dtype(int(mk.max(initial=0)))),
            "parts": np.array(parts, dtype=np.float64)}
