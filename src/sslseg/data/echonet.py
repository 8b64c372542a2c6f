"""EchoNet-Dynamic (``echonet:PATH``): apical four-chamber videos, LV tracings at ED and ES.

"10,030 apical-4-chamber echocardiography videos ... cropped and masked to
remove text and information outside of the scanning sector ... downsampled
into standardized 112x112 pixel videos" (Ouyang et al., Nature 2020,
https://doi.org/10.1038/s41586-020-2145-8).  Layout::

    PATH/FileList.csv          FileName (no .avi), EF, ESV, EDV, FrameHeight, FrameWidth,
                               FPS, NumberOfFrames, Split (TRAIN / VAL / TEST)
    PATH/VolumeTracings.csv    FileName (with .avi), X1, Y1, X2, Y2, Frame
    PATH/Videos/<FileName>.avi

Everything below follows the reference loader, ``echonet/datasets/echo.py``
of echonet/dynamic:

* a video's traced frames are listed in order of first appearance; "Largest
  (diastolic) frame is last": the **last** is ED ("large"), the **first** is ES
  ("small");
* per traced frame, the first row (the long axis) is dropped and the polygon
  is ``x = concat(X1[1:], flip(X2[1:]))``, ``y = concat(Y1[1:], flip(Y2[1:]))``,
  filled with ``skimage.draw.polygon(rint(y), rint(x), (H, W))``;
  :func:`polygon_mask` reproduces that fill exactly (pixel centres inside the
  polygon with rounded vertices, or on its boundary) without scikit-image;
* videos with fewer than two traced frames are dropped (here: counted and
  reported as skipped);
* the official ``Split`` column gives the split.

Spacing: EchoNet-Dynamic publishes no pixel calibration (each video was
resampled to 112x112 from its own depth and sector), so ``spacing`` is
``(1.0, 1.0)``: distances and HD95 are in pixels.  The summary says so.

Decoding: PyAV, luma plane only (the videos are grey; :mod:`sslseg.io.video`),
once per video into the local cache (:mod:`sslseg.data.cache`); ``Case.frames`` is a memory-mapped
``uint8`` ``(T, 112, 112)`` array and ``Case.masks`` rasterises the two
tracings on access (a few dozen vertices per mask instead of 2 x 100 kB of
``int64`` per video held in memory).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.tables import filelist_name, read_filelist, read_table
from ..io.video import decode_video
from .cache import KeyIndex, cached_arrays, digest
from .paths import entry_path
from .sample import Case, Cases

__all__ = [
    "TRACING_COLUMNS",
    "TracedMasks",
    "load_echonet",
    "polygon_mask",
    "read_tracings",
    "trace_polygon",
]

_VERSION = 1
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
SPLIT_NAMES = {"TRAIN": "train", "VAL": "val", "TEST": "test"}


# --------------------------------------------------------------------------- #
# tracings -> masks
# --------------------------------------------------------------------------- #
def polygon_mask(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill a polygon as ``skimage.draw.polygon(np.rint(y), np.rint(x), shape)`` does.

    A pixel ``(r, c)`` (its centre at integer coordinates) is set when it lies
    inside the polygon (even-odd rule), on one of its edges or on a vertex:
    O'Rourke's point-in-polygon test ("Computational Geometry in C", 2nd ed.,
    ch. 7), as used by scikit-image >= 0.16, with the vertices rounded first as
    the EchoNet reference does.  Like scikit-image, an outline that rounding
    folds back onto itself (a zero-width spike) leaves the doubly traced
    pixels out.

    Args:
        x, y: vertex columns and rows, ``(N,)`` (floats; rounded here).
        shape: ``(H, W)`` of the image.

    Returns:
        ``(H, W)`` bool mask.
    """
    h, w = shape
    xp = np.rint(np.asarray(x, dtype=np.float64))
    yp = np.rint(np.asarray(y, dtype=np.float64))
    out = np.zeros((h, w), dtype=bool)
    if xp.size < 3:
        return out
    r0, r1 = max(0, int(yp.min())), min(h - 1, int(math.ceil(yp.max())))
    c0, c1 = max(0, int(xp.min())), min(w - 1, int(math.ceil(xp.max())))
    if r1 < r0 or c1 < c0:
        return out
    nr, nc = r1 - r0 + 1, c1 - c0 + 1
    # O'Rourke's test for pixel (r, c), edge e from vertex e-1 to vertex e: with
    # y0 = y_e - r, y1 = y_{e-1} - r, the edge meets the pixel's row at column
    # q_e = (x_e y1 - x_{e-1} y0) / (y1 - y0).  A "right crossing" is an edge that
    # straddles the row from above (y0 > 0) != (y1 > 0) with q_e > c, a "left
    # crossing" one that straddles it from below with q_e < c.  Counting them per
    # row with histograms costs O(rows x (edges + columns)) instead of
    # O(pixels x edges).  Vertices are integers, so q_e is exact enough that
    # ceil/floor never round across an integer.
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    xa, ya = xp[None], yp[None] - rows  # vertex e
    xb, yb = np.roll(xp, 1)[None], np.roll(yp, 1)[None] - rows  # vertex e - 1
    up = (ya > 0) != (yb > 0)
    down = (ya < 0) != (yb < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (xa * yb - xb * ya) / (yb - ya)
    ridx = np.broadcast_to(np.arange(nr)[:, None], q.shape)
    # right crossings of pixel j: edges with j < k_e, k_e = ceil(q) - c0 (clipped to 0..nc)
    k = np.clip(np.ceil(q[up]) - c0, 0, nc).astype(np.int64)
    hist = np.bincount(ridx[up] * (nc + 1) + k, minlength=nr * (nc + 1)).reshape(nr, nc + 1)
    r_cnt = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    # left crossings of pixel j: edges with m_e <= j, m_e = floor(q) + 1 - c0
    m = np.clip(np.floor(q[down]) + 1 - c0, 0, nc).astype(np.int64)
    hist = np.bincount(ridx[down] * (nc + 1) + m, minlength=nr * (nc + 1)).reshape(nr, nc + 1)
    l_cnt = np.cumsum(hist, axis=1)[:, :nc]
    r_odd, l_odd = r_cnt % 2 == 1, l_cnt % 2 == 1
    # inside (odd right crossings) or on an edge (right and left parities differ)
    out[r0 : r1 + 1, c0 : c1 + 1] = r_odd | (r_odd != l_odd)
    on = (yp >= r0) & (yp <= r1) & (xp >= c0) & (xp <= c1)
    out[yp[on].astype(int), xp[on].astype(int)] = True  # vertices
    return out


def trace_polygon(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polygon of one traced frame from its ``(K, 4)`` rows ``X1, Y1, X2, Y2``.

    The first row is the long axis and is dropped; the outline runs down the
    ``(X1, Y1)`` ends of the remaining chords and back up their ``(X2, Y2)``
    ends: ``x = concat(X1[1:], flip(X2[1:]))`` (likewise ``y``).
    """
    rows = np.asarray(rows, dtype=np.float64)
    x = np.concatenate([rows[1:, 0], rows[1:, 2][::-1]])
    y = np.concatenate([rows[1:, 1], rows[1:, 3][::-1]])
    return x, y


class TracedMasks(Mapping):
    """``{frame: (H, W) int64 mask}`` rasterised on access from the tracing coordinates.

    Holds only the ``(K, 4)`` coordinate rows of each traced frame.
    """

    def __init__(self, traces: dict[int, np.ndarray], shape: tuple[int, int]) -> None:
        self.traces = {int(k): np.asarray(v, dtype=np.float32) for k, v in traces.items()}
        self.shape = (int(shape[0]), int(shape[1]))

    def __getitem__(self, frame: int) -> np.ndarray:
        x, y = trace_polygon(self.traces[frame])
        return polygon_mask(x, y, self.shape).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)

    def __repr__(self) -> str:
        return f"TracedMasks(frames={list(self.traces)}, shape={self.shape})"


# --------------------------------------------------------------------------- #
# tracings
# --------------------------------------------------------------------------- #
def read_tracings(path: str | os.PathLike) -> dict[str, dict[int, np.ndarray]]:
    """``VolumeTracings.csv`` -> ``{file stem: {frame: (K, 4) rows X1, Y1, X2, Y2}}``.

    Frames keep their order of first appearance (the reference's ``frames``
    list) and rows their file order, also when a frame's rows are interleaved
    with another frame's.

    Raises:
        ValueError: missing columns or a value that is not a number (names file and line).
    """
    path = Path(path)
    rows = read_table(path, TRACING_COLUMNS)
    out: dict[str, dict[int, list]] = {}
    for n, row in enumerate(rows, start=2):
        try:
            vals = [float(row[c]) for c in ("X1", "Y1", "X2", "Y2")]
            frame = int(float(row["Frame"]))
        except (ValueError, OverflowError):  # OverflowError: a frame of inf
            raise UserError(
                f"{path} line {n}: X1, Y1, X2, Y2 and Frame must be numbers, got "
                f"{[row[c] for c in TRACING_COLUMNS[1:]]}"
            ) from None
        if not all(math.isfinite(v) for v in vals):
            raise UserError(f"{path} line {n}: coordinates must be finite numbers")
        out.setdefault(filelist_name(row["FileName"]), {}).setdefault(frame, []).append(vals)
    return {k: {f: np.array(v) for f, v in d.items()} for k, d in out.items()}


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- #
# the reader
# --------------------------------------------------------------------------- #
def _present(table: Path) -> Path:
    if not table.is_file():
        raise UserError(f"{table}: file not found (is PATH the EchoNet-Dynamic folder?)")
    return table


def load_echonet(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> list[Case]:
    """EchoNet-Dynamic as cases: one per video, ES and ED traced, the official split.

    Args:
        path: the folder holding ``FileList.csv``, ``VolumeTracings.csv`` and ``Videos/``.
        limit: use only the first ``limit`` rows of ``FileList.csv`` (quick trials).
        cache_dir: cache folder (default ``$SSLSEG_CACHE`` or ``~/.cache/sslseg``).
        progress: show a progress bar while decoding videos not yet cached.

    Returns:
        Cases with ``frames`` uint8 ``(T, H, W)`` (memory-mapped), ``masks`` at
        the ES and ED frames (1 = LV cavity), ``spacing`` (1, 1) (pixels; no
        calibration is published, ``spacing_known`` False), ``split`` from the
        ``Split`` column, ``phases`` ``{ES index: "ES", ED index: "ED"}`` and
        ``meta`` with ``ef``, ``edv``, ``esv``, ``fps``, ``traced_frames`` and
        ``source``.  ``Cases.skipped`` lists the skipped videos and why.

    Raises:
        ValueError: a missing CSV or column, a malformed number in the
            tracings, or no usable video (each message names the file).
    """
    from tqdm.auto import tqdm

    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    filelist, traces = root / "FileList.csv", root / "VolumeTracings.csv"
    rows = read_filelist(_present(filelist))
    tracings = read_tracings(_present(traces))
    videos = root / "Videos"
    if not videos.is_dir():
        raise UserError(f"{videos}: folder not found (EchoNet-Dynamic keeps its AVIs in Videos/)")
    if limit is not None:
        if int(limit) < 1:
            raise UserError(f"limit must be a positive number of videos, got {limit}")
        rows = rows[: int(limit)]

    skipped: list[str] = []
    listed = {filelist_name(r["FileName"]) for r in rows}
    if limit is None:
        for name in sorted(set(tracings) - listed):
            skipped.append(f"{name}: tracings for a video that is not in FileList.csv")

    todo: list[tuple[dict, str, Path, str]] = []
    seen: set[str] = set()
    index = KeyIndex(root, cache_dir)
    for n, row in enumerate(rows, start=2):
        name = filelist_name(row["FileName"])
        if not name:
            skipped.append(f"FileList.csv line {n}: empty FileName")
            continue
        if name in seen:
            skipped.append(f"{name}: listed twice in FileList.csv (first kept)")
            continue
        seen.add(name)
        split = SPLIT_NAMES.get(row["Split"].upper())
        if split is None:
            skipped.append(f"{name}: Split {row['Split']!r} is not TRAIN, VAL or TEST")
            continue
        traced = tracings.get(name, {})
        if len(traced) < 2:
            skipped.append(f"{name}: {len(traced)} traced frame(s), two are needed")
            continue
        video = entry_path(videos, f"{name}.avi", f"{filelist} line {n} FileName")  # inside Videos/
        if not video.is_file():
            skipped.append(f"{name}: video file {video} not found")
            continue
        try:
            todo.append((row, split, video, index.key(video)))
        except ValueError as err:
            skipped.append(str(err))

    cases: list[Case] = []
    bar = tqdm(total=len(todo), desc="EchoNet videos (decoded once, then cached)", unit="video",
               disable=not progress or None, leave=False)
    for row, split, video, vkey in todo:
        name = filelist_name(row["FileName"])
        try:
            arr = cached_arrays(digest("echonet-luma", _VERSION, vkey),
                                lambda video=video: {"frames": decode_video(video)},
                                ("frames",), cache_dir, group="frames")["frames"]
        except ValueError as err:
            skipped.append(f"{name}: {err}")
            bar.update()
            continue
        bar.update()
        traced = tracings[name]
        order = list(traced)  # first appearance
        es, ed = order[0], order[-1]
        t = arr.shape[0]
        bad = [f for f in (es, ed) if not 0 <= f < t]
        if bad:
            skipped.append(f"{name}: traced frame {bad[0]} is outside the video's {t} frames")
            continue
        if es == ed:
            skipped.append(f"{name}: ES and ED tracings are on the same frame {es}")
            continue
        h, w = arr.shape[1:]
        fh, fw = _number(row.get("FrameHeight", "")), _number(row.get("FrameWidth", ""))
        if fh and fw and (int(fh), int(fw)) != (h, w):
            skipped.append(f"{name}: video is {h}x{w}, FileList.csv says {int(fh)}x{int(fw)}")
            continue
        meta = {
            "ef": _number(row.get("EF", "")),
            "edv": _number(row.get("EDV", "")),
            "esv": _number(row.get("ESV", "")),
            "fps": _number(row.get("FPS", "")),
            "traced_frames": order,
            "source": str(video),
            "split_source": "FileList.csv Split",
            "label_names": {0: "background", 1: "LV cavity"},
        }
        masks = TracedMasks({es: traced[es], ed: traced[ed]}, (h, w))
        cases.append(Case(name, arr, masks, (1.0, 1.0), split, meta,  # type: ignore[arg-type]
                          spacing_known=False, modality="US", phases={es: "ES", ed: "ED"}))
    bar.close()
    index.save()
    if not cases:
        reason = f"; e.g. {skipped[0]}" if skipped else ""
        raise UserError(f"{root}: no usable video{reason}")
    notes = [
        "EchoNet-Dynamic publishes no pixel calibration (videos resampled to 112x112): "
        "spacing is 1 pixel = 1.0 'mm', so HD95 and other distances are in pixels"
    ]
    return Cases(cases, skipped, notes)
