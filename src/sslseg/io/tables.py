"""CSV tables: reading with required columns, writing atomically, and EchoNet-Dynamic's ``FileList.csv``.

``FileList.csv`` (Ouyang et al., Nature 2020): one row per video, ``FileName``
(with or without ``.avi``), ``EF``, ``ESV``, ``EDV``, ``FrameHeight``,
``FrameWidth``, ``FPS``, ``NumberOfFrames``, ``Split`` (TRAIN / VAL / TEST).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import UserError
from .files import atomic_write

__all__ = ["FILELIST_COLUMNS", "filelist_name", "read_filelist", "read_table", "write_table"]

#: the columns the EchoNet-Dynamic reader needs; the frame sizes, FPS and count are optional
FILELIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "Split")


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def read_table(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of a CSV table as dicts, column names and values stripped of spaces.

    A byte-order mark is not part of the first column name.

    Raises:
        ValueError: a missing file or column, a row with more fields than the
            header names, or a file that is not UTF-8 CSV (the message names
            the file, and the line where there is one).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in cols]
            if missing:
                raise UserError(f"{path}: missing column(s) {_listing(missing)}; found {', '.join(cols) or 'none'}")
            rows = []
            for row in reader:
                if None in row:  # more fields than the header names
                    raise UserError(f"{path} line {reader.line_num}: {len(cols) + len(row[None])} fields, "
                                    f"the header names {len(cols)}")
                rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
            return rows
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise UserError(f"{path}: not a readable CSV table ({err})") from None


def write_table(path: str | os.PathLike, rows: list[dict], fieldnames: list[str] | tuple[str, ...] | None = None,
                extrasaction: str = "raise") -> Path:
    """Write rows as a CSV table, atomically: a temporary file beside ``path``, then ``os.replace``.

    A failed write (a full disk) leaves the old file as it was, and no stray temporary.

    Args:
        fieldnames: the columns; default every key of the rows, in order of first appearance.
        extrasaction: ``"raise"`` for a key outside ``fieldnames``, or ``"ignore"``.
    """
    path = Path(path)
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_write(path) as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction=extrasaction)
        w.writeheader()
        w.writerows(rows)
    return path


def filelist_name(file_name: str) -> str:
    """A ``FileName`` entry as the video's name: stripped, without ``.avi``."""
    name = file_name.strip()
    return name[:-4] if name.lower().endswith(".avi") else name


def read_filelist(path: str | os.PathLike, required: tuple[str, ...] = FILELIST_COLUMNS) -> list[dict[str, str]]:
    """The rows of an EchoNet-Dynamic ``FileList.csv`` (:func:`read_table`, with the columns ``required``)."""
    return read_table(path, required)
