"""CAMUS (``camus:PATH``): 2D apical two- and four-chamber echo, both releases.

"Cardiac Acquisitions for Multi-structure Ultrasound Segmentation": 500
patients, apical 2CH and 4CH views, manual contours of the LV endocardium, the
LV epicardium and the left atrium at end-diastole (ED) and end-systole (ES)
(Leclerc et al., IEEE TMI 2019, https://doi.org/10.1109/TMI.2019.2900516).
Label values: 0 background, 1 LV cavity, 2 LV myocardium, 3 left atrium.

Both releases are read, and ``PATH`` may be any folder above the patients
(``training/``, ``database_nifti/``, the release root)::

    MetaImage:  patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].mhd (+ .raw),
                patientXXXX_{2CH,4CH}_sequence.mhd, Info_{2CH,4CH}.cfg
    NIfTI:      patientXXXX/patientXXXX_{2CH,4CH}_{ED,ES}[_gt].nii.gz,
                patientXXXX_{2CH,4CH}_half_sequence[_gt].nii.gz, Info_{2CH,4CH}.cfg

A view's frames are its sequence when present (every frame usable for
pretraining), else its ED and ES images.  The ED and ES images are located in
the sequence by their pixels (the release notes and the cfg disagree on frame
numbering between releases; the pixels do not), falling back to the cfg's
1-based ``ED``/``ES`` numbers.  Patients without ground truth (the test
patients) become unlabelled cases.

Options: ``labels="lv"`` (1 = LV cavity; contrastive-echo segments the LV) or
``"all"`` (0..3); ``views="4CH"`` (contrastive-echo used 4CH ED/ES, the
default), ``"2CH"`` or ``"both"``; ``labelled="ed_es"`` or ``"all"`` (every
frame of the NIfTI release's half sequence, whose ground truth covers it).

One case is one patient, so that the split never separates a patient's two
views.  With ``views="both"`` the 4CH frames are resampled to the 2CH pixel
size (linear for images, nearest for masks) when the two differ, and both are
placed top-aligned and centred (the probe at the top) on a common zero canvas;
``meta["views"]`` gives each view's frame range.  Spacing ``(row mm, column
mm)`` comes from the image headers; the cfg's image quality, EF, volumes and
frame numbers are kept in ``meta``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UserError
from ..io.volumes import read_voxels, voxels_to_frames
from .cache import KeyIndex, StackMasks, cached_arrays, digest
from .paths import check_inside
from .sample import Case, Cases

__all__ = ["load_camus", "read_cfg"]

_VERSION = 1
LABEL_NAMES = {0: "background", 1: "LV cavity", 2: "LV myocardium", 3: "left atrium"}
VIEWS = ("2CH", "4CH")
_EXTS = (".mhd", ".nii.gz", ".nii", ".mha")
_PATIENT = re.compile(r"^patient\d+$", re.IGNORECASE)
_ED, _ES = 1, 2  # phase codes in the cached table of labelled frames


def read_cfg(path: str | os.PathLike) -> dict[str, object]:
    """``Info_{2CH,4CH}.cfg`` ("Key: value" lines) -> dict; numbers parsed."""
    out: dict[str, object] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        val = val.strip()
        try:
            num = float(val)
            out[key.strip()] = int(num) if num.is_integer() and "." not in val else num
        except ValueError:
            out[key.strip()] = val
    return out


def _find(folder: Path, base: str) -> Path | None:
    for ext in _EXTS:
        p = folder / f"{base}{ext}"
        if p.is_file():
            return p
    return None


def _read_frames(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    vox, zooms = read_voxels(path)
    frames, spacing = voxels_to_frames(vox, zooms, axis=2)
    return frames, spacing


def _as_uint8(frames: np.ndarray, path: Path) -> np.ndarray:
    if frames.dtype == np.uint8:
        return frames
    if not np.isfinite(frames).all():
        raise UserError(f"{path}: NaN or Inf in the image")
    if frames.min() >= 0 and frames.max() <= 255 and np.array_equal(frames, np.round(frames)):
        return frames.astype(np.uint8)
    lo, hi = float(frames.min()), float(frames.max())
    return np.clip(np.rint((frames - lo) / max(hi - lo, 1e-8) * 255), 0, 255).astype(np.uint8)


def _labels(gt: np.ndarray, path: Path, labels: str) -> np.ndarray:
    vals = np.unique(gt)
    bad = [v for v in vals.tolist() if v not in LABEL_NAMES]
    if bad:
        raise UserError(f"{path}: label value(s) {bad} are not CAMUS labels 0..3")
    gt = gt.astype(np.uint8)
    return (gt == 1).astype(np.uint8) if labels == "lv" else gt


def _locate(seq: np.ndarray, image: np.ndarray, cfg_frame: object) -> int | None:
    """Index of ``image`` in ``seq``: identical pixels first, then the cfg's 1-based number."""
    if seq.shape[1:] == image.shape:
        diff = np.abs(seq.astype(np.int16) - image.astype(np.int16)).reshape(len(seq), -1).mean(1)
        best = int(np.argmin(diff))
        if diff[best] < 0.5:
            return best
    if isinstance(cfg_frame, int) and 1 <= cfg_frame <= len(seq):
        return cfg_frame - 1
    return None


