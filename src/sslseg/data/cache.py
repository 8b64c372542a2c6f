"""Decode once: a local cache of decoded frames and masks, memory-mapped on use.

Readers of real data sets decode each source file (an AVI, a NIfTI volume, a
DICOM cine) once, store the result as an ``.npy`` file and hand the pipeline a
:class:`MappedArray` that reads frames from it on demand, so a data set of ten
thousand videos costs no decoding after the first run and almost no memory.

Where, and under which name:

* the cache folder is ``~/.cache/sslseg``, or ``$SSLSEG_CACHE``, or the
  ``cache_dir`` option of a reader (in that order of precedence: option, then
  environment, then default);
* an entry is named by a *content key*: a BLAKE2b digest of the source files'
  bytes (see :func:`content_key`) together with the reader's name, its decode
  version and every option that changes the decoded array.  Moving, renaming or
  touching a file does not invalidate its entry; changing its content does.

Never half-written: an entry is written to a temporary file in the same folder
and then renamed over its final name with ``os.replace`` (atomic on POSIX and
Windows), so a process killed at any moment leaves either no entry or a whole
one.  An entry that fails to open (a disk that lost power before the data
reached it) is treated as missing and rebuilt.

Why a lazy wrapper rather than ``np.load(..., mmap_mode="r")`` per case: on
POSIX every open memory map keeps a duplicated file descriptor, and the usual
limit is 1024 per process; ten thousand EchoNet cases would exceed it.
:class:`MappedArray` opens its file on first access and a small LRU keeps at
most :data:`MAX_OPEN_MAPS` maps open.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.files import atomic_write

__all__ = [
    "MAX_OPEN_MAPS",
    "MappedArray",
    "StackMasks",
    "cache_dir",
    "cached_arrays",
    "content_key",
    "digest",
    "KeyIndex",
    "save_npy_atomic",
]

MAX_OPEN_MAPS = 128
# Files up to this size are hashed whole; larger ones are sampled (see content_key).
WHOLE_FILE_LIMIT = 4 << 20
_EDGE = 1 << 20  # bytes hashed at each end of a large file
_BLOCK = 64 << 10  # bytes of each interior sample of a large file
_N_BLOCKS = 8


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$SSLSEG_CACHE``, else ``~/.cache/sslseg``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("SSLSEG_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sslseg"


def digest(*parts: object) -> str:
    """A 32-hex-digit BLAKE2b digest of ``parts`` (strings, numbers, JSON-able values)."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def content_key(path: str | os.PathLike) -> str:
    """A 32-hex-digit digest of a file's content (not of its name, time or place).

    Files up to 4 MiB (an EchoNet AVI, a CAMUS image, a small NIfTI) are hashed
    whole.  Larger files are hashed by their size, their first and last MiB and
    eight 64 KiB blocks spread evenly in between, so that a warm start over a
    large data set reads about 2.5 MiB per file instead of all of it.  Two
    *different* acquisitions never agree on all of those bytes (headers,
    compressed streams, index tables and noise all differ); the cost is that an
    edit confined to an unsampled part of a large file, keeping its size, would
    not be noticed; delete the cache folder after editing data in place.

    Raises:
        ValueError: the file cannot be read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        h = hashlib.blake2b(digest_size=16)
        h.update(size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            if size <= WHOLE_FILE_LIMIT:
                h.update(f.read())
            else:
                h.update(f.read(_EDGE))
                span = size - 2 * _EDGE - _BLOCK
                for k in range(_N_BLOCKS):
                    f.seek(_EDGE + span * k // max(1, _N_BLOCKS - 1))
                    h.update(f.read(_BLOCK))
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    return h.hexdigest()


class KeyIndex:
    """Remembers content keys by ``(path, size, mtime)`` so warm starts need not re-read files.

    The key itself is always a content digest; this index only avoids
    recomputing it while a file's size and modification time are unchanged.
    One small JSON file per data-set root, written atomically.
    """

    def __init__(self, root: str | os.PathLike, cache: str | os.PathLike | None = None) -> None:
        self.root = Path(root).resolve()
        self.path = cache_dir(cache) / "keys" / f"{digest(str(self.root))}.json"
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def key(self, path: str | os.PathLike) -> str:
        path = Path(path)
        try:
            st = path.stat()
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
        rel = os.path.relpath(path.resolve(), self.root)
        hit = self.entries.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        key = content_key(path)
        self.entries[rel] = [st.st_size, st.st_mtime_ns, key]
        self.changed = True
        return key

    def save(self) -> None:
        if not self.changed:
            return
        try:
            with atomic_write(self.path) as f:
                f.write(json.dumps(self.entries))
            self.changed = False
        except OSError:
            pass  # only a speed-up: a read-only cache folder must not stop loading


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (``.npy``) all at once (:func:`sslseg.io.files.atomic_write`)."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


# --------------------------------------------------------------------------- #
# lazily memory-mapped arrays
# --------------------------------------------------------------------------- #
_OPEN: OrderedDict[str, np.ndarray] = OrderedDict()
_LOCK = threading.Lock()


def _open_map(path: str) -> np.ndarray:
    with _LOCK:
        m = _OPEN.get(path)
        if m is not None:
            _OPEN.move_to_end(path)
            return m
    m = np.load(path, mmap_mode="r", allow_pickle=False)
    with _LOCK:
        _OPEN[path] = m
        while len(_OPEN) > MAX_OPEN_MAPS:
            _OPEN.popitem(last=False)  # the map (and its descriptor) closes when unreferenced
    return m


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a complete ``.npy`` file; ValueError when it is damaged or short."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if fortran:
        raise UserError(f"{path}: Fortran-ordered arrays are not used by the cache")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size != expected:
        raise UserError(f"{path}: {path.stat().st_size} bytes, expected {expected}")
    return tuple(int(s) for s in shape), dtype


class MappedArray:
    """A read-only array in an ``.npy`` file, memory-mapped when indexed.

    Behaves like the ``np.ndarray`` it holds for what the pipeline does with
    frames: ``shape``, ``dtype``, ``ndim``, ``len()``, indexing (returns an
    ordinary, writable in-memory array) and ``np.asarray`` (loads it all).
    Pickles as its path, so it can be sent to worker processes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        shape, dtype = _read_header(Path(path))
        self.shape: tuple[int, ...] = shape
        self.dtype: np.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        # a copy: callers may write to it, and it must not pin the map open
        return np.array(_open_map(self.path)[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = np.array(_open_map(self.path))
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"MappedArray(shape={self.shape}, dtype={self.dtype}, path={self.path!r})"


def cached_arrays(
    key: str,
    build: Callable[[], dict[str, np.ndarray]],
    names: Sequence[str],
    cache: str | os.PathLike | None = None,
    group: str = "arrays",
) -> dict[str, MappedArray]:
    """The arrays ``names`` stored under ``key``; ``build()`` makes and caches them when missing.

    ``build`` returns ``{name: array}`` for every name; it runs at most once per
    call, and only when some entry is missing or unreadable.  Entries live in
    ``<cache>/<group>/<key[:2]>/<key>.<name>.npy``.

    Raises:
        ValueError: from ``build`` (bad input), passed through unchanged; or
            the cache folder cannot be written.
    """
    folder = cache_dir(cache) / group / key[:2]
    paths = {n: folder / f"{key}.{n}.npy" for n in names}
    try:
        return {n: MappedArray(p) for n, p in paths.items()}
    except (OSError, ValueError):
        pass
    arrays = build()
    try:
        for n, p in paths.items():
            save_npy_atomic(p, arrays[n])
            with _LOCK:
                _OPEN.pop(str(p), None)  # a map of a replaced (damaged) entry must not be served
    except OSError as err:
        raise UserError(
            f"cannot write the frame cache in {folder} ({err.strerror or err}); "
            "set SSLSEG_CACHE or the reader option cache_dir to a writable folder"
        ) from None
    return {n: MappedArray(p) for n, p in paths.items()}


class StackMasks(Mapping):
    """``{frame index: (H, W) int64 mask}`` read on access from a cached label stack.

    The stack is a ``(K, H, W)`` integer array (``uint8`` in the cache, eight
    times smaller than ``int64``); ``rows[i]`` is the stack row of frame
    ``frames[i]``.  Every access returns a fresh ``int64`` array, as the
    :class:`~sslseg.data.sample.Case` contract asks, while memory holds none.
    """

    def __init__(self, stack: MappedArray | np.ndarray, frames: Sequence[int], rows: Sequence[int] | None = None) -> None:
        rows = list(frames) if rows is None else list(rows)
        if len(rows) != len(frames):
            raise UserError("StackMasks: frames and rows differ in length")
        self.stack = stack
        self._row = {int(f): int(r) for f, r in zip(frames, rows, strict=True)}

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.stack[self._row[index]], dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def __repr__(self) -> str:
        return f"StackMasks({len(self)} frames of {self.stack!r})"
