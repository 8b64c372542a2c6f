"""Prediction inputs and outputs: new studies in their own formats, masks written back with their geometry.

One input file becomes one :class:`Study`: its frames as the model sees them
(before intensity normalisation) and everything needed to write the masks so
that they overlay the input in 3D Slicer and ITK-SNAP.

Formats and their geometry:

* **PNG, JPEG, BMP, TIFF** (Pillow): one picture, or the pages of a multi-page
  TIFF as frames; pixel size unknown.  Masks: PNG (one page) or multi-page TIFF.
* **NIfTI** (``.nii``, ``.nii.gz``; nibabel): a 2D image or a volume cut slice
  by slice along its last spatial axis ``k``; a 4D volume's fourth axis holds
  the channels (Decathlon's modalities).  Masks: NIfTI with the same affine,
  header (sform/qform codes, zooms, units) and spatial shape.
* **MetaImage / NRRD** (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``; SimpleITK):
  as NIfTI; masks in the input's format with the same size, origin, spacing
  and direction.
* **DICOM** (pydicom): single-frame images and multi-frame cines.  Colour to
  grey as the training readers do (``YBR_*``: the luma plane ``Y``; ``RGB`` and
  ``PALETTE COLOR``: ITU-R BT.601 luma); ``MONOCHROME1`` inverted; the modality
  rescale applied.  Pixel spacing from ``PixelSpacing``, else the ultrasound
  region calibration (``SequenceOfUltrasoundRegions``, ``PhysicalDeltaY/X`` in
  cm x 10), else ``ImagerPixelSpacing``.  Masks: NIfTI (frames along ``k``; the
  patient geometry when ``ImagePositionPatient``/``ImageOrientationPatient``
  are present, converted from DICOM's LPS to NIfTI's RAS) or a PNG sequence.
* **Video** (``.avi``, ``.mp4``, ``.mov``; PyAV): every frame, grey (FFmpeg's
  YUV -> grey, as the EchoNet-Dynamic reader does).  Masks: a mask video and an
  overlay video with the input's frame count and rate.

Orientation convention (the same as the training readers): a volume of voxel
axes ``(i, j, k)`` is shown slice ``k`` by slice with ``j`` as rows and ``i`` as
columns; the masks go back through the inverse of exactly that transposition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI = (".nii", ".nii.gz")
ITK = (".mha", ".mhd", ".nrrd", ".nhdr")
DICOM = (".dcm", ".dicom", ".ima")
VIDEOS = (".avi", ".mp4", ".mov")
EXTENSIONS = PICTURES + NIFTI + ITK + DICOM + VIDEOS

#: class colours of the overlays (RGB), class 1 first
COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240]],
    dtype=np.float32,
)


@dataclass
class Study:
    """One input file, read for prediction.

    Attributes:
        path: the file.
        kind: ``"picture"``, ``"nifti"``, ``"itk"``, ``"dicom"`` or ``"video"``.
        frames: ``(N, H, W)`` (one channel) or ``(N, C, H, W)``; ``uint8`` or
            raw values (any other dtype), before intensity normalisation.
        spacing: pixel size ``(row mm, column mm)``; None when the file does not
            say (pictures, videos).
        fps: frames per second of a video or cine; None when unknown or not a video.
        geometry: what the writer needs to reproduce the input's grid (per kind).
        notes: remarks for the user (e.g. where the spacing came from).
    """

    path: Path
    kind: str
    frames: np.ndarray
    spacing: tuple[float, float] | None = None
    fps: float | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def is_echo(self) -> bool:
        """An echo clip: a video, or an ultrasound DICOM (``Modality`` US); it gets the echo-sector preparation."""
        return self.kind == "video" or (self.kind == "dicom" and self.geometry.get("modality", "").upper() == "US")

    @property
    def is_cine(self) -> bool:
        """A video or a multi-frame DICOM with more than one frame: the echo measurements apply."""
        return self.kind == "video" or (self.kind == "dicom" and self.geometry.get("multiframe", False))


# --------------------------------------------------------------------------- #
# which files
# --------------------------------------------------------------------------- #
def extension(path: str | os.PathLike) -> str:
    """``"a/x.nii.gz"`` -> ``".nii.gz"``; lower-cased; ``""`` for none."""
    name = Path(path).name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def stem(path: str | os.PathLike) -> str:
    """The file name without its (possibly double) extension."""
    name = Path(path).name
    ext = extension(path)
    return name[: len(name) - len(ext)] if ext and name.lower().endswith(ext) else name


def is_dicom_file(path: Path) -> bool:
    """The DICOM Part 10 preamble: ``DICM`` at byte 128 (for files without an extension)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def supported(path: Path) -> bool:
    ext = extension(path)
    return ext in EXTENSIONS or (ext == "" and is_dicom_file(path))


