"""Prediction inputs and outputs: new studies in their own formats, masks written back with their geometry.

One input file becomes one :class:`Study`: its frames as the model sees them
(before intensity normalisation) and everything needed to write the masks so
that they overlay the input in 3D Slicer and ITK-SNAP.

Formats and their geometry:

* **PNG, JPEG, BMP, TIFF** (Pillow): one picture, or the pages of a multi-page
  TIFF as frames; pixel size unknown.  Masks: PNG (one page) or multi-page TIFF.
* **NIfTI** (``.nii``, ``.nii.gz``; nibabel): a 2D image or a volume cut slice
  by slice along the voxel axis the model was trained on (the checkpoint's
  ``preprocess["axis"]``; ``k`` when it records none); a 4D volume's fourth axis
  holds the channels (Decathlon's modalities).  Masks: NIfTI with the same affine,
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

Mask values: every mask file above (PNG, TIFF, NIfTI, MetaImage, DICOM's
NIfTI or PNG sequence) holds the class indices ``0..K-1``, as the training
masks do: 0/1 for a two-class model, so a PNG mask looks black in an image
viewer. The mask video (``_mask.avi``) is for viewing: class ``c`` is grey
``c * (255 // (K - 1))`` (0/255 for two classes, 0/127/254 for three),
losslessly encoded; :func:`read_mask_video` turns it back into indices.

Orientation convention: volumes are cut by the training readers' own function
(:func:`sslseg.io.volumes.voxels_to_frames`): along ``k``, slice by slice with
``j`` as rows and ``i`` as columns; along another axis, the higher remaining
axis as rows.  The masks go back through its inverse
(:func:`sslseg.io.volumes.frames_to_voxels`) along the same axis.  A
multi-frame DICOM volume (MR, CT; frames along ``k``) is cut the same way, and
its masks go back onto its frames.  Pictures, single-frame DICOM, ultrasound
cines and videos are frames already: the axis does not apply to them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io.dicom import (
    corrupt_dicom_errors,
    dicom_affine,
    dicom_fps,
    dicom_pixels,
    dicom_spacing,
    open_dicom,
    ultrasound_region,
)
from ..io.files import (
    DICOM,
    EXTENSIONS,
    ITK,
    NIFTI,
    PICTURES,
    VIDEOS,
    channel_error,
    extension,
    is_dicom_file,
)
from ..io.pictures import luma, read_picture, write_pages, write_png_sequence
from ..io.video import read_video, write_video
from ..io.volumes import (
    frames_to_voxels,
    itk_grid,
    itk_slices,
    read_itk,
    read_nifti,
    voxels_to_frames,
    write_itk_like,
    write_nifti,
)

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
def supported(path: Path) -> bool:
    """A file :func:`read_study` reads: a known extension, or DICOM without one."""
    ext = extension(path)
    return ext in EXTENSIONS or (ext == "" and is_dicom_file(path))


def expand_inputs(inputs: list[str | os.PathLike],
                  skip: str | os.PathLike | None = None) -> list[tuple[Path, Path | None, str | None]]:
    """Files to predict on: ``(file, folder it was found under or None, error or None)``.

    A folder is searched recursively for supported files (others, such as a
    MetaImage's ``.raw`` data or a CSV, are passed over); a file named
    explicitly is always returned, with an error when it is missing or of an
    unsupported format, so the caller can report it and go on.  Files under
    ``skip`` (the output folder) are not searched: a second run never takes
    its own masks for inputs.
    """
    out: list[tuple[Path, Path | None, str | None]] = []
    skipped = Path(skip).expanduser().resolve() if skip is not None else None

    def wanted(f: Path) -> bool:
        if not f.is_file() or f.name.startswith(".") or not supported(f):
            return False
        return skipped is None or skipped not in f.resolve().parents

    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if wanted(f))
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
def read_study(path: str | os.PathLike, channels: int = 1, axis: int = 2) -> Study:
    """Read one file for a model with ``channels`` input channels; volumes are cut along voxel ``axis``.

    Raises:
        ValueError: unsupported format, unreadable or corrupt file, or a channel
            count that does not match the model (the message names the file).
    """
    path = Path(path)
    ext = extension(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if ext in PICTURES:
        study = _read_picture(path, channels)
    elif ext in NIFTI:
        study = _read_nifti(path, channels, axis)
    elif ext in ITK:
        study = _read_itk(path, channels, axis)
    elif ext in DICOM or (ext == "" and is_dicom_file(path)):
        try:
            study = _read_dicom(path, channels, axis)
        except corrupt_dicom_errors() as err:  # e.g. a geometry tag whose text is not a number
            msg = " ".join(str(err).split())
            raise UserError(msg if str(path) in msg else f"{path}: unreadable DICOM ({msg})") from None
    elif ext in VIDEOS:
        study = _read_video(path, channels)
    else:
        raise UserError(f"{path}: unsupported format {ext or '(no extension)'}; supported: {', '.join(EXTENSIONS)}")
    if study.frames.size == 0:
        raise UserError(f"{path}: the image is empty (shape {tuple(study.frames.shape)})")
    return study


def _read_picture(path: Path, channels: int) -> Study:
    pages = read_picture(path, channels)
    return Study(path, "picture", pages, None, None, {"pages": len(pages), "ext": extension(path)},
                 ["pixel size unknown (picture): areas in pixels"])


def _read_nifti(path: Path, channels: int, axis: int) -> Study:
    img, vox = read_nifti(path)
    shape = tuple(vox.shape)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    if vox.ndim == 4 and shape[3] == 1 and channels != 1:
        raise channel_error(path, 1, channels)
    spacing = (zooms[1], zooms[0]) if len(zooms) >= 2 else None
    if vox.ndim == 2:
        frames = vox.T[None]  # (i, j) -> (1, j, i): one picture, whatever the axis
    elif vox.ndim == 3 or (vox.ndim == 4 and shape[3] == 1):
        if channels != 1:
            raise channel_error(path, 1, channels)
        frames, spacing = voxels_to_frames(vox.reshape(shape[:3]), zooms[:3], axis)  # axis 2: (k, j, i)
    elif vox.ndim == 4:
        if shape[3] != channels:
            raise channel_error(
                path, shape[3], channels,
                " along the 4th axis; select the model's channel(s) (e.g. the training modality) first",
            )
        frames, spacing = voxels_to_frames(vox, zooms[:3], axis)  # axis 2: (k, c, j, i), (k, j, i) for one
    else:
        raise UserError(f"{path}: a {vox.ndim}D NIfTI image; expected 2D, 3D or 4D (channels last)")
    # the image (header, affine; its voxels are not kept) is the grid the masks are written on
    return Study(path, "nifti", np.ascontiguousarray(frames), spacing, None,
                 {"image": img, "ext": extension(path), "axis": axis})


def _read_itk(path: Path, channels: int, axis: int) -> Study:
    img = read_itk(path)
    nd = img.GetDimension()
    if nd not in (2, 3):
        raise UserError(f"{path}: a {nd}D image; expected 2D or 3D")
    comps = img.GetNumberOfComponentsPerPixel()
    arr = itk_slices(img)
    if comps == channels:
        frames = arr.transpose(0, 3, 1, 2) if comps > 1 else arr
    elif channels == 1 and comps in (3, 4):
        frames = luma(arr[..., :3])
    else:
        raise channel_error(path, comps, channels, " (pixel components)")
    sp = tuple(float(v) for v in img.GetSpacing())
    spacing = (sp[1], sp[0])
    if nd == 3:  # the slices along k back to voxels (i, j, k[, c]), cut as training cut them
        vox = frames.transpose(2, 1, 0) if frames.ndim == 3 else frames.transpose(3, 2, 0, 1)
        frames, spacing = voxels_to_frames(vox, sp, axis)
    # the grid the masks are written on (no pixels kept)
    geometry = {"reference": itk_grid(img), "ext": extension(path), "axis": axis}
    return Study(path, "itk", np.ascontiguousarray(frames), spacing, None, geometry)


def _read_dicom(path: Path, channels: int, axis: int = 2) -> Study:
    ds = open_dicom(path)
    arr = dicom_pixels(ds, path, channels)
    spacing, source = dicom_spacing(ds)
    if source == "unknown":  # no 1 mm guess at prediction: areas are then in pixels
        spacing = None
    notes = [f"pixel spacing from {source}" if spacing else "pixel spacing unknown: areas in pixels"]
    region = ultrasound_region(ds)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    modality = str(ds.get("Modality", ""))
    affine = dicom_affine(ds, spacing)
    geometry = {"affine": affine, "multiframe": nframes > 1, "modality": modality,
                "us_region": region["box"] if region else None, "axis": 2}
    if nframes > 1 and axis != 2 and modality.upper() != "US":
        # a multi-frame volume (enhanced MR or CT) for a model trained on volumes cut along another
        # voxel axis: its frames are k, so it is cut as the training reader cut (sslseg.io.volumes)
        if arr.ndim != 3:
            raise UserError(f"{path}: a {arr.shape[1]}-channel volume cannot be cut along voxel axis {axis}; "
                            "the model was trained on one-channel slices")
        zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
        arr, cut = voxels_to_frames(arr.transpose(2, 1, 0), zooms, axis)  # frames (k, j, i) -> voxels (i, j, k)
        spacing = cut if spacing else None
        geometry.update(axis=axis, multiframe=False)  # slices of a volume, not instants of a cine
        notes.append(f"volume cut along voxel axis {axis}, as in training")
    return Study(path, "dicom", arr, spacing, dicom_fps(ds), geometry, notes)


def _on_input_frames(study: Study, arr: np.ndarray) -> np.ndarray:
    """Maps ``(N, H, W)`` on the study's frames back onto its file's frames (a DICOM volume cut along another axis)."""
    axis = study.geometry.get("axis", 2)
    if study.kind != "dicom" or axis == 2:
        return arr
    return frames_to_voxels(arr, axis).transpose(2, 1, 0)  # voxels (i, j, k) -> the file's frames (k, j, i)


def _read_video(path: Path, channels: int) -> Study:
    if channels not in (1, 3):
        raise channel_error(path, 3, channels, " (video)")
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
    ``_mask.<ext>`` (and ``_mask.avi`` for videos and cines) are added. The mask files hold class
    indices ``0..K-1``; the mask video grey steps (:func:`mask_display`; module notes).
    """
    if labels.shape[0] != study.num_frames or labels.shape[-2:] != study.frames.shape[-2:]:
        raise UserError(f"{study.path}: {labels.shape} labels for frames of shape {study.frames.shape}")
    labels = labels.astype(_label_dtype(num_classes))
    out_base.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    if study.kind == "picture":
        labels = labels if labels.dtype == np.uint8 else labels.astype(np.uint16)
        out["mask"] = write_pages(labels, out_base, "_mask")
    elif study.kind == "nifti":
        out["mask"] = write_nifti(Path(f"{out_base}_mask{study.geometry['ext']}"), labels, like=study.geometry["image"],
                                  axis=study.geometry["axis"])
    elif study.kind == "itk":
        out["mask"] = write_itk_like(study.geometry["reference"], labels, Path(f"{out_base}_mask{study.geometry['ext']}"),
                                     study.geometry["axis"])
    elif study.kind == "dicom":
        labels = _on_input_frames(study, labels)
        if dicom_masks == "png":
            out["mask"] = write_png_sequence(labels, Path(f"{out_base}_mask"))
        elif dicom_masks == "nifti":
            out["mask"] = write_nifti(Path(f"{out_base}_mask.nii.gz"), labels, study.geometry["affine"])
        else:
            raise UserError(f"DICOM masks must be written as 'nifti' or 'png', got {dicom_masks!r}")
    if study.kind == "video" or study.is_cine:
        out["mask_video"] = write_video(mask_display(labels, num_classes), Path(f"{out_base}_mask.avi"),
                                        _rate(study), lossless=True)
    return out


def write_uncertainty(study: Study, var: np.ndarray, out_base: Path) -> Path:
    """Write a float32 map ``(N, H, W)`` on the input's grid (NIfTI for frames of DICOM and videos)."""
    var = var.astype(np.float32)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    if study.kind == "picture":
        return write_pages(var, out_base, "_uncertainty", ext=".tif")
    if study.kind == "nifti":
        return write_nifti(Path(f"{out_base}_uncertainty{study.geometry['ext']}"), var, like=study.geometry["image"],
                           axis=study.geometry["axis"])
    if study.kind == "itk":
        return write_itk_like(study.geometry["reference"], var, Path(f"{out_base}_uncertainty{study.geometry['ext']}"),
                              study.geometry["axis"])
    affine = study.geometry.get("affine")
    if affine is None:
        affine = np.diag([*(study.spacing or (1.0, 1.0))[::-1], 1.0, 1.0])
    return write_nifti(Path(f"{out_base}_uncertainty.nii.gz"), _on_input_frames(study, var), affine)


def write_overlay(study: Study, labels: np.ndarray, out_base: Path, num_classes: int) -> Path | None:
    """A colour overlay of the masks on the (grey) input: PNG for one frame, AVI for more.

    NIfTI and MetaImage volumes get none: their masks overlay in Slicer / ITK-SNAP.
    """
    if study.kind in ("nifti", "itk"):
        return None
    rgb = overlay_frames(display_frames(study.frames), labels, num_classes)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    if study.num_frames == 1 or study.kind == "picture":
        return write_pages(rgb, out_base, "_overlay")  # PNG, or a multi-page TIFF
    return write_video(rgb, Path(f"{out_base}_overlay.avi"), _rate(study), lossless=False)


def _rate(study: Study) -> Fraction:
    if "rate" in study.geometry:
        return study.geometry["rate"]
    return Fraction(study.fps).limit_denominator(1001) if study.fps else Fraction(30)


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


def read_mask_video(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Labels ``(N, H, W)`` back from a mask video written by :func:`write_mask`."""
    step = 255 // max(1, num_classes - 1)
    return np.rint(read_video(path)[0].astype(np.float32) / step).astype(np.int64)
