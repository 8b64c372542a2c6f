"""Seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..errors import UserError

#: the largest seed: NumPy's legacy generator takes 32 bits (and a seed is a number to write down, not a key)
MAX_SEED = 2**32 - 1


def check_seed(seed, where: str = "seed") -> None:
    """Refuse a seed that is not an integer from 0 to :data:`MAX_SEED`, in one line naming ``where``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{where} = {seed!r} is not allowed: expected an integer from 0 to {MAX_SEED} (2**32 - 1)")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices).

    Raises:
        ValueError: a seed outside 0 .. 2**32 - 1 (:func:`check_seed`).
    """
    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
