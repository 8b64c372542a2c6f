"""DICOM images and cines as unlabelled cases (``dicom:PATH``), and one-file reading for prediction.

``PATH`` is a DICOM file or a folder searched recursively.  A multi-frame file
(an echo cine, a multi-frame MR) is one case whose frames are its frames;
single-frame files of one series (``SeriesInstanceUID``) are stacked into one
case, ordered by their position along the slice normal when the geometry tags
are present, else by ``InstanceNumber``, else by file name.

Pixels as the model should see them:

* colour to grey: ``YBR_*`` data keep their luma channel ``Y`` (exact, no
  round trip through RGB); ``RGB`` and ``PALETTE COLOR`` (after the palette
  lookup) become ITU-R BT.601 luma;
* ``MONOCHROME1`` (white = low) is inverted so that bright means high signal;
* the modality rescale (``RescaleSlope``/``RescaleIntercept``) is applied;
* 8-bit data stay ``uint8``; anything else becomes ``float32`` scaled per case
  as in :func:`sslseg.data.folder.normalise_intensity`.

Pixel spacing, ``(row mm, column mm)``, from the first of: ``PixelSpacing``;
the ultrasound region calibration (``SequenceOfUltrasoundRegions``: the largest
2D region whose physical units are cm, ``PhysicalDeltaY``/``PhysicalDeltaX`` x
10); ``ImagerPixelSpacing``; else ``(1, 1)`` and a note that it is unknown.

With ``sector=True`` (``--set data.options.sector=true``) ultrasound cines are
prepared as EchoNet-Dynamic's videos (:mod:`sslseg.echo.sector`), so that
pretraining on unlabelled cines sees frames as a model for EchoNet-style data
is later given them by ``sslseg predict``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from .cache import KeyIndex, cached_arrays, digest
from .folder import luma, normalise_intensity, safe_id
from .paths import check_inside
from .sample import Case

__all__ = ["dicom_spacing", "load_dicom", "read_dicom", "ultrasound_region"]

_VERSION = 1
_CM = 3  # PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15)
_REGION_2D = 1  # RegionSpatialFormat code for a 2D (tissue or colour flow) region


def ultrasound_region(ds) -> dict | None:
    """The largest 2D ultrasound region calibrated in cm (``SequenceOfUltrasoundRegions``), or None.

    Returns:
        ``{"box": (x0, y0, x1, y1), "delta_mm": (row mm, column mm)}``: the
        region's pixel bounds (inclusive, ``RegionLocationMinX0`` ...) and its
        pixel size (``PhysicalDeltaY``/``PhysicalDeltaX`` x 10).
    """
    best, area = None, -1.0
    for r in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            if int(r.get("RegionSpatialFormat", 0)) != _REGION_2D:
                continue
            if int(r.get("PhysicalUnitsXDirection", 0)) != _CM or int(r.get("PhysicalUnitsYDirection", 0)) != _CM:
                continue
            dx, dy = abs(float(r.PhysicalDeltaX)), abs(float(r.PhysicalDeltaY))
            box = tuple(int(v) for v in (r.RegionLocationMinX0, r.RegionLocationMinY0,
                                         r.RegionLocationMaxX1, r.RegionLocationMaxY1))
            a = float(box[2] - box[0]) * float(box[3] - box[1])
        except (AttributeError, TypeError, ValueError):
            continue
        if dx > 0 and dy > 0 and a > area:
            best, area = {"box": box, "delta_mm": (dy * 10.0, dx * 10.0)}, a
    return best


def dicom_spacing(ds) -> tuple[tuple[float, float], str]:
    """Pixel spacing ``(row mm, column mm)`` and the tag it came from (see the module notes)."""
    ps = ds.get("PixelSpacing")
    if ps is not None and len(ps) >= 2 and float(ps[0]) > 0 and float(ps[1]) > 0:
        return (float(ps[0]), float(ps[1])), "PixelSpacing"
    region = ultrasound_region(ds)
    if region is not None:
        return region["delta_mm"], "SequenceOfUltrasoundRegions"
    ips = ds.get("ImagerPixelSpacing")
    if ips is not None and len(ips) >= 2 and float(ips[0]) > 0 and float(ips[1]) > 0:
        return (float(ips[0]), float(ips[1])), "ImagerPixelSpacing"
    return (1.0, 1.0), "unknown"


def corrupt_dicom_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged DICOM file raises, lazily, whenever a damaged element is touched.

    pydicom's own errors, and bytes that do not parse as their value representation
    says (``struct.error``, ``NotImplementedError`` for an unknown VR, ...). Found by
    ``benchmarks/fuzz_inputs.py``.
    """
    import struct

    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, OSError, EOFError, ValueError, TypeError, KeyError,
            OverflowError, NotImplementedError, struct.error)


