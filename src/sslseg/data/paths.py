"""Data stays inside its folder: paths that a data set lists or holds, refused when they leave it.

A data set's files are read from its folder only. An entry in ``dataset.json``
or ``cases.csv`` that is absolute or climbs out with ``..``, and a file or
folder that is a symbolic link pointing outside, is refused with one line
naming it. ``SSLSEG_ALLOW_OUTSIDE=1`` in the environment allows them (a
deliberate layout of links, e.g. to a shared archive).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from ..errors import UserError

ALLOW_ENV = "SSLSEG_ALLOW_OUTSIDE"


def outside_allowed() -> bool:
    """Whether the user allowed data outside the data set's folder (``SSLSEG_ALLOW_OUTSIDE=1``)."""
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def entry_path(root: str | os.PathLike, entry, where: str) -> Path:
    """``root / entry`` for a path listed in a data set's table, refused when it is not a relative path inside ``root``.

    Args:
        root: the data set's folder.
        entry: the listed value (must be a string).
        where: the file and field, for the message (``"dataset.json training[3].image"``).

    Raises:
        ValueError: not a string, absolute, or leaving ``root`` (also through a link).
    """
    if not isinstance(entry, str) or not entry.strip() or "\x00" in entry:
        raise UserError(f"{where}: {entry!r} is not a file path")
    if outside_allowed():
        return Path(root) / entry
    if PurePath(entry).is_absolute() or Path(entry).drive or ".." in PurePath(entry).parts:
        raise UserError(f"{where}: {entry!r} leaves the data set's folder (absolute or '..' path); "
                        f"give a path inside {root} (or set {ALLOW_ENV}=1)")
    path = Path(root) / entry
    check_inside(root, path, where)
    return path


def check_inside(root: str | os.PathLike, path: str | os.PathLike, where: str | None = None) -> Path:
    """``path`` itself, refused when it resolves (through symbolic links) to a place outside ``root``.

    Raises:
        ValueError: one line naming the path and where it leads.
    """
    path = Path(path)
    if outside_allowed():
        return path
    real_root = Path(root).resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        name = f"{where}: " if where else ""
        raise UserError(f"{name}{path} is a link to {real}, outside the data set's folder {root}; "
                        f"copy it in (or set {ALLOW_ENV}=1)")
    return path
