"""Plain folders of images and masks, and the image-file reading shared by all readers.

Layout (``folder:PATH``)::

    PATH/images/<name>.<ext>       images (labelled when a mask of the same name exists)
    PATH/masks/<name>.<ext>        label maps (0 background, 1, 2, ... classes)
    PATH/unlabelled/<name>.<ext>   optional: more images, for pretraining only
    PATH/cases.csv                 optional: columns ``file`` and ``case_id`` (and ``split``)

``<ext>`` is any of PNG, JPEG, BMP, TIFF (multi-page: frames), NIfTI
(``.nii``, ``.nii.gz``), MetaImage (``.mhd``, ``.mha``), NRRD or DICOM
(``.dcm``); a mask may use another format than its image.  Without
``cases.csv`` each file is one case named after the file; with it, the files
of one ``case_id`` become the frames of one case (in the order listed) and a
``split`` column, when present, fixes the split.

Orientation convention, the same for every reader: a volume of voxel axes
``(i, j, k)`` (NIfTI and MetaImage order) is cut along ``axis`` (default 2,
``k``, axial for the usual acquisitions) and each slice is shown with ``j`` as
rows and ``i`` as columns, which is how ITK-SNAP and 3D Slicer display an
axial slice up to a flip.  A 2D picture keeps its rows and columns.  Pixel
spacing is ``(row mm, column mm)`` from the header, ``(1, 1)`` for pictures.

Intensities: 8-bit data stay ``uint8``; anything else becomes ``float32``
divided by its 99.5th percentile per case (``intensity="scale"``; MR and CT
have no common scale between scanners), or standardised per case
(``"zscore"``), or left as read (``"none"``).  When a data set mixes the two,
the ``uint8`` cases are divided by 255 so that all cases share one dtype.
"""

from __future__ import annotations

import csv
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .cache import KeyIndex, StackMasks, cached_arrays, digest
from .paths import check_inside, entry_path
from .sample import SPLITS, Case

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_folder",
    "luma",
    "normalise_intensity",
    "read_voxels",
    "split_name",
    "voxels_to_frames",
]

_VERSION = 2  # 2: parts carry the slice spacing
PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUMES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr")
IMAGE_EXTENSIONS = PICTURES + VOLUMES + (".dcm",)
INTENSITY = ("scale", "zscore", "none")


def split_name(path: str | os.PathLike) -> tuple[str, str]:
    """``"a/b/x.nii.gz"`` -> ``("x", ".nii.gz")``; the extension is lower-cased."""
    name = Path(path).name
    low = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext.lower()) if dot and stem else (name, "")


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``(..., 3)`` RGB, in the input's integer range (``uint8`` stays ``uint8``)."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if rgb.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y.astype(np.float32)


def _read_picture(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            pages = []
            for page in ImageSequence.Iterator(im):
                if page.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "PA"):
                    a = np.asarray(page.convert("RGB"))
                    if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
                        a = a[..., 0]  # grey stored as colour: no rounding through luma
                    else:
                        a = luma(a)
                else:
                    a = np.asarray(page)
                    if a.dtype == bool:
                        a = a.astype(np.uint8)
                pages.append(np.array(a))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    if len({p.shape for p in pages}) != 1:
        raise ValueError(f"{path}: pages of different sizes")
    # (N, H, W) -> voxel order (i = column, j = row, k = page)
    return np.stack(pages).transpose(2, 1, 0), (1.0, 1.0, 1.0)