def open_dicom(path: Path):
    """The data set of a DICOM file that holds pixel data.

    Raises:
        ValueError: not DICOM, or no pixel data (the message names the file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: not a readable DICOM file ({err})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ValueError(f"{path}: DICOM file without pixel data ({ds.get('Modality', 'no modality')})")
    return ds


def _pixels(ds, path: Path) -> np.ndarray:
    """Decoded pixels, colour converted to grey: ``(N, H, W)``."""
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        try:
            from pydicom.pixels import pixel_array  # pydicom >= 3

            arr = pixel_array(ds, as_rgb=False) if pi.startswith("YBR") else ds.pixel_array
        except ImportError:  # pydicom 2.x returns YBR data unconverted
            arr = ds.pixel_array
    except Exception as err:  # decoders raise many types (missing plug-in, corrupt stream)
        raise ValueError(f"{path}: cannot decode the pixel data ({err})") from None
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if (spp == 1 and arr.ndim == 2) or (spp > 1 and arr.ndim == 3):
        arr = arr[None]
    if arr.shape[0] != nframes and nframes > 1:
        raise ValueError(f"{path}: {arr.shape[0]} frames decoded, NumberOfFrames is {nframes}")
    if pi.startswith("YBR"):
        arr = arr[..., 0]
    elif pi == "RGB":
        arr = luma(arr)
    elif pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:  # 16-bit palette entries: keep the top byte
            rgb = (rgb >> 8).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
        arr = luma(rgb)
    elif spp != 1:
        raise ValueError(f"{path}: photometric interpretation {pi} with {spp} samples is not supported")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or inter != 0:
        arr = arr.astype(np.float32) * slope + inter
    if pi == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
    if arr.dtype != np.uint8 and arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 255 and int(ds.get("BitsStored", 16)) <= 8:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float], dict]:
    """One DICOM file -> frames ``(N, H, W)`` (``uint8``, or raw values as ``float32``), spacing, metadata.

    For prediction on new studies: the frames are exactly what
    :func:`load_dicom` would cache, before the per-case intensity scaling.

    Raises:
        ValueError: not DICOM, no pixel data, or undecodable (the message names the file).
    """
    path = Path(path)
    try:
        ds = open_dicom(path)
        frames = _pixels(ds, path)
    except ValueError:
        raise
    except corrupt_dicom_errors() as err:  # a damaged element, met while reading the pixel description
        raise ValueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float32)
    try:
        spacing, source = dicom_spacing(ds)
        meta = _header_meta(ds)
    except corrupt_dicom_errors() as err:  # a tag whose text is not a number, a damaged element
        raise ValueError(f"{path}: unreadable geometry tags ({err})") from None
    meta["spacing_source"] = source
    return frames, spacing, meta


def _header_meta(ds) -> dict:
    ft = ds.get("FrameTime")
    meta = {
        "modality": str(ds.get("Modality", "")),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "series_number": str(ds.get("SeriesNumber", "")),
        "instance_number": int(ds.get("InstanceNumber", 0) or 0),
        "number_of_frames": int(ds.get("NumberOfFrames", 1) or 1),
    }
    if ft:
        meta["frame_time_ms"] = float(ft)
    region = ultrasound_region(ds)
    if region is not None:
        meta["us_region"] = list(region["box"])
    if ds.get("ImagePositionPatient") is not None and ds.get("ImageOrientationPatient") is not None:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        meta["slice_position"] = float(np.dot(ipp, np.cross(iop[:3], iop[3:])))
        meta["orientation"] = tuple(round(float(v), 4) for v in iop)
    return meta


def _scan(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        check_inside(root, p) for p in root.rglob("*")  # a link out of the folder is refused
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        and p.suffix.lower() in ("", ".dcm", ".dicom", ".ima")
    )


def load_dicom(
    path: str | os.PathLike,
    *,
    group_series: bool = True,
    intensity: str = "scale",
    sector: bool = False,
    sector_size: int = 112,
    cache_dir: str | None = None,
) -> list[Case]:
    """Unlabelled cases from DICOM files under ``path`` (see the module notes).

    Args:
        path: a DICOM file or a folder (searched recursively; files with no
            extension or ``.dcm``/``.dicom``/``.ima``).
        group_series: stack single-frame files of one series into one case.
        intensity: ``"scale"``, ``"zscore"`` or ``"none"`` for non-8-bit data.
        sector: prepare ultrasound cines (``Modality`` US) as EchoNet-Dynamic's
            videos (:mod:`sslseg.echo.sector`): the imaging sector found, the
            rest masked, the sector's square cut out and resized to
            ``sector_size``; the spacing follows.  Other cases are left as they are.
        sector_size: the side of the prepared frames (EchoNet-Dynamic's 112).
        cache_dir: cache folder (default ``$SSLSEG_CACHE`` or ``~/.cache/sslseg``).

    Raises:
        ValueError: the path does not exist or holds no usable image.
    """
    import pydicom

    if sector and (isinstance(sector_size, bool) or not isinstance(sector_size, int) or sector_size < 8):
        raise ValueError(f"dicom: sector_size must be an integer of at least 8, got {sector_size!r}")
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"{root}: file or folder not found")
    base = root.parent if root.is_file() else root
    skipped: list[str] = []
    notes: list[str] = []
    headers: list[tuple[Path, dict, tuple[int, int]]] = []
    for p in _scan(root):
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            if "Rows" not in ds or "Columns" not in ds:
                skipped.append(f"{p}: DICOM file without pixel data ({ds.get('Modality', 'no modality')})")
                continue
            headers.append((p, _header_meta(ds), (int(ds.Rows), int(ds.Columns))))
        except corrupt_dicom_errors():
            skipped.append(f"{p}: not a readable DICOM file")
            continue

    groups: dict[str, list[tuple[Path, dict, tuple[int, int]]]] = defaultdict(list)
    for h in headers:
        p, meta, shape = h
        if group_series and meta["number_of_frames"] == 1 and meta["series_uid"]:
            groups[f"series:{meta['series_uid']}:{shape}"].append(h)
        else:
            groups[f"file:{p}"].append(h)

    index = KeyIndex(base, cache_dir)
    cases: list[Case] = []
    used: set[str] = set()
    for members in groups.values():
        # positions along one slice normal order a stack; radial or mixed orientations fall
        # back to the acquisition order
        parallel = len({h[1].get("orientation") for h in members}) == 1 and "slice_position" in members[0][1]
        members.sort(key=lambda h: (h[1]["slice_position"] if parallel else 0.0, h[1]["instance_number"], h[0].name))
        files = [h[0] for h in members]
        rel = os.path.relpath(files[0], base)
        if len(files) == 1:
            cid = safe_id(os.path.splitext(rel)[0])
        else:
            cid = safe_id(f"{os.path.dirname(rel) or 'series'}_series{members[0][1]['series_number'] or ''}")
        while cid in used:
            cid += "_"
        used.add(cid)
        info: dict = {}

        prepare = sector and members[0][1]["modality"].upper() == "US"
        region = members[0][1].get("us_region")

        def build(files=files, info=info, prepare=prepare, region=region):
            stack, spacing = [], None
            for f in files:
                fr, sp, meta = read_dicom(f)
                spacing = spacing or (sp, meta["spacing_source"])
                stack.append(fr)
            dtypes = {a.dtype for a in stack}
            frames = np.concatenate([a.astype(np.float32) for a in stack]) if len(dtypes) > 1 else np.concatenate(stack)
            box = np.zeros(3, np.int64)
            if prepare:
                from ..echo.sector import find_sector, prepare_frames, prepared_spacing

                sec = find_sector(frames, region)
                frames = prepare_frames(frames, sec, sector_size)
                spacing = (prepared_spacing(spacing[0], sec, sector_size), spacing[1])
                box = np.array(sec.box, np.int64)
            frames = normalise_intensity(frames, intensity, str(files[0]))
            return {"frames": frames, "spacing": np.array([*spacing[0], spacing[1] != "unknown"], dtype=np.float64),
                    "sector": box}

        try:
            keys = [index.key(f) for f in files]
            key = digest("dicom", _VERSION, keys, intensity, *(("sector", sector_size) if prepare else ()))
            arrs = cached_arrays(key, build, ("frames", "spacing", "sector"), cache_dir, group="dicom")
        except ValueError as err:
            skipped.append(str(err))
            continue
        sp = np.asarray(arrs["spacing"])
        meta = dict(members[0][1])
        meta.pop("slice_position", None)
        meta.pop("orientation", None)
        meta.update(source=[str(f) for f in files], spacing_known=bool(sp[2]), volume=len(files) > 1)
        if prepare:
            # (top, left, side) of the square cut from the original frames
            meta["sector_box"] = [int(v) for v in np.asarray(arrs["sector"])]
        if not sp[2]:
            notes.append(f"{files[0]}: no pixel spacing tag or ultrasound calibration; spacing set to 1 pixel = 1.0 'mm'")
        cases.append(Case(cid, arrs["frames"], {}, (float(sp[0]), float(sp[1])), None, meta))  # type: ignore[arg-type]
    index.save()
    if not cases:
        reason = f"; skipped: {skipped[0]}" if skipped else ""
        raise ValueError(f"{root}: no usable DICOM image{reason}")
    from .folder import _common_dtype

    cases = _common_dtype(cases, notes)
    for c in cases:
        c.meta["dataset_skipped"] = skipped
        c.meta["dataset_notes"] = notes
    return cases
