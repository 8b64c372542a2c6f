"""Medical Segmentation Decathlon tasks (``decathlon:PATH``), cut into 2D slices.

Layout (Antonelli et al., Nat. Commun. 2022, https://doi.org/10.1038/s41467-022-30695-9)::

    TaskXX_Name/dataset.json   "modality" {"0": "T2", "1": "ADC"}, "labels" {"0": "background",
                               "1": "PZ", "2": "TZ"}, "training" [{"image": ..., "label": ...}],
                               "test" [...]
    TaskXX_Name/imagesTr/      3D NIfTI, or 4D with the modalities on the last axis
    TaskXX_Name/labelsTr/      3D NIfTI label maps
    TaskXX_Name/imagesTs/      unlabelled test images (optional, ``include_test``)

One volume is one case; its slices along ``axis`` (a voxel axis; 2 = the
third, axial for Task05_Prostate) are the frames, all usable for pretraining,
shown with the next-higher voxel axis as rows (see :mod:`sslseg.io`).
Pixel spacing ``(row mm, column mm)`` comes from the NIfTI header, the slice
spacing (``Case.slice_spacing``, for 3D scores) too.

Options:

* ``modality``: which channels of a 4D image, by name as dataset.json lists
  them (``"T2"``) or index, one or a list; default all (``(S, C, H, W)``).
  Umapathy et al. (ISMRM 2022) used T2 for Task05.
* ``merge``: label map, e.g. ``{1: 1, 2: 1}`` turns PZ and TZ into one
  "prostate" class (the whole-gland task); unlisted labels keep their value.
* ``empty_slices``: ``"keep"`` (every slice labelled, background-only ones
  included; the default), ``"drop"`` (only slices with foreground are
  labelled) or a number ``r`` (all foreground slices and ``round(r x their
  number)`` background-only ones, evenly spaced through the volume).  Dropped
  slices stay in the frames for pretraining, and validation and test score
  the whole volume whatever the policy (``Case.scored_masks``).
* ``intensity``: ``"scale"`` (divide by the 99.5th percentile per case and
  channel: MR has no absolute scale), ``"zscore"`` or ``"none"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.files import split_name
from ..io.intensity import check_intensity, normalise_intensity
from ..io.labels import mask_dtype
from ..io.volumes import read_voxels, voxels_to_frames
from .cache import KeyIndex, StackMasks, cached_arrays, digest
from .paths import entry_path
from .sample import Case, Cases

__all__ = ["load_decathlon", "parse_merge", "select_empty"]

_VERSION = 2  # 2: spacing carries the slice spacing


class LabelValueError(ValueError):
    """A mask value outside the declared classes: an error for the whole data set, never a skipped case."""


def parse_merge(merge: dict | None, where: str = "merge") -> dict[int, int]:
    """``{"1": 1, "2": 1}`` (keys may be strings, as from YAML or JSON) -> ``{1: 1, 2: 1}``."""
    if merge is None:
        return {}
    if not isinstance(merge, dict):
        raise UserError(f"{where} must be a mapping of label -> new label, e.g. {{1: 1, 2: 1}}; got {merge!r}")
    out = {}
    for k, v in merge.items():
        try:
            a, b = int(k), int(v)
        except (TypeError, ValueError):
            raise UserError(f"{where}: {k!r}: {v!r} is not a label -> label pair of whole numbers") from None
        if a < 0 or b < 0:
            raise UserError(f"{where}: labels must be >= 0, got {k!r}: {v!r}")
        out[a] = b
    return out


def select_empty(has_fg: np.ndarray, policy: str | float) -> list[int]:
    """Slices to label under an empty-slice ``policy`` (see the module notes).

    Args:
        has_fg: ``(S,)`` bool, whether each slice holds any foreground.
        policy: ``"keep"``, ``"drop"`` or a ratio ``r >= 0``.

    Returns:
        sorted slice indices.
    """
    fg = np.flatnonzero(has_fg)
    empty = np.flatnonzero(~has_fg)
    if policy == "keep":
        return list(range(len(has_fg)))
    if policy == "drop":
        return fg.tolist()
    try:
        r = float(policy)
    except (TypeError, ValueError):
        raise UserError(f"empty_slices must be 'keep', 'drop' or a ratio >= 0, got {policy!r}") from None
    if not r >= 0:
        raise UserError(f"empty_slices ratio must be >= 0, got {policy!r}")
    k = min(len(empty), int(round(r * len(fg))))
    # evenly spaced through the background-only slices, deterministic
    pick = empty[np.linspace(0, len(empty) - 1, k).round().astype(int)] if k else np.array([], dtype=int)
    return sorted(set(fg.tolist()) | set(pick.tolist()))


def _channels(modality, names: dict[int, str], n: int, where: str) -> list[int] | None:
    if modality is None:
        return None
    items = modality if isinstance(modality, (list, tuple)) else [modality]
    out = []
    for m in items:
        if isinstance(m, int) or (isinstance(m, str) and m.strip().isdigit()):
            i = int(m)
        else:
            hits = [i for i, name in names.items() if str(name).lower() == str(m).lower()]
            if not hits:
                raise UserError(f"{where}: modality {m!r} is not listed; choose one of {', '.join(map(str, names.values())) or 'none'}")
            i = hits[0]
        if not 0 <= i < n:
            raise UserError(f"{where}: modality index {i} is outside the image's {n} channel(s)")
        out.append(i)
    return out


def _build(image: Path, label: Path | None, axis: int, modality, names: dict[int, str],
           allowed: set[int] | None, merge: dict[int, int], intensity: str) -> dict[str, np.ndarray]:
    vox, zooms = read_voxels(image)
    nchan = vox.shape[3] if vox.ndim == 4 else 1
    chans = _channels(modality, names, nchan, str(image)) if vox.ndim == 4 else None
    if vox.ndim == 3 and modality is not None:
        _channels(modality, names, max(1, len(names)), str(image))  # still validate the name
    frames, spacing = voxels_to_frames(vox, zooms, axis, chans)
    # float32 whatever the stored type: a Decathlon volume has no 8-bit scale to keep
    frames = normalise_intensity(frames.astype(np.float32), intensity, str(image))
    # (row mm, column mm, slice mm): the slice spacing scores volumes in 3D
    slice_mm = float(zooms[axis]) if len(zooms) > axis else 1.0
    out = {"frames": frames, "spacing": np.array([*spacing, slice_mm], dtype=np.float64)}
    if label is not None:
        lv, lz = read_voxels(label)
        if lv.ndim != 3:
            raise UserError(f"{label}: label map must be 3D, got shape {lv.shape}")
        if lv.shape != vox.shape[:3]:
            raise UserError(f"{label}: label shape {lv.shape} differs from image shape {vox.shape[:3]}")
        lab, _ = voxels_to_frames(lv, lz, axis)
        if lab.dtype.kind == "f":
            if not np.isfinite(lab).all() or not np.array_equal(lab, np.round(lab)):
                raise UserError(f"{label}: label values must be whole numbers")
        lab = lab.astype(np.int64)
        vals = set(np.unique(lab).tolist())
        if allowed is not None and not vals <= allowed:
            raise LabelValueError(f"{label}: label value(s) {sorted(vals - allowed)} not listed in dataset.json labels "
                                  f"{sorted(allowed)}; fix the mask or map the value with the merge option")
        if merge:
            lut = np.arange(max(max(vals), max(merge)) + 1)
            for a, b in merge.items():
                lut[a] = b
            lab = lut[lab]
        out["labels"] = lab.astype(mask_dtype(int(lab.max(initial=0))))
    return out


def load_decathlon(
    path: str | os.PathLike,
    *,
    modality: str | int | list | None = None,
    merge: dict | None = None,
    axis: int = 2,
    empty_slices: str | float = "keep",
    intensity: str = "scale",
    include_test: bool = False,
    cache_dir: str | None = None,
) -> list[Case]:
    """A Decathlon task as 2D-sliced cases (see the module notes for the options).

    Raises:
        ValueError: a missing or malformed ``dataset.json``, a bad option, or
            no usable case, or a label value that dataset.json does not list.
            A case with a missing file, a mask whose shape differs from its
            image, or NaN/Inf is skipped and counted.
    """
    root = Path(path).expanduser()
    spec_path = root / "dataset.json"
    if not spec_path.is_file():
        raise UserError(f"{spec_path}: file not found (is PATH a Decathlon task folder, e.g. Task05_Prostate?)")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{spec_path}: not valid JSON ({err})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("training"), list):
        raise UserError(f"{spec_path}: needs a 'training' list of {{'image': ..., 'label': ...}} entries")
    check_intensity(intensity)
    if not isinstance(axis, int) or not 0 <= axis <= 2:
        raise UserError(f"axis must be 0, 1 or 2 (a voxel axis), got {axis!r}")
    if empty_slices not in ("keep", "drop"):
        select_empty(np.array([True, False]), empty_slices)  # validate the ratio early
    merge_map = parse_merge(merge)
    modalities = spec.get("modality") or spec.get("channel_names") or {}
    try:
        names = {int(k): str(v) for k, v in modalities.items()}
    except (AttributeError, ValueError):
        raise UserError(f"{spec_path}: 'modality' must map channel numbers to names") from None
    raw_labels = spec.get("labels")
    allowed: set[int] | None = None
    label_names: dict[int, str] = {}
    if isinstance(raw_labels, dict) and raw_labels:
        try:
            if all(str(k).lstrip("-").isdigit() for k in raw_labels):  # v1: {"0": "background"}
                label_names = {int(k): str(v) for k, v in raw_labels.items()}
            else:  # nnU-Net v2 style: {"background": 0}
                label_names = {int(v): str(k) for k, v in raw_labels.items()}
        except (TypeError, ValueError):
            raise UserError(f"{spec_path}: 'labels' must map label values to names") from None
        allowed = set(label_names)
    bad = [a for a in merge_map if allowed is not None and a not in allowed]
    if bad:
        raise UserError(f"merge: label {bad[0]} is not in dataset.json labels {sorted(allowed or [])}")
    if merge_map:
        merged: dict[int, list[str]] = {}
        for v, n in sorted(label_names.items()):
            merged.setdefault(merge_map.get(v, v), []).append(n)
        label_names = {v: "+".join(ns) for v, ns in merged.items()}
    chosen = list(range(len(names)))
    if modality is not None and names:
        chosen = _channels(modality, names, len(names), str(spec_path))
    # the MSD lists channel names ("T2", "FLAIR", "CT"); its CT tasks name their one channel CT
    channels = tuple(names[i] for i in chosen if i in names)
    acquired = "CT" if any(v.upper() == "CT" for v in names.values()) else ("MR" if names else "")

    entries: list[tuple[Path, Path | None]] = []
    skipped: list[str] = []
    for n, item in enumerate(spec["training"]):
        if not isinstance(item, dict) or "image" not in item:
            raise UserError(f"{spec_path}: training entry {n} has no 'image'")
        # entries stay inside the task folder (sslseg.data.paths)
        img = entry_path(root, item["image"], f"{spec_path} training[{n}].image").resolve()
        lab = entry_path(root, item["label"], f"{spec_path} training[{n}].label").resolve() if item.get("label") else None
        if not img.is_file():
            skipped.append(f"{img}: image listed in dataset.json not found")
            continue
        if lab is not None and not lab.is_file():
            skipped.append(f"{lab}: label listed in dataset.json not found")
            continue
        entries.append((img, lab))
    if include_test:
        for item in spec.get("test") or []:
            p = item.get("image") if isinstance(item, dict) else item
            img = entry_path(root, p, f"{spec_path} test entry").resolve()
            if img.is_file():
                entries.append((img, None))
            else:
                skipped.append(f"{img}: test image listed in dataset.json not found")

    index = KeyIndex(root, cache_dir)
    cases: list[Case] = []
    for img, lab in entries:
        cid = split_name(img)[0]
        try:
            keys = [index.key(img), index.key(lab) if lab else None]
            key = digest("decathlon", _VERSION, keys, axis, modality, sorted(merge_map.items()),
                         intensity, sorted(allowed) if allowed is not None else None)
            names_out = ("frames", "spacing", "labels") if lab else ("frames", "spacing")
            arrs = cached_arrays(
                key, lambda img=img, lab=lab: _build(img, lab, axis, modality, names, allowed, merge_map, intensity),
                names_out, cache_dir, group="decathlon")
        except LabelValueError:
            raise  # a stray value (e.g. 255) would silently add classes to the model
        except ValueError as err:
            skipped.append(str(err))
            continue
        masks: StackMasks | dict = {}
        if lab is not None:
            labels = arrs["labels"]
            # foreground per slice, read once from the cached label stack
            has_fg = np.asarray(labels).reshape(labels.shape[0], -1).any(axis=1)
            masks = StackMasks(labels, select_empty(has_fg, empty_slices))
        # the policy shapes the training slices only: validation and test score the whole volume
        # (sslseg.evaluate.inference.scored_masks)
        whole = StackMasks(arrs["labels"], range(len(arrs["labels"]))) if lab is not None else None
        sp = np.asarray(arrs["spacing"])
        meta = {
            "source": str(img),
            "label_source": str(lab) if lab else None,
            "axis": axis,
            "label_names": label_names,
        }
        cases.append(Case(cid, arrs["frames"], masks, (float(sp[0]), float(sp[1])), None, meta,  # type: ignore[arg-type]
                          volume=True, slice_spacing=float(sp[2]) if sp.size > 2 else None,
                          modality=acquired, channels=channels,
                          scored_masks=whole if whole is not None and len(whole) != len(masks) else None))
    index.save()
    if not cases:
        reason = f"; e.g. {skipped[0]}" if skipped else ""
        raise UserError(f"{root}: no usable case in dataset.json{reason}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise UserError(f"{spec_path}: two images share a file name; case ids must be unique")
    notes = [f"slices along voxel axis {axis}; empty-slice policy: {empty_slices}"]
    if merge_map:
        notes.append(f"labels merged: {', '.join(f'{a}->{b}' for a, b in sorted(merge_map.items()))}")
    return Cases(cases, skipped, notes)
