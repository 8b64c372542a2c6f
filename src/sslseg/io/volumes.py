"""Volumes: NIfTI (nibabel), MetaImage and NRRD (SimpleITK); voxels cut into frames and put back.

Voxels come in NIfTI and MetaImage order ``(i, j[, k[, c]])``; a frame of a
volume cut along ``k`` has ``j`` as rows and ``i`` as columns (see
:mod:`sslseg.io`).  :func:`read_voxels` also reads pictures and DICOM files, as
``(columns, rows, frames)``, so that every image file can be cut the same way.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import ITK, NIFTI, PICTURES, VOLUMES, split_name
from .pictures import luma, read_picture

#: the files :func:`read_voxels` reads (DICOM also without an extension)
IMAGE_FILES = PICTURES + VOLUMES + (".dcm",)

#: bytes per voxel of the MetaImage element types
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def check_metaimage(path: Path) -> None:
    """Refuse a ``.mha`` whose header SimpleITK's reader could crash on (seen in fuzzing: a damaged header
    aborted the process instead of raising).

    Checks the header fields the voxels depend on: ``NDims``, ``DimSize``, ``ElementType``,
    ``ElementDataFile = LOCAL`` and, for uncompressed data, that the file holds every voxel.
    A ``.mhd`` or ``.nhdr`` (voxels in a separate file) is checked by :func:`check_data_file`;
    ``.nrrd`` goes to SimpleITK unchecked.

    Raises:
        ValueError: naming the file and the field.
    """
    if path.suffix.lower() in (".mhd", ".nhdr"):
        check_data_file(path)
        return
    if path.suffix.lower() != ".mha":
        return
    head = path.read_bytes()[:65536]
    fields: dict[str, str] = {}
    end = 0
    for line in head.split(b"\n"):
        end += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            raise UserError(f"{path}: damaged MetaImage header (a line without '=')")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        raise UserError(f"{path}: damaged MetaImage header (no ElementDataFile)")
    try:
        nd = int(fields["NDims"])
        dims = [int(v) for v in fields["DimSize"].split()]
        size = _MET_BYTES[fields["ElementType"]] * int(fields.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError) as err:
        raise UserError(f"{path}: damaged MetaImage header (NDims, DimSize, ElementType: {err})") from None
    if not 1 <= nd <= 4 or len(dims) != nd or min(dims) < 1 or size < 1:
        raise UserError(f"{path}: damaged MetaImage header (NDims {nd}, DimSize {fields['DimSize']!r})")
    if fields["ElementDataFile"] != "LOCAL":
        raise UserError(f"{path}: a .mha holds its voxels (ElementDataFile = LOCAL), "
                        f"not {fields['ElementDataFile']!r}")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    if not compressed and path.stat().st_size - end < size * int(np.prod(dims)):
        raise UserError(f"{path}: truncated MetaImage: fewer bytes than DimSize x ElementType")


def _data_files(path: Path) -> list[str]:
    """The voxel files a detached header (``.mhd``: ``ElementDataFile``; ``.nhdr``: ``data file``) names."""
    lines = path.read_bytes()[:65536].decode("latin-1").splitlines()
    mhd = path.suffix.lower() == ".mhd"
    for n, line in enumerate(lines):
        if mhd:
            key, sep, value = line.partition("=")
            found = sep and key.strip() == "ElementDataFile"
        else:
            key, sep, value = line.partition(":")
            found = sep and key.strip().lower() in ("data file", "datafile")
        if not found:
            continue
        value = value.strip()
        words = value.split()
        if value.upper() == "LOCAL" or not words:
            return []
        if words[0].upper() == "LIST":  # one file a line after this one
            return [ln.strip() for ln in lines[n + 1:] if ln.strip()]
        # MetaImage "pattern%03d.raw 1 10 1" and NRRD "pattern%03d.raw 1 10 1 [2]": the pattern's folder counts
        return [words[0]] if "%" in words[0] and len(words) >= 4 else [value]
    return []


def check_data_file(path: Path) -> None:
    """Refuse a detached header (``.mhd``, ``.nhdr``) whose voxel file lies outside the header's own folder.

    An absolute name or one that climbs out (``../../x.raw``) would read pixels from anywhere on the
    machine; a data set's files stay in its folder (names in sub-folders are fine).

    Raises:
        ValueError: one line naming the header and the voxel file it names.
    """
    for name in _data_files(path):
        norm = name.replace("\\", "/")  # Windows separators climb out as well
        drive = len(norm) > 1 and norm[1] == ":"
        if norm.startswith("/") or drive or posixpath.normpath(norm).split("/")[0] == "..":
            field = "ElementDataFile" if path.suffix.lower() == ".mhd" else "data file"
            raise UserError(f"{path}: {field} {name!r} lies outside the header's folder; voxel files must sit "
                            "beside their header (or below it)")


def read_nifti(path: Path):
    """A NIfTI file: the nibabel image (affine, header) and its voxels ``(i, j[, k[, c]])``.

    Raises:
        ValueError: not a readable NIfTI file (the message names it).
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        vox = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for broken or truncated files
        raise UserError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    return img, vox


def read_itk(path: Path):
    """A MetaImage or NRRD file as a SimpleITK image (damaged ``.mha`` headers refused first).

    Raises:
        ValueError: not a readable image (the message names it).
    """
    import SimpleITK as sitk

    check_metaimage(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise UserError(f"{path}: not a readable image ({msg})") from None


def itk_slices(img) -> np.ndarray:
    """The pixels of a 2D or 3D SimpleITK image as slices ``(S, rows j, columns i[, components])``.

    SimpleITK's array order ``(k, j, i[, c])`` already is that; a 2D image is one slice.
    """
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)
    return arr[None] if img.GetDimension() == 2 else arr


