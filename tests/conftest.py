import numpy as np
import pytest
import torch

from sslseg.data.sample import Case

torch.set_num_threads(2)


def disc_case(case_id: str, n_frames: int = 6, size: int = 32, seed: int = 0) -> Case:
    """A tiny video: a bright disc of varying radius in noise; frames 0 and 3 labelled."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    frames, masks = [], {}
    for t in range(n_frames):
        r = size * (0.2 + 0.08 * np.cos(2 * np.pi * t / n_frames))
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img = np.where(m, 180, 60) + rng.normal(0, 20, (size, size))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        if t in (0, n_frames // 2):
            masks[t] = m.astype(np.int64)
    return Case(case_id, np.stack(frames), masks, (0.5, 0.5), phases={0: "ED", n_frames // 2: "ES"})


@pytest.fixture(scope="session")
def make_disc_case():
    """:func:`disc_case`, for test modules (a test module cannot import this conftest)."""
    return disc_case


@pytest.fixture
def tiny_cases():
    return [disc_case(f"case{i:02d}", seed=i) for i in range(12)]
