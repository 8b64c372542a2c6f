"""Label maps read from mask files."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


def as_labels(mask: np.ndarray, where: str) -> np.ndarray:
    """Integer label map from a mask file's values; ``{0, 255}`` masks become ``{0, 1}``.

    Masks hold class indices (0 background, 1, 2, ...). A black-and-white 8-bit mask, its values 0 and
    255 only (as image editors save one), is read as 0/1; a 255 beside any other value is left as it is,
    for the reader to refuse as a value outside the classes (never taken for class 1 silently).

    Raises:
        ValueError: NaN, Inf, fractional or negative values (naming ``where``).
    """
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all():
            raise UserError(f"{where}: NaN or Inf in the mask")
        if not np.array_equal(mask, np.round(mask)):
            raise UserError(f"{where}: mask values are not whole numbers")
    m = mask.astype(np.int64)
    if m.min() < 0:
        raise UserError(f"{where}: negative label value {int(m.min())}")
    vals = np.unique(m)
    if vals.max() == 255 and set(vals.tolist()) <= {0, 255}:  # 8-bit black/white masks
        m = (m == 255).astype(np.int64)
    return m


def mask_dtype(top: int) -> type:
    """The smallest dtype a label stack whose largest value is ``top`` is cached in."""
    return np.uint8 if top <= 255 else np.int32
