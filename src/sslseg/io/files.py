"""File names and extensions of the formats :mod:`sslseg.io` reads."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI = (".nii", ".nii.gz")
#: MetaImage and NRRD, read through SimpleITK
ITK = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUMES = NIFTI + ITK
DICOM = (".dcm", ".dicom", ".ima")
VIDEOS = (".avi", ".mp4", ".mov")
EXTENSIONS = PICTURES + VOLUMES + DICOM + VIDEOS

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def split_name(path: str | os.PathLike) -> tuple[str, str]:
    """``"a/b/x.nii.gz"`` -> ``("x", ".nii.gz")``; the extension is lower-cased, ``""`` when there is none."""
    name = Path(path).name
    low = name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext.lower()) if dot and stem else (name, "")


def extension(path: str | os.PathLike) -> str:
    """``"a/x.nii.gz"`` -> ``".nii.gz"``; lower-cased; ``""`` for none."""
    return split_name(path)[1]


def stem(path: str | os.PathLike) -> str:
    """The file name without its (possibly double) extension."""
    return split_name(path)[0]


def is_dicom_file(path: Path) -> bool:
    """The DICOM Part 10 preamble: ``DICM`` at byte 128 (for files without an extension)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def safe_id(text: str) -> str:
    """A case id usable as a file name."""
    return _SAFE.sub("_", text).strip("_") or "case"


def channel_error(path: Path, have: int, want: int, what: str = "") -> ValueError:
    """The one-line error for an image whose channel count is not the one asked for."""
    return ValueError(f"{path}: wrong channel count: the image has {have} channel(s){what}, the model expects {want}")


#: what a write meets when the disk (or the user's quota) is full
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def naming_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk met while writing ``path`` into an ``OSError`` that names ``path`` and says so.

    A write to an open file (``torch.save`` into it, a flush at close) fails with
    an ``OSError`` that names no file; the command line prints the file and the
    reason in one line (``sslseg.cli``).  Other errors pass unchanged.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise OSError(err.errno, f"disk full ({err.strerror or os.strerror(err.errno)}): not written, the "
                      "previous file, if any, is kept; free some space and run the same command again",
                      str(path)) from None
