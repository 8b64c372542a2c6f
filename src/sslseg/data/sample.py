"""The data contract: a ``Case`` (one subject, its frames or slices, masks and split).

Batches are cut from a case's frame array as tensors (``data.batches``); there is
no per-image object on the training path.

Splits and label budgets are drawn per ``Case`` so that no subject ever leaks
between training and test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Case:
    """One subject: an echo video, an MRI volume, a patient.

    Attributes:
        case_id: unique identifier inside its data set.
        frames: ``(T, H, W)`` or ``(T, C, H, W)`` array-like of every frame or
            slice (all usable for pretraining), ``uint8`` (0..255) or ``float32``:
            an ``np.ndarray`` or a lazily memory-mapped array from the decode cache
            (``shape``, ``dtype``, ``ndim``, indexing).
        masks: labelled frames, a ``Mapping[int, (H, W) int64 label map]``: a dict,
            or a read-only mapping that draws masks on demand (large data sets).
        spacing: pixel size in mm as ``(row, column)``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (assigned later).
        meta: free-form per-case metadata (EF, phase names, source file, ...).
    """

    case_id: str
    frames: np.ndarray
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    spacing: tuple[float, float] = (1.0, 1.0)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames.ndim not in (3, 4):
            raise UserError(
                f"case {self.case_id!r}: frames must be (T, H, W) or (T, C, H, W), "
                f"got shape {tuple(self.frames.shape)}"
            )
        h, w = self.frames.shape[-2:]
        for idx, mask in self.masks.items():
            if not 0 <= idx < self.frames.shape[0]:
                raise UserError(
                    f"case {self.case_id!r}: labelled frame {idx} is outside the "
                    f"{self.frames.shape[0]} frames"
                )
            if mask.shape != (h, w):
                raise UserError(
                    f"case {self.case_id!r}: mask of frame {idx} has shape {mask.shape}, "
                    f"image has {(h, w)}"
                )
        if self.split is not None and self.split not in SPLITS:
            raise UserError(f"case {self.case_id!r}: split must be one of {SPLITS}, got {self.split!r}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def labelled_indices(self) -> list[int]:
        return sorted(self.masks)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.frames.shape[-2:])  # type: ignore[return-value]


def common_dtype(cases: list[Case], notes: list[str]) -> list[Case]:
    """One frame dtype for a data set: when 8-bit and other cases mix, the 8-bit ones are divided by 255.

    Appends a note for the user to ``notes`` when it converts.
    """
    dtypes = {np.dtype(c.frames.dtype) for c in cases}
    if len(dtypes) == 1:
        return cases
    notes.append("8-bit and other images mixed: 8-bit images divided by 255, all frames float32")
    out = []
    for c in cases:
        if c.frames.dtype == np.uint8:
            frames = np.asarray(c.frames).astype(np.float32) / 255.0
            c = Case(c.case_id, frames, c.masks, c.spacing, c.split, c.meta)
        out.append(c)
    return out
