"""The decode-once cache: content keys, atomic writes, lazy memory maps, label stacks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from sslseg.data import cache as C
from sslseg.data.batches import FramePool, LabelledSet, Normalizer
from sslseg.data.sample import Case


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def test_cache_dir_precedence(tmp_path, monkeypatch):
    assert C.cache_dir("/x/y") == Path("/x/y")
    assert C.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("SSLSEG_CACHE")
    assert C.cache_dir() == Path.home() / ".cache" / "sslseg"


def test_content_key_follows_content_not_name_or_time(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"hello world" * 100)
    b.write_bytes(b"hello world" * 100)
    os.utime(b, (1, 1))
    assert C.content_key(a) == C.content_key(b)
    b.write_bytes(b"hello world" * 99 + b"hello worle")
    assert C.content_key(a) != C.content_key(b)


def test_content_key_large_file_sees_head_middle_and_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "WHOLE_FILE_LIMIT", 1000)
    monkeypatch.setattr(C, "_EDGE", 100)
    monkeypatch.setattr(C, "_BLOCK", 50)
    data = bytearray(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    p = tmp_path / "big.bin"
    p.write_bytes(bytes(data))
    base = C.content_key(p)
    for pos in (0, 9_999, 100 + (10_000 - 250) * 3 // 7):  # head, tail, start of the 4th sampled block
        changed = bytearray(data)
        changed[pos] ^= 0xFF
        p.write_bytes(bytes(changed))
        assert C.content_key(p) != base, pos
    p.write_bytes(bytes(data) + b"x")  # size is part of the key
    assert C.content_key(p) != base


def test_key_index_reuses_keys_until_the_file_changes(tmp_path, monkeypatch):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    idx = C.KeyIndex(tmp_path)
    k = idx.key(p)
    idx.save()
    calls = []
    monkeypatch.setattr(C, "content_key", lambda path: calls.append(path) or "other")
    assert C.KeyIndex(tmp_path).key(p) == k and not calls  # remembered across instances
    p.write_bytes(b"abcd")
    assert C.KeyIndex(tmp_path).key(p) == "other" and calls


def test_cached_arrays_builds_once_and_maps(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"frames": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "masks": np.ones((1, 3, 4), np.uint8)}

    a = C.cached_arrays("k" * 32, build, ("frames", "masks"))
    b = C.cached_arrays("k" * 32, build, ("frames", "masks"))
    assert len(calls) == 1
    fr = b["frames"]
    assert isinstance(fr, C.MappedArray)
    assert fr.shape == (2, 3, 4) and fr.dtype == np.uint8 and fr.ndim == 3 and len(fr) == 2
    np.testing.assert_array_equal(fr[1], np.arange(12, 24).reshape(3, 4))
    np.testing.assert_array_equal(np.asarray(a["frames"]), np.arange(24).reshape(2, 3, 4))
    view = fr[0]
    view[0, 0] = 99  # indexing gives a private, writable copy
    assert fr[0][0, 0] == 0
    assert pickle.loads(pickle.dumps(fr)).path == fr.path


def test_killed_write_leaves_no_entry_and_no_temporary(tmp_path, monkeypatch):
    """A process dying inside np.save leaves the cache as if nothing had been written."""
    real_save = np.save

    def dying_save(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # what a Ctrl-C in the middle of the write raises

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        C.cached_arrays("d" * 32, lambda: {"frames": np.zeros((2, 4, 4), np.uint8)}, ("frames",))
    folder = tmp_path / "cache" / "arrays"
    assert [p for p in folder.rglob("*") if p.is_file()] == []
    monkeypatch.setattr(np, "save", real_save)
    out = C.cached_arrays("d" * 32, lambda: {"frames": np.ones((2, 4, 4), np.uint8)}, ("frames",))
    assert np.asarray(out["frames"]).sum() == 32


def test_damaged_entry_is_rebuilt(tmp_path):
    C.cached_arrays("e" * 32, lambda: {"frames": np.ones((4, 8, 8), np.uint8)}, ("frames",))
    (p,) = (tmp_path / "cache" / "arrays").rglob("*.npy")
    p.write_bytes(p.read_bytes()[:-10])  # e.g. a power cut before the data reached the disk
    out = C.cached_arrays("e" * 32, lambda: {"frames": np.full((4, 8, 8), 7, np.uint8)}, ("frames",))
    assert np.asarray(out["frames"]).max() == 7


def test_many_cases_do_not_exhaust_file_descriptors(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MAX_OPEN_MAPS", 4)
    arrays = [C.cached_arrays(f"{i:032d}", lambda i=i: {"f": np.full((2, 4, 4), i, np.uint8)}, ("f",))["f"]
              for i in range(20)]
    for i, a in enumerate(arrays):
        assert a[1][0, 0] == i
    assert len(C._OPEN) <= 4


def test_stack_masks_are_int64_and_map_rows():
    stack = np.stack([np.full((3, 3), k, np.uint8) for k in range(3)])
    m = C.StackMasks(stack, frames=[5, 9], rows=[2, 0])
    assert sorted(m) == [5, 9] and len(m) == 2
    assert m[5].dtype == np.int64 and m[5].max() == 2 and m[9].max() == 0
    with pytest.raises(KeyError):
        m[1]


def test_batches_work_on_mapped_frames(tmp_path):
    arrs = C.cached_arrays(
        "f" * 32,
        lambda: {"frames": np.random.default_rng(0).integers(0, 255, (6, 16, 16), dtype=np.uint8),
                 "masks": (np.arange(256).reshape(1, 16, 16) % 2).astype(np.uint8)},
        ("frames", "masks"),
    )
    case = Case("c", arrs["frames"], C.StackMasks(arrs["masks"], [3], [0]), (1.0, 1.0))  # type: ignore[arg-type]
    norm = Normalizer.fit([case], num_frames=6)
    ref = np.asarray(arrs["frames"]).astype(np.float64) / 255
    assert norm.mean == pytest.approx(ref.mean(), rel=1e-6)
    pool = FramePool([case], 8, norm)
    assert pool.batch(5, np.random.default_rng(0)).shape == (5, 1, 8, 8)
    lab = LabelledSet([case], 16, norm)
    x, y = lab.batch(2, np.random.default_rng(0))
    assert x.shape == (2, 1, 16, 16) and y.dtype.is_floating_point is False
    np.testing.assert_array_equal(y[0].numpy(), np.arange(256).reshape(16, 16) % 2)
