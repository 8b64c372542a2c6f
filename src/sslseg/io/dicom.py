"""DICOM images and cines (pydicom): pixels as the model should see them, pixel spacing, geometry.

Pixels (:func:`dicom_pixels`):

* colour to grey: ``YBR_*`` data keep their luma channel ``Y`` (exact, no
  round trip through RGB); ``RGB`` and ``PALETTE COLOR`` (after the palette
  lookup) become ITU-R BT.601 luma; a three-channel model gets RGB instead;
* ``MONOCHROME1`` (white = low) is inverted so that bright means high signal;
* the modality rescale (``RescaleSlope``/``RescaleIntercept``) is applied;
* data of at most 8 stored bits within 0..255 become ``uint8``.

Pixel spacing, ``(row mm, column mm)`` (:func:`dicom_spacing`), from the first
of: ``PixelSpacing``; the ultrasound region calibration
(``SequenceOfUltrasoundRegions``: the largest 2D region whose physical units
are cm, ``PhysicalDeltaY``/``PhysicalDeltaX`` x 10); ``ImagerPixelSpacing``;
else ``(1, 1)`` and ``"unknown"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import channel_error
from .pictures import luma

__all__ = [
    "corrupt_dicom_errors",
    "dicom_affine",
    "dicom_fps",
    "dicom_pixels",
    "dicom_spacing",
    "header_meta",
    "open_dicom",
    "read_dicom",
    "read_header",
    "ultrasound_region",
]

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
        raise UserError(f"{path}: not a readable DICOM file ({err})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise UserError(f"{path}: DICOM file without pixel data ({ds.get('Modality', 'no modality')})")
    return ds


def _decode(ds, pi: str, channels: int) -> np.ndarray:
    """The stored pixels; YBR data as ``Y, Cb, Cr`` planes for a grey result, palette colours looked up."""
    if pi.startswith("YBR") and channels == 1:
        try:
            from pydicom.pixels import pixel_array  # pydicom >= 3

            arr = pixel_array(ds, as_rgb=False)  # keep Y, C_B, C_R: Y is the grey image itself
        except ImportError:  # pydicom 2.x returns YBR data unconverted
            arr = ds.pixel_array
    else:
        arr = ds.pixel_array  # YBR -> RGB by pydicom for three-channel models
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:  # 16-bit palette entries: keep the top byte
            arr = (arr >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
    return arr


def dicom_pixels(ds, path: Path, channels: int = 1) -> np.ndarray:
    """Decoded pixels as the model should see them (see the module notes).

    Shape:
        ``(N, H, W)`` for ``channels=1``; ``(N, 3, H, W)`` for ``channels=3``
        (colour data only).  Values: ``uint8``, or the rescaled raw values.

    Raises:
        ValueError: undecodable pixel data, a frame count that is not
            ``NumberOfFrames``, an unsupported photometric interpretation, or a
            channel count the data cannot give (the message names the file).
    """
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    colour = spp == 3 or pi == "PALETTE COLOR"
    # colour goes to grey for a one-channel model; grey cannot become colour
    if channels not in ((1, 3) if colour else (1,)):
        raise channel_error(path, 3 if colour else 1, channels, f" ({pi})")
    try:
        arr = _decode(ds, pi, channels)
    except Exception as err:  # decoders raise many types (missing plug-in, corrupt stream)
        raise UserError(f"{path}: cannot decode the pixel data ({type(err).__name__}: {err})") from None
    if arr.ndim == (3 if spp > 1 or pi == "PALETTE COLOR" else 2):
        arr = arr[None]  # one frame
    if nframes > 1 and arr.shape[0] != nframes:
        raise UserError(f"{path}: {arr.shape[0]} frames decoded, NumberOfFrames is {nframes}")
    if channels == 3:
        arr = arr.transpose(0, 3, 1, 2)
    elif pi.startswith("YBR"):
        arr = arr[..., 0]
    elif pi in ("RGB", "PALETTE COLOR"):
        arr = luma(arr)
    elif spp != 1:
        raise UserError(f"{path}: photometric interpretation {pi} with {spp} samples is not supported")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or inter != 0:
        arr = arr.astype(np.float32) * slope + inter
    if pi == "MONOCHROME1":  # white = low signal: invert so that bright means high
        arr = arr.max() + arr.min() - arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
    if arr.dtype != np.uint8 and arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 255 \
            and int(ds.get("BitsStored", 16)) <= 8:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)


def header_meta(ds) -> dict:
    """What the readers keep of a DICOM header: modality, series, instance and frame facts, geometry."""
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


def read_header(path: Path) -> tuple[dict, tuple[int, int]]:
    """The header facts (:func:`header_meta`) and ``(rows, columns)`` of a DICOM file, pixels not read.

    Raises:
        ValueError: not a readable DICOM file, or one without pixel data (the message names it).
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if "Rows" in ds and "Columns" in ds:
            return header_meta(ds), (int(ds.Rows), int(ds.Columns))
        modality = ds.get("Modality", "no modality")
    except corrupt_dicom_errors():
        raise UserError(f"{path}: not a readable DICOM file") from None
    raise UserError(f"{path}: DICOM file without pixel data ({modality})")


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float], dict]:
    """One DICOM file -> grey frames ``(N, H, W)`` (``uint8``, or raw values as ``float32``), spacing, metadata.

    The metadata are :func:`header_meta`'s and ``spacing_source`` (the tag the spacing came from).

    Raises:
        ValueError: not DICOM, no pixel data, or undecodable (the message names the file).
    """
    path = Path(path)
    try:
        ds = open_dicom(path)
        frames = dicom_pixels(ds, path)
    except ValueError:
        raise
    except corrupt_dicom_errors() as err:  # a damaged element, met while reading the pixel description
        raise UserError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float32)
    try:
        spacing, source = dicom_spacing(ds)
        meta = header_meta(ds)
    except corrupt_dicom_errors() as err:  # a tag whose text is not a number, a damaged element
        raise UserError(f"{path}: unreadable geometry tags ({err})") from None
    meta["spacing_source"] = source
    return frames, spacing, meta


def dicom_fps(ds) -> float | None:
    """Frames per second of a cine (``FrameTime``, ``CineRate``, ``RecommendedDisplayFrameRate``); None when unknown."""
    for tag, to_fps in (("FrameTime", lambda v: 1000.0 / v), ("CineRate", float),
                        ("RecommendedDisplayFrameRate", float)):
        v = ds.get(tag)
        try:
            if v is not None and float(v) > 0:
                return float(to_fps(float(v)))
        except (TypeError, ValueError):
            continue
    return None


def dicom_affine(ds, spacing: tuple[float, float] | None) -> np.ndarray:
    """Voxel ``(i = column, j = row, k = frame)`` -> RAS mm, from the patient geometry when present."""
    row_mm, col_mm = spacing or (1.0, 1.0)
    thick = 1.0
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            if ds.get(tag) is not None and float(ds.get(tag)) > 0:
                thick = float(ds.get(tag))
                break
        except (TypeError, ValueError):
            continue
    affine = np.diag([col_mm, row_mm, thick, 1.0])
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        r = np.array([float(v) for v in iop[:3]])  # direction of increasing column index i
        c = np.array([float(v) for v in iop[3:]])  # direction of increasing row index j
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = r * col_mm, c * row_mm, np.cross(r, c) * thick
        lps[:3, 3] = [float(v) for v in ipp]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    return affine
