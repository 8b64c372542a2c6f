"""Echo frames as EchoNet-Dynamic prepared them: the imaging sector found, cropped, masked, resized.

EchoNet-Dynamic's videos were made from the scanner's DICOM cines: "cropped and
masked to remove text, ECG and respirometer information and other information
outside of the scanning sector", then "downsampled by cubic interpolation into
standardized 112x112 pixel videos" (Ouyang et al., Nature 2020; the script is
``scripts/ConvertDICOMToAVI.ipynb`` in echonet/dynamic).  A model trained on
those frames (or on the synthetic echo here, drawn the same way: the sector's
apex at the top centre of a square frame that the sector fills) expects the
same preparation whatever the scanner's pixel size and screen layout.

The steps, each a pure function:

1. :func:`find_sector`: where the ultrasound image is.  The DICOM ultrasound
   region calibration (``SequenceOfUltrasoundRegions``), when present and
   inside the frame, bounds the search.  Within it, the sector is read from the
   image itself: the pixels whose value varies over the clip (speckle moves
   with the heart; text, logos, scale bars and the margin do not), opened with a
   small square to drop thin moving lines (the ECG trace, a frame counter), the
   largest connected piece kept, and its convex hull taken (a sector is convex,
   and the hull fills the dark blood pool and any static marker inside it).  A
   single frame has no motion: its non-dark pixels are used instead.
2. :func:`sector_box`: the square crop, as EchoNet's frames are square: side =
   the sector's height (its depth), top edge at the sector's top (the apex),
   centred left-right on the sector.  EchoNet's script cut a centred square of
   the screen's height, so a sector wider than it is deep lost its lateral
   edges and filled the square, as the synthetic echo's sector fills its frame
   (a square as wide as the sector left a black band under it, where a model
   trained on such frames has never seen black, and one did mark it).  Parts
   of the square outside the frame are zero.  EchoNet's script cut fixed
   fractions of a fixed screen layout; this square follows the sector on any
   scanner.
3. :func:`prepare_frames`: pixels outside the sector set to 0, the square cut
   out and resized to the training size by bicubic interpolation (Keys'
   a = -0.75 without antialiasing, as OpenCV's ``INTER_CUBIC`` that EchoNet
   used); 8-bit frames are rounded back to 8 bits, as EchoNet's AVIs are.
4. :func:`restore_probabilities`: class probabilities of the prepared frames
   back on the original frame grid (bilinear), background outside the sector,
   so that masks keep the input's geometry and spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Sector",
    "find_sector",
    "prepare_frames",
    "prepared_spacing",
    "restore_probabilities",
    "sector_box",
]


@dataclass
class Sector:
    """Where the ultrasound image lies in a frame.

    Attributes:
        mask: ``(H, W)`` bool, True inside the imaging sector.
        box: the square crop ``(top, left, side)`` in frame pixels; it may reach
            outside the frame (zero padding there).
        source: ``"ultrasound region + image"``, ``"image"`` or ``"whole frame"``.
        notes: remarks for the user (e.g. a calibration that does not fit the frame).
    """

    mask: np.ndarray
    box: tuple[int, int, int]
    source: str
    notes: list[str]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of the sector mask, inclusive."""
        rows, cols = np.nonzero(self.mask.any(1))[0], np.nonzero(self.mask.any(0))[0]
        return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])

    def describe(self) -> str:
        t, b, left, r = self.bbox
        return (f"echo sector from the {self.source}: rows {t}-{b}, columns {left}-{r}, "
                f"{self.box[2]} x {self.box[2]} square crop")


