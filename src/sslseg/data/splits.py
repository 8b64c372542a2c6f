"""Per-case splits and label budgets, drawn once, saved as JSON, reused.

Everything here works on *case ids*, never on frames, so that no subject leaks
between training and test and a label budget of k means k subjects.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.files import atomic_write
from .sample import SPLITS, Case

#: shares of the cases drawn for validation and test when a data set gives no split of its own
VAL_FRACTION = 0.15
TEST_FRACTION = 0.25


def assign_splits(
    cases: list[Case], val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION, seed: int = 0
) -> dict[str, str]:
    """Assign ``train/val/test`` to every case without a split; keep given splits.

    Validation and test are drawn from the *labelled* cases only (the fractions
    are of the labelled cases); a case without masks can be neither validated
    nor tested on, so it goes to ``train``, the pretraining pool. The draw is a
    seeded permutation of the sorted labelled case ids, so it depends only on
    the ids, which of them are labelled, and the seed. Returns
    ``{case_id: split}`` for all cases.
    """
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise UserError(f"case ids must be unique; duplicated: {', '.join(dup)}")
    free = sorted(c.case_id for c in cases if c.split is None and len(c.masks) > 0)
    rng = np.random.default_rng(seed)
    order = [free[i] for i in rng.permutation(len(free))]
    n_test = int(round(test_fraction * len(order)))
    n_val = int(round(val_fraction * len(order)))
    if len(order) >= 3:
        n_test, n_val = max(1, n_test), max(1, n_val)
    drawn = {cid: "test" for cid in order[:n_test]}
    drawn.update({cid: "val" for cid in order[n_test : n_test + n_val]})
    drawn.update({cid: "train" for cid in order[n_test + n_val :]})
    return {c.case_id: (c.split if c.split is not None else drawn.get(c.case_id, "train")) for c in cases}


def apply_splits(cases: list[Case], splits: dict[str, str]) -> None:
    """Set ``case.split`` from a ``{case_id: split}`` mapping (every case must be listed)."""
    missing = [c.case_id for c in cases if c.case_id not in splits]
    if missing:
        raise UserError(
            f"the saved split has no entry for {len(missing)} case(s), e.g. {missing[0]!r}; "
            "the data set changed since the split was drawn; use a new output folder"
        )
    for c in cases:
        s = splits[c.case_id]
        if s not in SPLITS:
            raise UserError(f"case {c.case_id!r}: split must be one of {SPLITS}, got {s!r}")
        c.split = s


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_write(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def splits_for(cases: list[Case], path: str | os.PathLike, seed: int = 0, **fractions) -> dict[str, str]:
    """Load the split saved at ``path`` if present, else draw it and save it; apply it."""
    path = Path(path)
    if path.is_file():
        splits = read_json(path)
    else:
        splits = assign_splits(cases, seed=seed, **fractions)
        write_json(path, splits)
    apply_splits(cases, splits)
    return splits


def parse_budget(text: str | int | float) -> tuple[str, float]:
    """``"4"`` -> ``("count", 4)``; ``"5%"`` -> ``("fraction", 0.05)``.

    Raises:
        ValueError: not a positive count or percentage.
    """
    s = str(text).strip()
    try:
        if s.endswith("%"):
            pct = float(s[:-1])
            if not 0 < pct <= 100:
                raise UserError
            return "fraction", pct / 100
        n = int(s)
        if n <= 0:
            raise UserError
        return "count", n
    except ValueError:
        raise UserError(
            f"label budget {text!r} is not valid; give a number of labelled cases (e.g. 4) "
            "or a percentage of the training cases (e.g. 5%), greater than zero"
        ) from None


def resolve_budget(text: str | int | float, n_train: int) -> int:
    """Number of labelled cases for a budget given ``n_train`` labelled training cases."""
    kind, value = parse_budget(text)
    if n_train == 0:
        raise UserError("the training split has no labelled case; nothing to fine-tune on")
    if kind == "fraction":
        return max(1, math.floor(value * n_train + 1e-9))
    if value > n_train:
        raise UserError(
            f"label budget {int(value)} is larger than the {n_train} labelled training cases; "
            f"choose 1..{n_train} or a percentage"
        )
    return int(value)


def labelled_subset(train_ids: list[str], k: int, seed: int = 0) -> list[str]:
    """The first ``k`` ids of a seeded permutation of the sorted ids.

    Subsets for one seed are nested: the 2-case subset contains the 1-case subset.
    """
    ids = sorted(train_ids)
    if not 1 <= k <= len(ids):
        raise UserError(f"label budget {k} is outside 1..{len(ids)}")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))]
    return sorted(order[:k])
