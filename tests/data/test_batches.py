"""Step batches: a pure function of (seed, step), split between ranks; batched loading; the prefetch thread."""

import numpy as np
import pytest
import torch

from sslseg.data.batches import (
    FramePool,
    LabelledSet,
    Normalizer,
    Prefetcher,
    frames_to_tensor,
    images_and_partitions,
    shard,
    step_generator,
)
from sslseg.data.sample import Case


def _cases():
    rng = np.random.default_rng(0)
    # two native sizes, so that the batched resize must group frames by size
    return [Case(f"c{i}", rng.integers(0, 255, (5, 40 if i % 2 else 48, 44), dtype=np.uint8),
                 {0: np.zeros((40 if i % 2 else 48, 44), np.int64)}, (1.0, 1.0)) for i in range(6)]


def test_batched_load_equals_frame_by_frame():
    cases = _cases()
    pool = FramePool(cases, 32, Normalizer(0.5, 0.25))
    flat = pool.indices(16, step_generator(0, 3))
    ci = np.searchsorted(pool.offsets, flat, side="right") - 1
    one_by_one = torch.cat([frames_to_tensor(cases[c].frames[f][None], 32)
                            for c, f in zip(ci, flat - pool.offsets[ci], strict=True)])
    assert torch.equal(pool.load(flat), Normalizer(0.5, 0.25)(one_by_one))


def test_step_draw_is_pure_and_ranks_split_the_global_batch():
    pool = FramePool(_cases(), 32, Normalizer(0.5, 0.25))
    a = pool.indices(8, step_generator(7, 5))
    assert np.array_equal(a, pool.indices(8, step_generator(7, 5)))  # the same step, the same draw
    assert not np.array_equal(a, pool.indices(8, step_generator(7, 6)))
    assert not np.array_equal(a, pool.indices(8, step_generator(8, 5)))
    parts = [a[shard(8, r, 2)] for r in range(2)]
    assert np.array_equal(np.concatenate(parts), a) and len(parts[0]) == 4
    draw = pool.meta_indices(8, step_generator(7, 5), 4)
    halves = [pool.load_with_meta({k: v[shard(8, r, 2)] for k, v in draw.items()}) for r in range(2)]
    whole = pool.load_with_meta(draw)
    assert torch.equal(torch.cat([h["images"] for h in halves]), whole["images"])
    assert torch.equal(torch.cat([h["partition"] for h in halves]), whole["partition"])
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        shard(8, 0, 3)


def test_images_and_partitions_reads_both_batch_forms():
    pool = FramePool(_cases(), 32, Normalizer(0.5, 0.25))
    plain = pool.load(pool.indices(4, step_generator(0, 0)))
    assert images_and_partitions(plain) == (plain, None)
    batch = pool.load_with_meta(pool.meta_indices(8, step_generator(0, 0), 4))
    images, partition = images_and_partitions(batch)
    assert images is batch["images"] and torch.equal(partition, batch["partition"])


def test_labelled_set_take_matches_batch():
    data = LabelledSet(_cases(), 32, Normalizer(0.5, 0.25))
    x, m = data.batch(6, step_generator(0, 1))
    idx = data.indices(6, step_generator(0, 1))
    assert torch.equal(data.take(idx)[0], x) and torch.equal(data.take(idx)[1], m)


def test_prefetcher_gives_each_step_in_order_and_restarts():
    made = []

    def make(step):
        made.append(step)
        return torch.full((2,), float(step))

    with Prefetcher(make, stop=10, depth=2) as pf:
        assert [int(pf(s)[0]) for s in range(4)] == [0, 1, 2, 3]
        assert int(pf(7)[0]) == 7  # a resumed run jumps: the thread restarts there
        assert int(pf(8)[0]) == 8
    assert made[:4] == [0, 1, 2, 3] and 7 in made


def test_prefetcher_raises_the_workers_error():
    def make(step):
        if step == 2:
            raise ValueError("bad frame")
        return step

    pf = Prefetcher(make, stop=5)
    assert pf(0) == 0 and pf(1) == 1
    with pytest.raises(ValueError, match="bad frame"):
        pf(2)
    pf.close()
