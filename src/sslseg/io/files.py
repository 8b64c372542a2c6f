"""File names and extensions of the formats :mod:`sslseg.io` reads."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def writer_id() -> str:
    """``host-pid`` of this process, as its temporary files carry it (dots and dashes of the host name dropped)."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files of ``path`` that :func:`atomic_write` makes (``.<name>.<host>-<pid>.<random>.tmp``)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def _writer_gone(tmp: Path, name: str) -> bool:
    """Whether the process that made ``tmp`` is known to be dead (this host, its pid no longer running)."""
    owner = tmp.name[len(name) + 2 : -len(".tmp")].rpartition(".")[0]  # "<host>-<pid>"
    host, _, pid = owner.rpartition("-")
    if host != writer_id().rpartition("-")[0] or not pid.isdigit():
        return False  # another machine's writer (shared storage), or a name of another form: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def remove_temporaries(path: str | os.PathLike, only_dead: bool = False) -> list[Path]:
    """Delete the temporaries of ``path`` left by writers killed mid-write (SIGKILL, a power cut).

    Args:
        only_dead: delete only those whose writer is known to be dead on this host;
            False: every one (the caller owns the folder, so nobody else writes ``path``).

    Returns:
        the files deleted.
    """
    path = Path(path)
    gone = []
    for tmp in temporaries(path):
        if only_dead and not _writer_gone(tmp, path.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            gone.append(tmp)
    return gone


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", sync: bool = False) -> Iterator[IO]:
    """Write ``path`` all at once or not at all: the one writer of every output sslseg keeps.

    Yields a file open on a temporary beside ``path`` (``mode`` ``"w"``: text, UTF-8, no newline
    translation; ``"wb"``: bytes); when the block ends without an error the temporary replaces
    ``path`` (``os.replace``: atomic on POSIX and Windows), so a reader sees the old file or the new
    one, never half of one. A failed or interrupted write removes its temporary and leaves the old
    file as it was; a full disk becomes one ``OSError`` naming ``path`` (:func:`naming_disk_full`).

    The file gets the permissions of any new file (0666 less the umask: 0644 usually), not
    ``mkstemp``'s 0600, so colleagues on shared storage can read it. The temporary's name carries
    its writer (``.<name>.<host>-<pid>.<random>.tmp``): one left by a writer killed mid-write
    (SIGKILL) is deleted by the next successful write of the same file. ``sync``: ``fsync`` before
    the rename (checkpoints: the bytes are on disk before the name points at them).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_disk_full(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_id()}.", suffix=".tmp", dir=path.parent)
        try:
            if hasattr(os, "fchmod"):  # mkstemp's 0600 would hide the file from colleagues on shared storage
                os.fchmod(fd, 0o666 & ~_umask())
            text = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
            with os.fdopen(fd, mode, **text) as f:
                yield f
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    remove_temporaries(path, only_dead=True)


def discard(path: str | os.PathLike) -> None:
    """Delete ``path`` and every temporary of it (a finished run's ``last.pt``, superseded by its checkpoint)."""
    Path(path).unlink(missing_ok=True)
    remove_temporaries(path)