#: bytes per voxel of the MetaImage element types
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def check_metaimage(path: Path) -> None:
    """Refuse a ``.mha`` whose header SimpleITK's reader could crash on (seen in fuzzing: a damaged header
    aborted the process instead of raising).

    Checks the header fields the voxels depend on: ``NDims``, ``DimSize``, ``ElementType``,
    ``ElementDataFile = LOCAL`` and, for uncompressed data, that the file holds every voxel.
    ``.mhd`` (separate data file) and NRRD go to SimpleITK unchecked.

    Raises:
        ValueError: naming the file and the field.
    """
    if path.suffix.lower() != ".mha":
        return
    head = path.read_bytes()[:65536]
    fields: dict[str, str] = {}
    end = 0
    for line in head.split(b"\n"):
        end += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            raise ValueError(f"{path}: damaged MetaImage header (a line without '=')")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        raise ValueError(f"{path}: damaged MetaImage header (no ElementDataFile)")
    try:
        nd = int(fields["NDims"])
        dims = [int(v) for v in fields["DimSize"].split()]
        size = _MET_BYTES[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: damaged MetaImage header (NDims, DimSize, ElementType: {err})") from None
    if not 1 <= nd <= 4 or len(dims) != nd or min(dims) < 1 or size < 1:
        raise ValueError(f"{path}: damaged MetaImage header (NDims {nd}, DimSize {fields['DimSize']!r})")
    if fields["ElementDataFile"] != "LOCAL":
        raise ValueError(f"{path}: a .mha holds its voxels (ElementDataFile = LOCAL), "
                         f"not {fields['ElementDataFile']!r}")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if not compressed and path.stat().st_size - end < size * int(np.prod(dims)):
        raise ValueError(f"{path}: truncated MetaImage: fewer bytes than DimSize x ElementType")


def read_voxels(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read an image file as voxels ``(i, j[, k[, c]])`` and their sizes in mm.

    NIfTI through nibabel, MetaImage/NRRD through SimpleITK, pictures through
    Pillow (colour -> BT.601 luma), DICOM through :mod:`sslseg.data.dicom`.
    Pictures and DICOM come back as ``(columns, rows, frames)``.

    Raises:
        ValueError: unknown extension or unreadable file (the message names it).
    """
    path = Path(path)
    _, ext = split_name(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if ext in (".nii", ".nii.gz"):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            vox = np.asanyarray(img.dataobj)
        except Exception as err:  # nibabel raises many types for broken files
            raise ValueError(f"{path}: not a readable NIfTI file ({err})") from None
        zooms = tuple(float(z) for z in img.header.get_zooms())
        return vox, zooms
    if ext in (".mhd", ".mha", ".nrrd", ".nhdr"):
        import SimpleITK as sitk

        check_metaimage(path)
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as err:
            msg = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
            raise ValueError(f"{path}: not a readable image ({msg})") from None
        arr = sitk.GetArrayFromImage(img)  # (k, j, i[, c]) -> (i, j, k[, c])
        nd = img.GetDimension()
        axes = tuple(reversed(range(nd))) + tuple(range(nd, arr.ndim))
        vox = arr.transpose(axes)
        if img.GetNumberOfComponentsPerPixel() == 3 and vox.ndim == nd + 1:
            vox = luma(vox)
        return vox, tuple(float(s) for s in img.GetSpacing())
    if ext in PICTURES:
        return _read_picture(path)
    if ext == ".dcm" or ext == "":
        from .dicom import read_dicom

        frames, spacing, _ = read_dicom(path)
        return frames.transpose(2, 1, 0), (spacing[1], spacing[0], 1.0)
    raise ValueError(f"{path}: unknown image format {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")


def voxels_to_frames(
    vox: np.ndarray, zooms: tuple[float, ...], axis: int = 2, channels: list[int] | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Cut voxels ``(i, j[, k[, c]])`` into 2D frames along spatial ``axis``.

    Shape:
        2D ``(i, j)`` -> ``(1, j, i)``; 3D -> ``(S, rows, cols)``; 4D with
        channels last -> ``(S, C, rows, cols)`` (``(S, rows, cols)`` for one
        channel).  Rows are the higher remaining voxel axis, columns the lower.

    Returns:
        frames and spacing ``(row mm, column mm)``.
    """
    if vox.ndim == 2:
        vox = vox[:, :, None]
        zooms = tuple(zooms[:2]) + (1.0,)
    if vox.ndim not in (3, 4):
        raise ValueError(f"expected a 2D, 3D or 4D image, got {vox.ndim} dimensions")
    if not 0 <= axis <= 2:
        raise ValueError(f"slicing axis must be 0, 1 or 2, got {axis}")
    a, b = (d for d in range(3) if d != axis)  # a < b: columns = a, rows = b
    if vox.ndim == 3:
        frames = vox.transpose(axis, b, a)
    else:
        if channels is not None:
            vox = vox[..., channels]
        frames = vox.transpose(axis, 3, b, a)
        if frames.shape[1] == 1:
            frames = frames[:, 0]
    zooms = tuple(zooms) + (1.0,) * (3 - len(zooms))
    return np.ascontiguousarray(frames), (float(zooms[b]), float(zooms[a]))


def normalise_intensity(frames: np.ndarray, intensity: str = "scale", where: str = "image") -> np.ndarray:
    """``uint8`` unchanged; other data -> ``float32`` scaled per case (see the module notes).

    Raises:
        ValueError: NaN or Inf in the image, or an unknown ``intensity``.
    """
    if intensity not in INTENSITY:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITY)}, got {intensity!r}")
    if frames.dtype == np.uint8:
        return frames
    x = frames.astype(np.float32)
    if not np.isfinite(x).all():
        n = int((~np.isfinite(x)).sum())
        raise ValueError(f"{where}: {n} NaN or Inf value(s) in the image")
    if intensity == "scale":
        hi = float(np.percentile(np.abs(x), 99.5))
        x = x / hi if hi > 0 else x
    elif intensity == "zscore":
        x = (x - x.mean()) / (x.std() + 1e-8)
    return x.astype(np.float32)