def expand_inputs(inputs: list[str | os.PathLike]) -> list[tuple[Path, Path | None, str | None]]:
    """Files to predict on: ``(file, folder it was found under or None, error or None)``.

    A folder is searched recursively for supported files (others, such as a
    MetaImage's ``.raw`` data or a CSV, are passed over); a file named
    explicitly is always returned, with an error when it is missing or of an
    unsupported format, so the caller can report it and go on.
    """
    out: list[tuple[Path, Path | None, str | None]] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".") and supported(f))
            if not found:
                out.append((p, None, f"{p}: no supported file in this folder ({', '.join(EXTENSIONS)})"))
            out.extend((f, p, None) for f in found)
        elif not p.exists():
            out.append((p, None, f"{p}: file not found"))
        elif not supported(p):
            ext = extension(p) or "no extension (and not DICOM)"
            out.append((p, None, f"{p}: unsupported format {ext}; supported: {', '.join(EXTENSIONS)}"))
        else:
            out.append((p, None, None))
    return out


# --------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------- #
def read_study(path: str | os.PathLike, channels: int = 1) -> Study:
    """Read one file for a model with ``channels`` input channels.

    Raises:
        ValueError: unsupported format, unreadable or corrupt file, or a channel
            count that does not match the model (the message names the file).
    """
    path = Path(path)
    ext = extension(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if ext in PICTURES:
        study = _read_picture(path, channels)
    elif ext in NIFTI:
        study = _read_nifti(path, channels)
    elif ext in ITK:
        study = _read_itk(path, channels)
    elif ext in DICOM or (ext == "" and is_dicom_file(path)):
        from ..data.dicom import corrupt_dicom_errors

        try:
            study = _read_dicom(path, channels)
        except corrupt_dicom_errors() as err:  # e.g. a geometry tag whose text is not a number
            msg = " ".join(str(err).split())
            raise ValueError(msg if str(path) in msg else f"{path}: unreadable DICOM ({msg})") from None
    elif ext in VIDEOS:
        study = _read_video(path, channels)
    else:
        raise ValueError(f"{path}: unsupported format {ext or '(no extension)'}; supported: {', '.join(EXTENSIONS)}")
    if study.frames.size == 0:
        raise ValueError(f"{path}: the image is empty (shape {tuple(study.frames.shape)})")
    return study


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of ``(..., 3)`` RGB; ``uint8`` stays ``uint8`` (rounded), as in training."""
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if rgb.dtype == np.uint8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y.astype(np.float32)


def _channel_error(path: Path, have: int, want: int, what: str = "") -> ValueError:
    return ValueError(
        f"{path}: wrong channel count: the image has {have} channel(s){what}, the model expects {want}"
    )


def _read_picture(path: Path, channels: int) -> Study:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    pages = []
    try:
        with Image.open(path) as im:
            for page in ImageSequence.Iterator(im):
                colour = page.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "PA")
                if colour:
                    a = np.asarray(page.convert("RGB"))
                    grey = np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
                    if channels == 3:
                        a = a.transpose(2, 0, 1)
                    elif channels == 1:
                        # grey stored as colour keeps its values (no rounding through luma)
                        a = a[..., 0] if grey else luma(a)
                    else:
                        raise _channel_error(path, 3, channels, f" ({page.mode})")
                else:
                    if channels != 1:
                        raise _channel_error(path, 1, channels, f" ({page.mode})")
                    a = np.asarray(page)
                    if a.dtype == bool:
                        a = a.astype(np.uint8)
                pages.append(np.array(a))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable image ({err})") from None
    if len({p.shape for p in pages}) != 1:
        raise ValueError(f"{path}: pages of different sizes")
    return Study(path, "picture", np.stack(pages), None, None, {"pages": len(pages), "ext": extension(path)},
                 ["pixel size unknown (picture): areas in pixels"])


def _read_nifti(path: Path, channels: int) -> Study:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        vox = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for broken or truncated files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    shape = tuple(vox.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    if vox.ndim == 4 and shape[3] == 1 and channels != 1:
        raise _channel_error(path, 1, channels)
    if vox.ndim == 2:
        frames = vox.T[None]  # (i, j) -> (1, j, i)
    elif vox.ndim == 3 or (vox.ndim == 4 and shape[3] == 1):
        if channels != 1:
            raise _channel_error(path, 1, channels)
        frames = vox.reshape(shape[:3]).transpose(2, 1, 0)  # (i, j, k) -> (k, j, i)
    elif vox.ndim == 4:
        if shape[3] != channels:
            raise _channel_error(
                path, shape[3], channels,
                " along the 4th axis; select the model's channel(s) (e.g. the training modality) first",
            )
        frames = vox.transpose(2, 3, 1, 0)  # (i, j, k, c) -> (k, c, j, i)
        if channels == 1:
            frames = frames[:, 0]
    else:
        raise ValueError(f"{path}: a {vox.ndim}D NIfTI image; expected 2D, 3D or 4D (channels last)")
    spacing = (zooms[1], zooms[0]) if len(zooms) >= 2 else None
    geometry = {"affine": img.affine.copy(), "header": img.header.copy(), "shape": shape,
                "image_class": type(img), "ext": extension(path)}
    return Study(path, "nifti", np.ascontiguousarray(frames), spacing, None, geometry)


def _read_itk(path: Path, channels: int) -> Study:
    import SimpleITK as sitk

    from ..data.folder import check_metaimage

    check_metaimage(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise ValueError(f"{path}: not a readable image ({msg})") from None
    nd = img.GetDimension()
    if nd not in (2, 3):
        raise ValueError(f"{path}: a {nd}D image; expected 2D or 3D")
    comps = img.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(img)  # (k, j, i[, c]): already slices of rows j and columns i
    if nd == 2:
        arr = arr[None]
    if comps == channels:
        frames = arr.transpose(0, 3, 1, 2) if comps > 1 else arr
    elif channels == 1 and comps in (3, 4):
        frames = luma(arr[..., :3])
    else:
        raise _channel_error(path, comps, channels, " (pixel components)")
    sp = img.GetSpacing()
    # a reference image of the same grid (no pixels kept): size, origin, spacing, direction
    ref = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(img)
    geometry = {"reference": ref, "ext": extension(path)}
    return Study(path, "itk", np.ascontiguousarray(frames), (float(sp[1]), float(sp[0])), None, geometry)


def dicom_spacing(ds) -> tuple[tuple[float, float] | None, str]:
    """Pixel spacing ``(row mm, column mm)`` of a DICOM data set and the tag it came from; None when unknown.

    The training reader's rule (:func:`sslseg.data.dicom.dicom_spacing`), without its 1 mm fallback.
    """
    from ..data.dicom import dicom_spacing as reader_spacing

    spacing, source = reader_spacing(ds)
    return (None, source) if source == "unknown" else (spacing, source)


def _dicom_fps(ds) -> float | None:
    for tag, to_fps in (("FrameTime", lambda v: 1000.0 / v), ("CineRate", float),
                        ("RecommendedDisplayFrameRate", float)):
        v = ds.get(tag)
        try:
            if v is not None and float(v) > 0:
                return float(to_fps(float(v)))
        except (TypeError, ValueError):
            continue
    return None


def _dicom_affine(ds, spacing: tuple[float, float] | None) -> np.ndarray:
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


def _read_dicom(path: Path, channels: int) -> Study:
    from ..data.dicom import open_dicom

    ds = open_dicom(path)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    colour = spp == 3 or pi == "PALETTE COLOR"
    # colour goes to grey for a one-channel model; grey cannot become colour
    if channels not in ((1, 3) if colour else (1,)):
        raise _channel_error(path, 3 if colour else 1, channels, f" ({pi})")
    try:
        from pydicom.pixels import apply_color_lut, pixel_array

        if pi.startswith("YBR") and channels == 1:
            arr = pixel_array(ds, as_rgb=False)  # keep Y, C_B, C_R: Y is the grey image itself
        else:
            arr = ds.pixel_array  # YBR -> RGB by pydicom for 3-channel models
        if pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            if arr.dtype != np.uint8:  # 16-bit palette entries: keep the top byte
                arr = (arr >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
    except Exception as err:  # decoders raise many types (missing plug-in, corrupt stream)
        raise ValueError(f"{path}: cannot decode the pixel data ({type(err).__name__}: {err})") from None
    if (not colour and arr.ndim == 2) or (colour and arr.ndim == 3):
        arr = arr[None]
    if nframes > 1 and arr.shape[0] != nframes:
        raise ValueError(f"{path}: {arr.shape[0]} frames decoded, NumberOfFrames is {nframes}")
    if colour:
        if channels == 1:
            arr = arr[..., 0] if pi.startswith("YBR") else luma(arr)
        else:
            arr = arr.transpose(0, 3, 1, 2)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or inter != 0:
        arr = arr.astype(np.float32) * slope + inter
    if pi == "MONOCHROME1":  # white = low signal: invert so that bright means high, as in training
        arr = arr.max() + arr.min() - arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
    if arr.dtype != np.uint8 and arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 255 \
            and int(ds.get("BitsStored", 16)) <= 8:
        arr = arr.astype(np.uint8)
    spacing, source = dicom_spacing(ds)
    notes = [f"pixel spacing from {source}" if spacing else "pixel spacing unknown: areas in pixels"]
    fps = _dicom_fps(ds)
    from ..data.dicom import ultrasound_region

    region = ultrasound_region(ds)
    geometry = {"affine": _dicom_affine(ds, spacing), "multiframe": nframes > 1,
                "modality": str(ds.get("Modality", "")), "us_region": region["box"] if region else None}
    return Study(path, "dicom", np.ascontiguousarray(arr), spacing, fps, geometry, notes)


def _read_video(path: Path, channels: int) -> Study:
    from ..data.echonet import read_video

    if channels not in (1, 3):
        raise _channel_error(path, 3, channels, " (video)")
    # grey exactly as the EchoNet-Dynamic training reader decodes it
    arr, rate = read_video(path, rgb=channels == 3)
    if channels == 3:
        arr = arr.transpose(0, 3, 1, 2)
    return Study(path, "video", arr, None, float(rate) if rate else None, {"rate": rate or Fraction(30)},
                 ["pixel size unknown (video): areas in pixels"])


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #
def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int16


def write_mask(study: Study, labels: np.ndarray, out_base: Path, num_classes: int,
               dicom_masks: str = "nifti") -> dict[str, Path]:
    """Write label maps ``(N, H, W)`` on the input's grid; returns ``{"mask": path, ...}``.

    ``out_base`` is the output path without suffix (``out/dir/name``); suffixes
    ``_mask.<ext>`` (and ``_mask.avi`` for videos and cines) are added.
    """
    if labels.shape[0] != study.num_frames or labels.shape[-2:] != study.frames.shape[-2:]:
        raise ValueError(f"{study.path}: {labels.shape} labels for frames of shape {study.frames.shape}")
    labels = labels.astype(_label_dtype(num_classes))
    out_base.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    if study.kind == "picture":
        labels = labels if labels.dtype == np.uint8 else labels.astype(np.uint16)
        out["mask"] = _write_pages(labels, out_base, "_mask")
    elif study.kind == "nifti":
        out["mask"] = write_nifti_like(study, labels, Path(f"{out_base}_mask{study.geometry['ext']}"))
    elif study.kind == "itk":
        out["mask"] = write_itk_like(study, labels, Path(f"{out_base}_mask{study.geometry['ext']}"))
    elif study.kind == "dicom":
        if dicom_masks == "png":
            out["mask"] = _write_png_sequence(labels, Path(f"{out_base}_mask"))
        elif dicom_masks == "nifti":
            out["mask"] = write_frames_nifti(labels, study.geometry["affine"], Path(f"{out_base}_mask.nii.gz"))
        else:
            raise ValueError(f"DICOM masks must be written as 'nifti' or 'png', got {dicom_masks!r}")
    if study.kind == "video" or study.is_cine:
        out["mask_video"] = write_video(mask_display(labels, num_classes), Path(f"{out_base}_mask.avi"),
                                        _rate(study), lossless=True)
    return out


def write_uncertainty(study: Study, var: np.ndarray, out_base: Path) -> Path:
    """Write a float32 map ``(N, H, W)`` on the input's grid (NIfTI for frames of DICOM and videos)."""
    var = var.astype(np.float32)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    if study.kind == "picture":
        return _write_pages(var, out_base, "_uncertainty", ext=".tif")
    if study.kind == "nifti":
        return write_nifti_like(study, var, Path(f"{out_base}_uncertainty{study.geometry['ext']}"))
    if study.kind == "itk":
        return write_itk_like(study, var, Path(f"{out_base}_uncertainty{study.geometry['ext']}"))
    affine = study.geometry.get("affine")
    if affine is None:
        affine = np.diag([*(study.spacing or (1.0, 1.0))[::-1], 1.0, 1.0])
    return write_frames_nifti(var, affine, Path(f"{out_base}_uncertainty.nii.gz"))


def write_overlay(study: Study, labels: np.ndarray, out_base: Path, num_classes: int) -> Path | None:
    """A colour overlay of the masks on the (grey) input: PNG for one frame, AVI for more.

    NIfTI and MetaImage volumes get none: their masks overlay in Slicer / ITK-SNAP.
    """
    if study.kind in ("nifti", "itk"):
        return None
    rgb = overlay_frames(display_frames(study.frames), labels, num_classes)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    if study.num_frames == 1:
        from PIL import Image

        path = Path(f"{out_base}_overlay.png")
        Image.fromarray(rgb[0]).save(path)
        return path
    if study.kind == "picture":
        return _write_pages(rgb, out_base, "_overlay", ext=".tif")
    return write_video(rgb, Path(f"{out_base}_overlay.avi"), _rate(study), lossless=False)


def _rate(study: Study) -> Fraction:
    if "rate" in study.geometry:
        return study.geometry["rate"]
    return Fraction(study.fps).limit_denominator(1001) if study.fps else Fraction(30)


def write_nifti_like(study: Study, data: np.ndarray, path: Path) -> Path:
    """``(N, H, W)`` frames back to the input NIfTI's voxel layout, affine and header."""
    import nibabel as nib

    shape = study.geometry["shape"]
    if len(shape) == 2:
        vox = data[0].T  # (1, j, i) -> (i, j)
    else:
        vox = data.transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
        if len(shape) == 4 and shape[3] == 1:
            vox = vox[..., None]  # keep the input's (i, j, k, 1) shape
    hdr = study.geometry["header"].copy()
    hdr.set_data_dtype(vox.dtype)
    # labels and probabilities are stored as they are: no intensity scaling from the input's header
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    # affine=None: the copied header's sform, qform, their codes and the zooms are written as read,
    # bit for bit (passing the affine would re-derive the quaternion and round it)
    img = study.geometry["image_class"](np.ascontiguousarray(vox), None, hdr)
    nib.save(img, str(path))
    return path


def write_itk_like(study: Study, data: np.ndarray, path: Path) -> Path:
    """``(N, H, W)`` frames to an image with the input's size, origin, spacing and direction."""
    import SimpleITK as sitk

    ref = study.geometry["reference"]
    arr = data[0] if ref.GetDimension() == 2 else data
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def write_frames_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Frames ``(N, H, W)`` as a NIfTI volume ``(i = column, j = row, k = frame)``."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def _write_pages(data: np.ndarray, out_base: Path, suffix: str, ext: str | None = None) -> Path:
    """One page -> PNG (or ``ext``), several -> multi-page TIFF.

    ``uint8`` pages are saved as 8-bit grey (or RGB for ``(H, W, 3)``), ``uint16``
    as 16-bit, ``float32`` as 32-bit float (TIFF only).
    """
    from PIL import Image

    if ext is None:
        ext = ".png" if data.shape[0] == 1 else ".tif"
    elif data.shape[0] > 1:
        ext = ".tif"
    path = Path(f"{out_base}{suffix}{ext}")
    pages = [Image.fromarray(np.ascontiguousarray(p)) for p in data]
    if len(pages) == 1:
        pages[0].save(path)
    else:
        pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def _write_png_sequence(labels: np.ndarray, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(labels.shape[0] - 1)))
    for i, m in enumerate(labels):
        Image.fromarray(np.ascontiguousarray(m)).save(folder / f"{i:0{width}d}.png")
    return folder