def _grey(frames: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` or ``(N, C, H, W)`` -> float32 ``(N, H, W)`` (channel mean)."""
    x = frames.astype(np.float32)
    return x.mean(1) if x.ndim == 4 else x


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """The convex hull of the True pixels of ``mask`` (pixel centres), filled."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial import ConvexHull, QhullError

    edge = mask & ~binary_erosion(mask)
    pts = np.argwhere(edge).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):  # a line or a point: nothing to fill
        return mask.copy()
    # a convex polygon meets each row in one interval: its ends from the edges crossing that row
    h, w = mask.shape
    lo, hi = np.full(h, np.inf), np.full(h, -np.inf)
    v = pts[hull.vertices]
    for (r0, c0), (r1, c1) in zip(v, np.roll(v, -1, axis=0), strict=True):
        rows = np.arange(int(np.ceil(min(r0, r1))), int(np.floor(max(r0, r1))) + 1)
        cols = np.array([c0, c1]) if r0 == r1 else c0 + (rows - r0) * (c1 - c0) / (r1 - r0)
        if r0 == r1:
            rows = np.array([int(r0), int(r0)])
        np.minimum.at(lo, rows, cols)
        np.maximum.at(hi, rows, cols)
    c = np.arange(w)
    inside = (c[None, :] >= np.ceil(lo - 1e-6)[:, None]) & (c[None, :] <= np.floor(hi + 1e-6)[:, None])
    return inside | mask


def find_sector(
    frames: np.ndarray,
    region: tuple[int, int, int, int] | None = None,
    min_fraction: float = 0.05,
) -> Sector:
    """Find the imaging sector of an echo clip (module notes, step 1).

    Args:
        frames: ``(N, H, W)`` or ``(N, C, H, W)``, any dtype (raw values).
        region: the calibrated ultrasound region ``(x0, y0, x1, y1)`` in pixels,
            inclusive (DICOM ``RegionLocationMinX0, MinY0, MaxX1, MaxY1``), or None.
        min_fraction: a sector smaller than this fraction of the searched area
            is not believed; the searched area (region or whole frame) is used.

    Returns:
        A :class:`Sector`.
    """
    grey = _grey(frames)
    n, h, w = grey.shape
    notes: list[str] = []
    search = np.ones((h, w), bool)
    source = "image"
    if region is not None:
        x0, y0, x1, y1 = (int(v) for v in region)
        if 0 <= x0 < x1 < w and 0 <= y0 < y1 < h:
            search[:] = False
            search[y0 : y1 + 1, x0 : x1 + 1] = True
            source = "ultrasound region + image"
        else:
            notes.append(f"the ultrasound region calibration (x {x0}-{x1}, y {y0}-{y1}) does not fit the "
                         f"{w} x {h} frame (resized after calibration?): sector found from the image alone, "
                         "and the calibrated pixel spacing may not apply")
    if n >= 3:
        # how much each pixel moves over the clip; the sector's speckle moves, overlays do not
        signal = grey.std(0)
    else:
        signal = grey.max(0) - float(np.percentile(grey, 1))
    found = _sector_mask(signal, search, min(h, w))
    if found is None or found.sum() < min_fraction * search.sum():
        mask = search
        source = "ultrasound region" if source != "image" else "whole frame"
        notes.append(f"no imaging sector found in the image: the {source} is used")
    else:
        mask = found
    return Sector(mask, sector_box(mask), source, notes)


def _sector_mask(signal: np.ndarray, search: np.ndarray, short_side: int) -> np.ndarray | None:
    from scipy.ndimage import binary_opening, label

    s = np.where(search, signal, 0.0)
    top = float(np.percentile(s[search], 99.9)) if search.any() else 0.0
    if top <= 0:
        return None
    # static overlays and the margin do not vary at all (or by compression noise); the far field of the
    # sector, dim as it is, still varies by a grey level or so in 8 bits: 1% of the strongest variation
    on = s > 0.01 * top
    # a square about 1/60 of the frame (5 px at 320 x 240): wider than an ECG trace or a text stroke
    k = max(3, short_side // 60) | 1
    on = binary_opening(on, structure=np.ones((k, k), bool))
    lab, num = label(on)
    if num == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    return _convex_fill(lab == 1 + int(np.argmax(sizes))) & search


def sector_box(mask: np.ndarray) -> tuple[int, int, int]:
    """The square crop ``(top, left, side)`` of a sector mask: its height, centred on it (module notes, step 2)."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if rows.size == 0:
        h, w = mask.shape
        rows, cols = np.arange(h), np.arange(w)
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    side, bw = bottom - top + 1, right - left + 1
    # the apex stays at the top edge; a wide sector loses its lateral edges, a narrow one gets black sides
    return top, left + (bw - side) // 2, side


def _crop_square(x: torch.Tensor, box: tuple[int, int, int]) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., side, side)``, zero where the square leaves the frame."""
    top, left, side = box
    h, w = x.shape[-2:]
    out = x.new_zeros((*x.shape[:-2], side, side))
    r0, r1 = max(top, 0), min(top + side, h)
    c0, c1 = max(left, 0), min(left + side, w)
    out[..., r0 - top : r1 - top, c0 - left : c1 - left] = x[..., r0:r1, c0:c1]
    return out


def prepare_frames(frames: np.ndarray, sector: Sector, size: int) -> np.ndarray:
    """Masked, square-cropped and resized frames, as EchoNet-Dynamic's (module notes, step 3).

    Shape:
        ``(N, H, W)`` or ``(N, C, H, W)`` -> ``(N, size, size)`` or ``(N, C, size, size)``;
        ``uint8`` stays ``uint8``, anything else becomes ``float32``.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    x = x * torch.from_numpy(sector.mask).to(x.dtype)  # outside the sector: 0, as EchoNet's mask
    x = _crop_square(x, sector.box)
    if x.shape[-1] != size:
        # Keys' cubic kernel (a = -0.75) without antialiasing: OpenCV's INTER_CUBIC
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    out = x[:, 0] if squeeze else x
    if frames.dtype == np.uint8:
        return out.round().clamp(0, 255).to(torch.uint8).numpy()
    return out.numpy().astype(np.float32)


def restore_probabilities(prob: torch.Tensor, sector: Sector, shape: tuple[int, int]) -> torch.Tensor:
    """Probabilities of prepared frames back on the frame grid (module notes, step 4).

    The square is resized back to its side (bilinear) and placed where it was
    cut; outside the sector the probability of class 0 (background) is 1.

    Shape:
        ``(N, K, S, S)`` -> ``(N, K, H, W)``; a ``(N, S, S)`` map (e.g. a
        variance) -> ``(N, H, W)``, 0 outside the sector.
    """
    top, left, side = sector.box
    h, w = shape
    single = prob.ndim == 3
    p = prob[:, None] if single else prob
    if p.shape[-1] != side:
        p = F.interpolate(p, size=(side, side), mode="bilinear", align_corners=False)
    out = p.new_zeros((p.shape[0], p.shape[1], h, w))
    r0, r1 = max(top, 0), min(top + side, h)
    c0, c1 = max(left, 0), min(left + side, w)
    out[..., r0:r1, c0:c1] = p[..., r0 - top : r1 - top, c0 - left : c1 - left]
    inside = torch.zeros((h, w), dtype=torch.bool, device=p.device)
    inside[r0:r1, c0:c1] = torch.from_numpy(sector.mask[r0:r1, c0:c1]).to(p.device)
    out = out * inside
    if not single:
        out[:, 0] += (~inside).to(out.dtype)
    return out[:, 0] if single else out


def prepared_spacing(spacing: tuple[float, float] | None, sector: Sector, size: int) -> tuple[float, float] | None:
    """Pixel size ``(row mm, column mm)`` of the prepared frames: the square's side over ``size``."""
    if spacing is None:
        return None
    f = sector.box[2] / size
    return spacing[0] * f, spacing[1] * f