def as_labels(mask: np.ndarray, where: str) -> np.ndarray:
    """Integer label map from a mask file's values; ``{0, 255}`` masks become ``{0, 1}``."""
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all():
            raise ValueError(f"{where}: NaN or Inf in the mask")
        if not np.array_equal(mask, np.round(mask)):
            raise ValueError(f"{where}: mask values are not whole numbers")
    m = mask.astype(np.int64)
    if m.min() < 0:
        raise ValueError(f"{where}: negative label value {int(m.min())}")
    vals = np.unique(m)
    if vals.size <= 2 and vals.max() == 255:  # 8-bit black/white masks
        m = (m == 255).astype(np.int64)
    return m


def mask_dtype(top: int) -> type:
    return np.uint8 if top <= 255 else np.int32


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


def _read_case_csv(path: Path, known: dict[str, Path]) -> tuple[OrderedDict[str, list[str]], dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first column
            reader = csv.DictReader(f)
            rows = list(reader)
            cols = reader.fieldnames or []
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV table ({err})") from None
    missing = [c for c in ("file", "case_id") if c not in cols]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (needs file, case_id[, split])")
    groups: OrderedDict[str, list[str]] = OrderedDict()
    splits: dict[str, str] = {}
    owner: dict[str, tuple[str, int]] = {}  # file stem -> (case_id, line) that listed it first
    for n, row in enumerate(rows, start=2):
        if row.get("file") is None or row.get("case_id") is None or None in row:
            raise ValueError(f"{path} line {n}: expected the {len(cols)} columns of the header ({', '.join(cols)})")
        entry_path(path.parent, row["file"], f"{path} line {n} file")  # no absolute or '..' path
        stem = split_name(row["file"])[0]
        if stem not in known:
            raise ValueError(f"{path} line {n}: file {row['file']!r} is not in images/ or unlabelled/")
        if stem in owner:
            # a file in two cases could sit in train and test at once; twice in one case duplicates its frames
            cid, first = owner[stem]
            what = "listed twice for case" if cid == row["case_id"] else f"already belongs to case {cid!r}, not"
            raise ValueError(f"{path} line {n}: file {row['file']!r} {what} {row['case_id']!r} (line {first})")
        owner[stem] = (row["case_id"], n)
        groups.setdefault(row["case_id"], []).append(stem)
        s = (row.get("split") or "").strip().lower()
        if s:
            if s not in SPLITS:
                raise ValueError(f"{path} line {n}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            if splits.get(row["case_id"], s) != s:
                raise ValueError(f"{path} line {n}: case {row['case_id']!r} is given split {s!r} here and "
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
            raise ValueError(f"{src}: mask value(s) {bad} outside the {how}; fix the mask")


def load_folder(
    path: str | os.PathLike,
    *,
    csv_file: str = "cases.csv",
    axis: int = 2,
    intensity: str = "scale",
    spacing: list[float] | None = None,
    labels: list[int] | None = None,
    cache_dir: str | None = None,
) -> list[Case]:
    """Cases from ``images/``, ``masks/`` and ``unlabelled/`` under ``path``.

    Args:
        path: the folder.
        csv_file: name (in ``path``) of the optional case table.
        axis: voxel axis along which volumes are cut into slices.
        intensity: ``"scale"``, ``"zscore"`` or ``"none"`` for non-8-bit images.
        spacing: ``[row mm, column mm]`` for pictures, which carry none.
        labels: the label values masks may hold (background 0 implied); default
            ``0..K-1`` with no gap, so a stray value is an error, not a class.
        cache_dir: cache folder (default ``$SSLSEG_CACHE`` or ``~/.cache/sslseg``).

    Raises:
        ValueError: no ``images/`` or ``unlabelled/`` folder, a bad case table
            (a file in two cases or listed twice, two splits for one case), a
            mask value outside the classes, or nothing usable.  Single bad files are skipped and counted.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: folder not found")
    images, masks, unlab = _find(root / "images"), _find(root / "masks"), _find(root / "unlabelled")
    if not images and not unlab:
        raise ValueError(f"{root}: no images found in images/ or unlabelled/ (formats: {', '.join(IMAGE_EXTENSIONS)})")
    if intensity not in INTENSITY:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITY)}, got {intensity!r}")
    dup = sorted(set(images) & set(unlab))
    if dup:
        raise ValueError(f"{root}: {dup[0]!r} is both in images/ and unlabelled/")
    skipped: list[str] = []
    notes: list[str] = []
    for stem in sorted(set(masks) - set(images)):
        skipped.append(f"{masks[stem]}: mask without an image of the same name")
    no_mask = sorted(set(images) - set(masks))
    if no_mask and masks:
        notes.append(f"{len(no_mask)} image(s) in images/ have no mask (e.g. {no_mask[0]!r}); used unlabelled")
    files = {**images, **unlab}
    table = root / csv_file
    if table.is_file():
        groups, fixed = _read_case_csv(table, files)
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
            meta={"source": [str(img) for img, _ in srcs], "mask_source": [str(m) for _, m in srcs if m],
                  "volume": any(split_name(img)[1] in VOLUMES for img, _ in srcs),
                  "slice_spacing": float(parts[0, 4])},
        ))
    index.save()
    if not cases:
        reason = f"; skipped: {skipped[0]}" if skipped else ""
        raise ValueError(f"{root}: no usable case{reason}")
    check_label_values(cases, labels)
    cases = _common_dtype(cases, notes)
    if spacing is None and all(split_name(p)[1] in PICTURES for c in cases for p in c.meta["source"]):
        notes.append("pictures carry no pixel size: spacing is 1 pixel = 1.0 'mm' (set data.options.spacing)")
    for c in cases:
        c.meta["dataset_skipped"] = skipped
        c.meta["dataset_notes"] = notes
    return cases


def _build_case(srcs: list[tuple[Path, Path | None]], cid: str, axis: int, intensity: str) -> dict[str, np.ndarray]:
    """Read the files of one case: frames, the label stack (zeros where unlabelled) and per-file facts."""
    frames, stack, parts = [], [], []
    for img, m in srcs:
        vox, zooms = read_voxels(img)
        try:
            fr, sp = voxels_to_frames(vox, zooms, axis)
        except ValueError as err:
            raise ValueError(f"{img}: {err}") from None
        if fr.ndim == 4:
            raise ValueError(f"{img}: multi-channel volumes are not supported in a folder data set")
        mk = np.zeros(fr.shape, dtype=np.int64)
        if m is not None:
            mv, mz = read_voxels(m)
            try:
                mf, _ = voxels_to_frames(mv, mz, axis)
            except ValueError as err:
                raise ValueError(f"{m}: {err}") from None
            if mf.shape != fr.shape:
                raise ValueError(f"{m}: mask shape {tuple(mf.shape)} differs from its image's {tuple(fr.shape)}")
            mk = as_labels(mf, str(m))
        frames.append(fr)
        stack.append(mk)
        z = tuple(zooms) + (1.0,) * 3
        parts.append([sp[0], sp[1], fr.shape[0], float(m is not None), float(z[axis])])
    shapes = sorted({f.shape[1:] for f in frames})
    if len(shapes) != 1:
        raise ValueError(f"case {cid!r} ({srcs[0][0].parent}): its files have different image sizes {shapes}")
    fr = normalise_intensity(np.concatenate(frames), intensity, f"{srcs[0][0]}")
    mk = np.concatenate(stack)
    return {"frames": fr, "masks": mk.astype(mask_dtype(int(mk.max(initial=0)))),
            "parts": np.array(parts, dtype=np.float64)}


def _common_dtype(cases: list[Case], notes: list[str]) -> list[Case]:
    dtypes = {np.dtype(c.frames.dtype) for c in cases}
    if len(dtypes) == 1:
        return cases
    notes.append("8-bit and other images mixed: 8-bit images divided by 255, all frames float32")
    out = []
    for c in cases:
        if c.frames.dtype == np.uint8:
            frames = np.asarray(c.frames).astype(np.float32) / 255.0
            c = Case(c.case_id, frames, c.masks, c.spacing, c.split, c.meta)
        out.append(c)
    return out


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A case id usable as a file name."""
    return _SAFE.sub("_", text).strip("_") or "case"