def mask_display(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Label ``c`` -> grey ``c * (255 // (K - 1))``: visible, and invertible by that step."""
    step = 255 // max(1, num_classes - 1)
    return (labels.astype(np.int64) * step).clip(0, 255).astype(np.uint8)


def display_frames(frames: np.ndarray) -> np.ndarray:
    """Frames ``(N, H, W)`` or ``(N, C, H, W)`` -> ``uint8`` ``(N, H, W, 3)`` for viewing."""
    x = frames
    if x.ndim == 4:
        x = x[:, :3].transpose(0, 2, 3, 1) if x.shape[1] >= 3 else x[:, 0]
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        lo, hi = float(np.min(x)), float(np.percentile(x, 99.5))
        x = np.clip((x - lo) / max(hi - lo, 1e-8) * 255, 0, 255).astype(np.uint8)
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    return x


def overlay_frames(rgb: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.4) -> np.ndarray:
    """Blend class colours into ``(N, H, W, 3)`` ``uint8`` frames (background untouched)."""
    out = rgb.astype(np.float32)
    for c in range(1, num_classes):
        m = labels == c
        out[m] = (1 - alpha) * out[m] + alpha * COLOURS[(c - 1) % len(COLOURS)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_video(frames: np.ndarray, path: Path, rate: Fraction, lossless: bool) -> Path:
    """``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB ``uint8`` frames to an AVI at ``rate`` frames/s.

    Masks use the lossless PNG codec (labels come back exactly); overlays
    Motion JPEG (small, plays everywhere).
    """
    import av

    grey = frames.ndim == 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png" if lossless else "mjpeg", rate=rate)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = ("gray" if grey else "rgb24") if lossless else "yuvj444p"
        if not lossless:
            stream.codec_context.qmin, stream.codec_context.qmax = 2, 4  # near-lossless overlays
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray" if grey else "rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mask_video(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Labels ``(N, H, W)`` back from a mask video written by :func:`write_mask`."""
    import av

    step = 255 // max(1, num_classes - 1)
    with av.open(str(path)) as container:
        grey = [f.to_ndarray(format="gray") for f in container.decode(container.streams.video[0])]
    return np.rint(np.stack(grey).astype(np.float32) / step).astype(np.int64)