def itk_grid(img):
    """A pixel-less SimpleITK image with ``img``'s size, origin, spacing and direction (for :func:`write_itk_like`)."""
    import SimpleITK as sitk

    ref = sitk.Image(img.GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(img)
    return ref


def read_voxels(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read an image file as voxels ``(i, j[, k[, c]])`` and their sizes in mm.

    NIfTI through nibabel, MetaImage/NRRD through SimpleITK (colour -> BT.601
    luma), pictures through Pillow (colour -> luma), DICOM through
    :mod:`sslseg.io.dicom`.  Pictures and DICOM come back as ``(columns, rows, frames)``.

    Raises:
        ValueError: unknown extension or unreadable file (the message names it).
    """
    path = Path(path)
    _, ext = split_name(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if ext in NIFTI:
        img, vox = read_nifti(path)
        return vox, tuple(float(z) for z in img.header.get_zooms())
    if ext in ITK:
        import SimpleITK as sitk

        img = read_itk(path)
        arr = sitk.GetArrayFromImage(img)  # (k, j, i[, c]) -> (i, j, k[, c])
        nd = img.GetDimension()
        vox = arr.transpose(tuple(reversed(range(nd))) + tuple(range(nd, arr.ndim)))
        if img.GetNumberOfComponentsPerPixel() == 3 and vox.ndim == nd + 1:
            vox = luma(vox)
        return vox, tuple(float(s) for s in img.GetSpacing())
    if ext in PICTURES:
        # (N, H, W) -> voxel order (i = column, j = row, k = page)
        return read_picture(path).transpose(2, 1, 0), (1.0, 1.0, 1.0)
    if ext == ".dcm" or ext == "":
        from .dicom import read_dicom

        frames, spacing, _ = read_dicom(path)
        return frames.transpose(2, 1, 0), (spacing[1], spacing[0], 1.0)
    raise UserError(f"{path}: unknown image format {ext!r}; use one of {', '.join(IMAGE_FILES)}")


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
        raise UserError(f"expected a 2D, 3D or 4D image, got {vox.ndim} dimensions")
    if not 0 <= axis <= 2:
        raise UserError(f"slicing axis must be 0, 1 or 2, got {axis}")
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


def frames_to_voxels(frames: np.ndarray, axis: int = 2) -> np.ndarray:
    """The inverse of :func:`voxels_to_frames` for a 3D volume: frames ``(S, rows, cols)`` -> voxels ``(i, j, k)``.

    Masks predicted on a volume's frames go back to its voxel grid through this,
    so that a volume cut along ``axis`` is put back along ``axis``.
    """
    if not 0 <= axis <= 2:
        raise UserError(f"slicing axis must be 0, 1 or 2, got {axis}")
    a, b = (d for d in range(3) if d != axis)
    # voxels_to_frames took voxel axes (axis, b, a) as frame axes (0, 1, 2)
    return np.ascontiguousarray(frames.transpose(tuple(np.argsort((axis, b, a)))))


def write_nifti(path: Path, frames: np.ndarray, affine: np.ndarray | None = None, *, like=None,
                axis: int = 2) -> Path:
    """Frames ``(N, H, W)`` or ``(N, C, H, W)`` as a NIfTI volume ``(i = column, j = row, k = frame[, c])``.

    Args:
        affine: voxel -> mm (RAS); written as both qform and sform (code 1), units mm.
        like: a nibabel image read by :func:`read_nifti` whose frames these are:
            its voxel shape (2D, or a trailing axis of 1, is kept), header
            (sform/qform and their codes, zooms, units) and image class are
            reproduced bit for bit; its intensity scaling is not (labels and
            probabilities are stored as they are).
        axis: with ``like``, the voxel axis ``like`` was cut along
            (:func:`voxels_to_frames`); the frames go back through :func:`frames_to_voxels`.
    """
    import nibabel as nib

    if like is None:
        vox = frames.transpose(2, 1, 0) if frames.ndim == 3 else frames.transpose(3, 2, 0, 1)
        img = nib.Nifti1Image(np.ascontiguousarray(vox), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, str(path))
        return path
    shape = like.shape
    if len(shape) == 2:
        vox = frames[0].T  # (1, j, i) -> (i, j)
    else:
        vox = frames_to_voxels(frames, axis)  # axis 2: (k, j, i) -> (i, j, k)
        if len(shape) == 4 and shape[3] == 1:
            vox = vox[..., None]  # keep the input's (i, j, k, 1) shape
    hdr = like.header.copy()
    hdr.set_data_dtype(vox.dtype)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    # affine=None: the copied header's sform, qform, their codes and the zooms are written as read,
    # bit for bit (passing the affine would re-derive the quaternion and round it)
    nib.save(type(like)(np.ascontiguousarray(vox), None, hdr), str(path))
    return path


def write_itk_like(reference, frames: np.ndarray, path: Path, axis: int = 2) -> Path:
    """Frames ``(N, H, W)`` to an image with ``reference``'s size, origin, spacing and direction (SimpleITK).

    ``axis``: the voxel axis a 3D ``reference`` was cut along (:func:`voxels_to_frames`).
    """
    import SimpleITK as sitk

    # SimpleITK's array order is (k, j, i): the frames of a cut along k
    arr = frames[0] if reference.GetDimension() == 2 else frames_to_voxels(frames, axis).transpose(2, 1, 0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.CopyInformation(reference)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path