def _build_view(files: dict[str, Path | None], labels: str, labelled: str) -> dict:
    """One view: frames (T, H, W) uint8, label stack, labelled frame indices and phases, spacing."""
    seq_path = files["sequence"]
    ed_img = es_img = None
    spacing = None
    if files["ED"] is not None:
        ed_img, spacing = _read_frames(files["ED"])
        ed_img = _as_uint8(ed_img, files["ED"])[0]
    if files["ES"] is not None:
        es_img, sp = _read_frames(files["ES"])
        es_img = _as_uint8(es_img, files["ES"])[0]
        spacing = spacing or sp
    if seq_path is not None:
        frames, sp = _read_frames(seq_path)
        frames = _as_uint8(frames, seq_path)
        spacing = sp  # the sequence's header, when there is one
    else:
        imgs = [a for a in (ed_img, es_img) if a is not None]
        if not imgs:
            raise UserError("no sequence and no ED or ES image")
        if len({a.shape for a in imgs}) > 1:
            raise UserError(f"ED and ES images differ in size: {[a.shape for a in imgs]}")
        frames = np.stack(imgs)
    cfg = files.get("cfg_values") or {}
    pos: dict[int, int] = {}  # frame index -> phase code
    masks: dict[int, np.ndarray] = {}
    for phase, img, code in (("ED", ed_img, _ED), ("ES", es_img, _ES)):
        if img is None:
            continue
        if seq_path is None:
            idx = 0 if phase == "ED" or ed_img is None else 1
        else:
            idx = _locate(frames, img, cfg.get(phase))
            if idx is None:
                # not in the sequence: keep the labelled image as an extra frame
                if img.shape != frames.shape[1:]:
                    raise UserError(f"{files[phase]}: image size {img.shape} differs from the sequence's {frames.shape[1:]}")
                frames = np.concatenate([frames, img[None]])
                idx = len(frames) - 1
        pos[idx] = code
        gt_path = files[f"{phase}_gt"]
        if gt_path is not None:
            gt, _ = _read_frames(gt_path)
            if gt.shape[1:] != frames.shape[1:]:
                raise UserError(f"{gt_path}: mask size {gt.shape[1:]} differs from its image's {frames.shape[1:]}")
            masks[idx] = _labels(gt[0], gt_path, labels)
    if labelled == "all" and files["sequence_gt"] is not None and seq_path is not None:
        gt, _ = _read_frames(files["sequence_gt"])
        if gt.shape[0] > len(frames) or gt.shape[1:] != frames.shape[1:]:
            raise UserError(f"{files['sequence_gt']}: masks {gt.shape} do not match the sequence {frames.shape}")
        for i in range(gt.shape[0]):
            masks.setdefault(i, _labels(gt[i], files["sequence_gt"], labels))
    return {"frames": frames, "masks": masks, "phase": pos, "spacing": spacing}


