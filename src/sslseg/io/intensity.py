"""The one intensity normaliser, for training readers and prediction alike.

8-bit data stay ``uint8``; anything else becomes ``float32`` divided by its
99.5th percentile of ``|x|`` (``"scale"``: MR and CT have no common scale
between scanners), or standardised (``"zscore"``), or left as read
(``"none"``).  The statistics are taken per call (one case, one study) and,
for frames ``(N, C, H, W)``, per channel.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

INTENSITY = ("scale", "zscore", "none")


def check_intensity(intensity: str) -> None:
    """Raises ValueError naming the choices when ``intensity`` is not one of :data:`INTENSITY`."""
    if intensity not in INTENSITY:
        raise UserError(f"intensity must be one of {', '.join(INTENSITY)}, got {intensity!r}")


def normalise_intensity(frames: np.ndarray, intensity: str = "scale", where: str = "image") -> np.ndarray:
    """``uint8`` unchanged; other data -> ``float32`` normalised (see the module notes).

    Shape:
        ``(N, H, W)`` (statistics over everything) or ``(N, C, H, W)`` (per channel).

    Raises:
        ValueError: NaN or Inf in the image (naming ``where``), or an unknown ``intensity``.
    """
    check_intensity(intensity)
    if frames.dtype == np.uint8:
        return frames
    x = frames.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{where}: {int((~np.isfinite(x)).sum())} NaN or Inf value(s) in the image")
    # statistics per channel: axis 1 of (N, C, H, W)
    axes = (0, 2, 3) if x.ndim == 4 else None
    if intensity == "scale":
        # divided in float32, as by a Python number (the 99.5th percentile itself is exact in float64)
        hi = np.percentile(np.abs(x), 99.5, axis=axes, keepdims=True).astype(np.float32)
        x = x / np.where(hi > 0, hi, np.float32(1.0))
    elif intensity == "zscore":
        x = (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + 1e-8)
    return x.astype(np.float32)


def training_range(frames: np.ndarray, scale: float, intensity: str = "scale", where: str = "image") -> np.ndarray:
    """Raw frames -> the value range a model's normaliser was fitted on (``scale``: 255 for 8-bit data, else 1).

    8-bit data for an 8-bit model are returned unchanged; other data are
    normalised as the training readers normalise them
    (:func:`normalise_intensity`).  A model trained on 8-bit data given other
    data gets them divided by their 99.5th percentile and mapped to ``0..255``;
    a model trained on floating-point data given 8-bit data gets them divided
    by 255, as the readers do when a data set mixes the two.

    Raises:
        ValueError: NaN or Inf values, or an unknown ``intensity``.
    """
    check_intensity(intensity)
    if frames.dtype == np.uint8:
        return frames if scale == 255.0 else frames.astype(np.float32) * np.float32(scale / 255.0)
    if scale == 1.0:
        return normalise_intensity(frames, intensity, where)
    x = normalise_intensity(frames, "scale", where)
    return np.clip(x * scale, 0.0, scale).astype(np.float32)
