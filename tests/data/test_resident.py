"""Device-resident frames: the same batch as the host path for the same (seed, step); the memory check."""

import numpy as np
import pytest
import torch

from sslseg.data.batches import (
    FramePool,
    Normalizer,
    ResidentFramePool,
    batch_source,
    frames_nbytes,
    resident_fits,
    step_generator,
)
from sslseg.data.sample import Case


def _cases(dtype=np.uint8):
    rng = np.random.default_rng(1)
    # three native sizes and uneven lengths: rows of each size's resident tensor come from several cases
    sizes = [(40, 44), (48, 44), (32, 32)]
    out = []
    for i in range(7):
        h, w = sizes[i % 3]
        frames = rng.integers(0, 255, (3 + i, h, w)).astype(dtype)
        out.append(Case(f"c{i}", frames, {0: np.zeros((h, w), np.int64)}, (1.0, 1.0)))
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resident_batches_equal_host_batches_bit_for_bit(dtype):
    pool = FramePool(_cases(dtype), 32, Normalizer(0.3, 0.2, 255.0 if dtype == np.uint8 else 1.0),
                     exclude={"c2": {0, 1}})
    resident = ResidentFramePool(pool, "cpu")
    assert resident.nbytes == frames_nbytes(pool) and len(resident) == len(pool)
    assert {t.dtype for t in resident.frames} == {torch.uint8 if dtype == np.uint8 else torch.float32}
    for seed, step in [(0, 0), (0, 1), (3, 17)]:
        a = pool.load(pool.indices(24, step_generator(seed, step)))
        b = resident.load(resident.indices(24, step_generator(seed, step)))
        assert torch.equal(a, b)
        draw = pool.meta_indices(8, step_generator(seed, step), 4)
        assert torch.equal(pool.load_with_meta(draw)["images"], resident.load_with_meta(draw)["images"])
    # one size only: a single gather, no scatter into the batch
    one = FramePool([c for c in _cases(dtype) if c.frames.shape[1:] == (32, 32)], 32, Normalizer(0.3, 0.2))
    flat = one.indices(5, step_generator(0, 2))
    assert torch.equal(one.load(flat), ResidentFramePool(one, "cpu").load(flat))


def test_memory_check_reads_the_free_device_memory(monkeypatch):
    fits, why = resident_fits(1 << 30, "cpu")
    assert not fits and "prefetching thread" in why
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    # 80 GiB card, 70 free: reserve max(4, 20) = 20 GiB, so 50 GiB of frames fit and 51 do not
    assert resident_fits(50 * gib, torch.device("cuda", 0))[0]
    fits, why = resident_fits(51 * gib, torch.device("cuda", 0))
    assert not fits and "free 70.0 of 80.0 GiB" in why and "reserve 20.0 GiB" in why
    # EchoNet-Dynamic's training frames (16.5 GB) on an H100 with little else allocated
    assert resident_fits(1_315_340 * 112 * 112, torch.device("cuda", 0))[0]


def test_batch_source_chooses_and_stays_off_on_a_cpu():
    pool = FramePool(_cases(), 32, Normalizer(0.3, 0.2))
    assert batch_source(pool, "cpu")[0] is pool  # auto: a CPU keeps the host path
    assert batch_source(pool, "cpu", "off")[0] is pool
    assert isinstance(batch_source(pool, "cpu", "on")[0], ResidentFramePool)
    with pytest.raises(ValueError, match="expected auto, on or off"):
        batch_source(pool, "cpu", "yes")