def _resample(view: dict, spacing: tuple[float, float]) -> dict:
    """Resample a view to ``spacing`` (linear images, nearest masks)."""
    sr, sc = view["spacing"]
    if np.allclose((sr, sc), spacing, rtol=1e-3):
        return view
    fr, fc = sr / spacing[0], sc / spacing[1]
    frames = np.stack([
        np.clip(np.rint(ndimage.zoom(f.astype(np.float32), (fr, fc), order=1)), 0, 255).astype(np.uint8)
        for f in view["frames"]
    ])
    masks = {i: ndimage.zoom(m, (fr, fc), order=0) for i, m in view["masks"].items()}
    return {**view, "frames": frames, "masks": masks, "spacing": spacing}


def _place(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Top-aligned, horizontally centred on a zero canvas of ``shape`` (last two axes)."""
    out = np.zeros(a.shape[:-2] + shape, dtype=a.dtype)
    h, w = a.shape[-2:]
    left = (shape[1] - w) // 2
    out[..., :h, left : left + w] = a
    return out


def _build_case(views: dict[str, dict], labels: str, labelled: str) -> dict[str, np.ndarray]:
    built = {}
    errors = []
    for v, files in views.items():
        try:
            built[v] = _build_view(files, labels, labelled)
        except ValueError as err:
            errors.append(f"{v}: {err}")
    if errors:
        raise UserError("; ".join(errors))
    names = list(built)
    ref = built[names[0]]["spacing"]
    built = {v: _resample(b, ref) for v, b in built.items()}
    shape = (max(b["frames"].shape[1] for b in built.values()), max(b["frames"].shape[2] for b in built.values()))
    frames, stack, table, layout = [], [], [], []
    start = 0
    for v in names:
        b = built[v]
        fr = _place(b["frames"], shape)
        frames.append(fr)
        for i in sorted(b["masks"]):
            stack.append(_place(b["masks"][i], shape))
            table.append([start + i, b["phase"].get(i, 0)])
        for i, code in b["phase"].items():
            if i not in b["masks"]:
                table.append([start + i, code + 10])  # phase known, no mask (test patients)
        layout.append([VIEWS.index(v), start, start + len(fr)])
        start += len(fr)
    stack_arr = np.stack(stack) if stack else np.zeros((0,) + shape, dtype=np.uint8)
    return {
        "frames": np.concatenate(frames),
        "masks": stack_arr.astype(np.uint8),
        "table": np.array(table, dtype=np.int64).reshape(-1, 2),
        "layout": np.array(layout, dtype=np.int64),
        "spacing": np.array(ref, dtype=np.float64),
    }


def _patients(root: Path) -> list[Path]:
    if _PATIENT.match(root.name) and root.is_dir():
        return [root]
    found = [p for p in root.rglob("patient*") if p.is_dir() and _PATIENT.match(p.name)]
    for p in found:
        check_inside(root, p)  # a patient folder linked in from elsewhere is refused
        for f in p.iterdir():
            check_inside(root, f)
    return sorted(found, key=lambda p: (p.name.lower(), str(p)))


def load_camus(
    path: str | os.PathLike,
    *,
    labels: str = "lv",
    views: str = "4CH",
    labelled: str = "ed_es",
    cache_dir: str | None = None,
) -> list[Case]:
    """CAMUS patients as cases (see the module notes for layout and options).

    Args:
        path: a folder containing ``patientXXXX/`` folders (at any depth).
        labels: ``"lv"`` (LV cavity = 1) or ``"all"`` (1 LV, 2 myocardium, 3 LA).
        views: ``"2CH"``, ``"4CH"`` or ``"both"``.
        labelled: ``"ed_es"`` or ``"all"`` (all half-sequence frames, NIfTI release).
        cache_dir: cache folder (default ``$SSLSEG_CACHE`` or ``~/.cache/sslseg``).

    Raises:
        ValueError: bad option, no patient folder, or no usable patient.
    """
    if labels not in ("lv", "all"):
        raise UserError(f"CAMUS labels must be 'lv' or 'all', got {labels!r}")
    if str(views).upper() not in ("2CH", "4CH", "BOTH"):
        raise UserError(f"CAMUS views must be '2CH', '4CH' or 'both', got {views!r}")
    if labelled not in ("ed_es", "all"):
        raise UserError(f"CAMUS labelled must be 'ed_es' or 'all', got {labelled!r}")
    want = list(VIEWS) if str(views).upper() == "BOTH" else [str(views).upper()]
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    patients = _patients(root)
    if not patients:
        raise UserError(f"{root}: no patientXXXX folder found (is PATH the CAMUS training or database_nifti folder?)")
    skipped: list[str] = []
    index = KeyIndex(root, cache_dir)
    cases: list[Case] = []
    seen: set[str] = set()
    for pdir in patients:
        pid = pdir.name
        if pid in seen:
            skipped.append(f"{pdir}: a second folder named {pid} (first kept)")
            continue
        seen.add(pid)
        view_files: dict[str, dict] = {}
        cfgs: dict[str, dict] = {}
        for v in want:
            f: dict = {
                "ED": _find(pdir, f"{pid}_{v}_ED"),
                "ES": _find(pdir, f"{pid}_{v}_ES"),
                "ED_gt": _find(pdir, f"{pid}_{v}_ED_gt"),
                "ES_gt": _find(pdir, f"{pid}_{v}_ES_gt"),
                "sequence": _find(pdir, f"{pid}_{v}_sequence") or _find(pdir, f"{pid}_{v}_half_sequence"),
                "sequence_gt": _find(pdir, f"{pid}_{v}_half_sequence_gt") or _find(pdir, f"{pid}_{v}_sequence_gt"),
            }
            cfg_path = pdir / f"Info_{v}.cfg"
            cfgs[v] = read_cfg(cfg_path) if cfg_path.is_file() else {}
            f["cfg_values"] = cfgs[v]
            if f["sequence"] is None and f["ED"] is None and f["ES"] is None:
                skipped.append(f"{pid} {v}: no image file for this view")
                continue
            view_files[v] = f
        if not view_files:
            continue
        try:
            keys = {v: {k: index.key(p) for k, p in f.items() if isinstance(p, Path)} for v, f in view_files.items()}
            key = digest("camus", _VERSION, keys, {v: f["cfg_values"] for v, f in view_files.items()}, labels, labelled)
            arrs = cached_arrays(key, lambda vf=view_files: _build_case(vf, labels, labelled),
                                 ("frames", "masks", "table", "layout", "spacing"), cache_dir, group="camus")
        except ValueError as err:
            skipped.append(f"{pid}: {err}")
            continue
        table = np.asarray(arrs["table"])
        layout = np.asarray(arrs["layout"])
        lab = table[table[:, 1] < 10]
        phase = {int(i): ("ED" if c % 10 == _ED else "ES") for i, c in table if c % 10 in (_ED, _ES)}
        vnames = [VIEWS[int(r[0])] for r in layout]
        meta = {
            "views": {VIEWS[int(r[0])]: (int(r[1]), int(r[2])) for r in layout},
            "image_quality": {v: cfgs[v].get("ImageQuality") for v in vnames},
            "ef": {v: cfgs[v].get("EF", cfgs[v].get("LVef")) for v in vnames},
            "edv": {v: cfgs[v].get("LVedv") for v in vnames},
            "esv": {v: cfgs[v].get("LVesv") for v in vnames},
            "cfg": {v: cfgs[v] for v in vnames},
            "source": str(pdir),
            "label_names": dict(LABEL_NAMES) if labels == "all" else {0: "background", 1: "LV cavity"},
        }
        if len(vnames) == 1:  # one view: plain values are easier to use
            for k in ("image_quality", "ef", "edv", "esv"):
                meta[k] = meta[k][vnames[0]]
        sp = np.asarray(arrs["spacing"])
        masks = StackMasks(arrs["masks"], [int(i) for i in lab[:, 0]], list(range(len(lab))))
        cases.append(Case(pid, arrs["frames"], masks, (float(sp[0]), float(sp[1])), None, meta,  # type: ignore[arg-type]
                          modality="US", phases=phase))
    index.save()
    if not cases:
        reason = f"; e.g. {skipped[0]}" if skipped else ""
        raise UserError(f"{root}: no usable CAMUS patient{reason}")
    notes = []
    if len(want) == 2:
        notes.append("views=both: each patient's 4CH frames follow its 2CH frames, resampled to the 2CH "
                     "pixel size and placed on a common canvas (meta['views'] gives the frame ranges)")
    return Cases(cases, skipped, notes)
