"""Left-ventricle measurements from a segmented echo video: area curve, ED/ES, FAC, area-length EF.

For each video:

1. LV area per frame: the pixels of the LV label times the pixel area (mm²
   when the spacing is known, else pixels²), smoothed with a Savitzky-Golay
   filter (quadratic, about 0.1 s wide) so that mask noise does not make false
   extrema while the extrema themselves keep their height and timing.
2. ED and ES per beat: end-diastole is where the LV is largest, end-systole
   where it is smallest, so ED frames are maxima and ES frames minima of the
   smoothed area curve (``scipy.signal.find_peaks``).  Two maxima (or minima)
   are at least one cardiac cycle at the highest expected heart rate apart
   (default 140 bpm: 0.43 s), and must stand out by 10% of the curve's range.
   A beat is an ED frame and the smallest area before the next ED frame
   (after the last ED: the smallest detected minimum, if any).
3. Fractional area change ``FAC = (EDA - ESA) / EDA``.
4. Volumes by the single-plane area-length method, which models the LV as a
   prolate ellipsoid seen through its long axis: ``V = 8 A² / (3 π L)``
   (often written ``0.85 A² / L``; first used for ventriculograms by Dodge et
   al., Am Heart J 1960, and a standard echo formula since), with ``A`` the LV
   area and ``L`` the LV long-axis length in the same view.
   ``L`` is taken from the mask itself: the extent of the mask along its
   principal axis (the first principal component of the pixel coordinates in
   mm), plus half a pixel step along that axis: the extreme pixel centres of a
   smooth shape stop short of its tips by about a quarter pixel each (on random
   ellipses, 15-30 mm long at 0.3 x 0.5 mm pixels, the bias is +0.4% with a
   full step, -0.4% with none, 0.0% +- 0.2% with half).
   ``EF = (EDV - ESV) / EDV`` per beat; the video's EF is the mean over beats.

For an ellipse of semi-axes ``a`` (long) and ``b``, ``A = π a b`` and
``L = 2 a`` give ``V = 4/3 π a b²``, the volume of the prolate ellipsoid: the
tests check the estimate against that analytic value.

When the spacing is unknown (EchoNet-Dynamic's AVIs carry none) areas and
lengths are in pixels, assuming square pixels; FAC and EF are ratios and do
not depend on the pixel size.

Values outside the physiological range are flagged (:func:`flags`; the
``flag`` column of the summary and of ``_beats.csv``), not removed: a flag
asks for a look at the segmentation (``_lv_area.png``, the overlay video).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.tables import filelist_name, read_filelist, write_table

#: highest heart rate expected at rest in echo clinics; sets the minimum distance between two EDs
MAX_HEART_RATE_BPM = 140.0

#: EF (percent) outside which a measurement is flagged as implausible. The ASE/EACVI chamber
#: quantification guideline (Lang et al., J Am Soc Echocardiogr 2015;28:1-39, table 4) gives 52-72% (men)
#: and 54-74% (women) as normal and below 30% as severely reduced; an EF under 5% means a ventricle that
#: barely moves, over 90% one that empties almost completely (ESV under a tenth of EDV): both far beyond
#: the reduced and the hyperdynamic hearts echo labs see, and far more often a failed segmentation
#: (a missed or a leaking LV mask) than a heart.
EF_PLAUSIBLE_PERCENT = (5.0, 90.0)


@dataclass
class Beat:
    """One cardiac cycle: ED frame, following ES frame, their areas, lengths and volumes."""

    ed: int
    es: int
    eda: float
    esa: float
    edl: float
    esl: float
    edv: float
    esv: float

    @property
    def fac(self) -> float:
        """Fractional area change in percent."""
        return 100.0 * (self.eda - self.esa) / self.eda if self.eda > 0 else float("nan")

    @property
    def ef(self) -> float:
        """Ejection fraction in percent."""
        ok = self.edv > 0 and math.isfinite(self.edv) and math.isfinite(self.esv)
        return 100.0 * (self.edv - self.esv) / self.edv if ok else float("nan")


@dataclass
class EchoMeasurement:
    """Measurements of one video.

    Attributes:
        fps: frames per second used for timing (``fps_known`` says if it came from the file).
        unit: ``"mm"`` when the pixel spacing is known, else ``"px"``.
        area: ``(T,)`` LV area per frame (unit²).
        area_smooth: ``(T,)`` smoothed area.
        length: ``(T,)`` LV long-axis length per frame (unit).
        volume: ``(T,)`` area-length volume per frame (mL for mm, else px³).
        ed, es: frame indices of every area maximum (ED) and minimum (ES) found.
        beats: ED -> ES pairs.
        fallback: no complete beat was found; the one beat is the largest and
            the smallest frame of the whole clip.
    """

    fps: float
    fps_known: bool
    unit: str
    area: np.ndarray
    area_smooth: np.ndarray
    length: np.ndarray
    volume: np.ndarray
    ed: list[int] = field(default_factory=list)
    es: list[int] = field(default_factory=list)
    beats: list[Beat] = field(default_factory=list)
    fallback: bool = False

    def flags(self) -> list[str]:
        """What lies outside the physiological range (:func:`flags`); empty when nothing does."""
        return flags(self.ef, self.beats)

    @property
    def ef(self) -> float:
        """Mean EF over beats, percent (NaN without a beat)."""
        v = [b.ef for b in self.beats if math.isfinite(b.ef)]
        return float(np.mean(v)) if v else float("nan")

    @property
    def fac(self) -> float:
        """Mean fractional area change over beats, percent."""
        v = [b.fac for b in self.beats if math.isfinite(b.fac)]
        return float(np.mean(v)) if v else float("nan")

    def summary(self) -> dict:
        """One row for a table of videos."""
        vol = "ml" if self.unit == "mm" else "px3"
        return {
            "frames": len(self.area),
            "fps": round(self.fps, 3),
            "fps_known": self.fps_known,
            "unit": self.unit,
            "beats": len(self.beats),
            "fallback": self.fallback,
            "ed_frames": " ".join(str(b.ed) for b in self.beats),
            "es_frames": " ".join(str(b.es) for b in self.beats),
            f"eda_{self.unit}2": _mean([b.eda for b in self.beats]),
            f"esa_{self.unit}2": _mean([b.esa for b in self.beats]),
            f"edv_{vol}": _mean([b.edv for b in self.beats]),
            f"esv_{vol}": _mean([b.esv for b in self.beats]),
            "fac_percent": self.fac,
            "ef_percent": self.ef,
            "flag": "; ".join(self.flags()),
        }


def beat_flags(b: Beat) -> list[str]:
    """One beat's values that cannot be (a larger LV at ES than at ED) or are implausible (EF range).

    A ventricle ejects during systole, so its ES area and volume are below its ED ones: an ES volume
    above the ED volume (a negative EF) or an ES area above the ED area (a negative FAC) is impossible.
    """
    out = []
    ef = b.ef
    if math.isfinite(ef) and ef < 0:
        out.append(f"EF {ef:.1f}%: ES volume above ED volume (impossible)")
    elif math.isfinite(ef) and not EF_PLAUSIBLE_PERCENT[0] <= ef <= EF_PLAUSIBLE_PERCENT[1]:
        out.append(f"EF {ef:.1f}% outside {EF_PLAUSIBLE_PERCENT[0]:g}-{EF_PLAUSIBLE_PERCENT[1]:g}% (implausible)")
    if math.isfinite(b.fac) and b.fac < 0:
        out.append(f"FAC {b.fac:.1f}%: ES area above ED area (impossible)")
    return out


def flags(ef: float, beats: Sequence[Beat]) -> list[str]:
    """A video's measurements outside the physiological range: its mean EF, then each beat's own.

    Args:
        ef: the video's EF, percent (the mean over beats; NaN: undefined, not flagged).
        beats: its beats (:func:`beat_flags`; numbered from 0 as in ``_beats.csv``).

    Returns:
        Short phrases, e.g. ``["EF 0.8% outside 5-90% (implausible)",
        "beat 1: EF -0.3%: ES volume above ED volume (impossible)"]``; empty when all is plausible.
    """
    out = []
    lo, hi = EF_PLAUSIBLE_PERCENT
    if math.isfinite(ef) and ef < 0:
        out.append(f"EF {ef:.1f}%: ES volume above ED volume (impossible)")
    elif math.isfinite(ef) and not lo <= ef <= hi:
        out.append(f"EF {ef:.1f}% outside {lo:g}-{hi:g}% (implausible)")
    if len(beats) > 1 or not out:  # a single beat's EF is the video's, already said
        for i, b in enumerate(beats):
            out += [f"beat {i}: {f}" for f in beat_flags(b)]
    else:
        out += [f for f in beat_flags(beats[0]) if f.startswith("FAC")]
    return out


def _mean(v: list[float]) -> float:
    v = [x for x in v if math.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


# --------------------------------------------------------------------------- #
# pure functions
# --------------------------------------------------------------------------- #
def lv_area(masks: np.ndarray, spacing: tuple[float, float] | None = None, label: int = 1) -> np.ndarray:
    """LV area per frame: pixels of ``label`` times the pixel area.

    Shape:
        masks ``(T, H, W)`` integer labels -> ``(T,)`` float64 (mm² with
        ``spacing`` ``(row mm, column mm)``, else pixels²).
    """
    px = 1.0 if spacing is None else float(spacing[0]) * float(spacing[1])
    # counting over the spatial axes only (not time)
    return (np.asarray(masks) == label).sum(axis=(-2, -1)).astype(np.float64) * px


def long_axis_length(mask: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    """Extent of a binary ``(H, W)`` mask along its principal axis, plus half a pixel step (mm or px).

    The principal axis is the eigenvector of the largest eigenvalue of the
    covariance of the pixel-centre coordinates in mm (so anisotropic pixels are
    handled); 0 for an empty mask.
    """
    rs, cs = np.nonzero(mask)
    if rs.size == 0:
        return 0.0
    row, col = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    xy = np.stack([rs * row, cs * col], axis=1).astype(np.float64)  # (P, 2) centres in mm
    if rs.size == 1:
        return max(row, col)
    cov = np.cov(xy - xy.mean(0), rowvar=False)
    _, vecs = np.linalg.eigh(cov)
    u = vecs[:, -1]  # eigenvalues ascending: the last is the major axis
    proj = xy @ u
    # the extreme centres stop short of the tips: add half of one pixel step along u (module notes)
    step = 1.0 / math.hypot(u[0] / row, u[1] / col)
    return float(proj.max() - proj.min() + 0.5 * step)


def area_length_volume(area: np.ndarray | float, length: np.ndarray | float) -> np.ndarray:
    """Single-plane area-length volume ``V = 8 A² / (3 π L)`` (unit³; NaN where ``L`` is 0)."""
    a = np.asarray(area, dtype=np.float64)
    ln = np.asarray(length, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ln > 0, 8.0 * a**2 / (3.0 * math.pi * ln), np.nan)


def smooth_curve(curve: np.ndarray, fps: float, window_s: float = 0.1) -> np.ndarray:
    """Savitzky-Golay smoothing (quadratic) over about ``window_s`` seconds (at least 5 frames)."""
    from scipy.signal import savgol_filter

    y = np.asarray(curve, dtype=np.float64)
    win = max(5, int(round(window_s * fps)) | 1)  # odd
    if y.size < 5:
        return y.copy()
    win = min(win, y.size if y.size % 2 else y.size - 1)
    return savgol_filter(y, win, polyorder=2, mode="interp")


def find_phases(
    curve: np.ndarray, fps: float, max_heart_rate_bpm: float = MAX_HEART_RATE_BPM, prominence: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """ED (maxima) and ES (minima) frame indices of a smoothed LV area curve.

    Args:
        curve: ``(T,)`` smoothed area.
        fps: frames per second.
        max_heart_rate_bpm: two maxima (or two minima) are at least one cycle at
            this rate apart.
        prominence: a peak must stand out by this fraction of the curve's range.
    """
    from scipy.signal import find_peaks

    y = np.asarray(curve, dtype=np.float64)
    span = float(np.ptp(y)) if y.size else 0.0
    if span <= 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    distance = max(1, int(math.floor(fps * 60.0 / max_heart_rate_bpm)))
    ed, _ = find_peaks(y, distance=distance, prominence=prominence * span)
    es, _ = find_peaks(-y, distance=distance, prominence=prominence * span)
    return ed.astype(int), es.astype(int)


def pair_beats(curve: np.ndarray, ed: np.ndarray, es: np.ndarray) -> list[tuple[int, int]]:
    """``(ED, ES)`` pairs: each ED with the smallest area before the next ED.

    Between two EDs the smallest area is the ES frame, whether or not the peak
    finder kept it (a noisy curve can have a deeper dip just before the first
    ED that hides it by the distance rule).  After the last ED the clip may end
    in mid-systole, so there the ES must be a detected minimum ``es``.
    """
    pairs: list[tuple[int, int]] = []
    for i, e in enumerate(ed):
        if i + 1 < len(ed):
            nxt = int(ed[i + 1])
            if nxt - e >= 2:
                pairs.append((int(e), int(e + 1 + np.argmin(curve[e + 1 : nxt]))))
            continue
        cand = [s for s in es if s > e]
        if cand:
            pairs.append((int(e), int(min(cand, key=lambda s: curve[s]))))
    return pairs


def measure_video(
    masks: np.ndarray,
    spacing: tuple[float, float] | None = None,
    fps: float | None = None,
    label: int = 1,
    max_heart_rate_bpm: float = MAX_HEART_RATE_BPM,
    smooth_s: float = 0.1,
    default_fps: float = 50.0,
) -> EchoMeasurement:
    """All measurements of one segmented video (see the module notes).

    Args:
        masks: ``(T, H, W)`` integer label maps.
        spacing: pixel size ``(row mm, column mm)``; None: pixels.
        fps: frames per second; None: ``default_fps`` (EchoNet-Dynamic's
            videos are about 50 frames/s) and ``fps_known`` False.
        label: the LV label.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise UserError(f"masks must be (T, H, W), got shape {masks.shape}")
    rate = float(fps) if fps else float(default_fps)
    area = lv_area(masks, spacing, label)
    length = np.array([long_axis_length(m == label, spacing) for m in masks])
    volume = area_length_volume(area, length)
    if spacing is not None:
        volume = volume / 1000.0  # mm³ -> mL
    smooth = smooth_curve(area, rate, smooth_s)
    ed, es = find_phases(smooth, rate, max_heart_rate_bpm)
    pairs = pair_beats(smooth, ed, es)
    fallback = False
    if not pairs and np.ptp(area) > 0:
        # a clip shorter than a beat: the largest and the smallest LV of the clip
        pairs, fallback = [(int(np.argmax(smooth)), int(np.argmin(smooth)))], True
    beats = [
        Beat(e, s, float(area[e]), float(area[s]), float(length[e]), float(length[s]),
             float(volume[e]), float(volume[s]))
        for e, s in pairs
    ]
    return EchoMeasurement(rate, bool(fps), "mm" if spacing is not None else "px", area, smooth, length,
                           volume, [int(i) for i in ed], [int(i) for i in es], beats, fallback)


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #
def write_measurement_csv(m: EchoMeasurement, path: str | os.PathLike) -> Path:
    """One row per frame: time, area, smoothed area, long axis, volume, phase and beat number."""
    u = m.unit
    vol = "ml" if u == "mm" else "px3"
    phase = {}
    for i, b in enumerate(m.beats):
        phase[b.ed] = ("ED", i)
        phase[b.es] = ("ES", i)
    rows = []
    for t in range(len(m.area)):
        ph, beat = phase.get(t, ("", ""))
        rows.append({"frame": t, "time_s": f"{t / m.fps:.4f}", f"area_{u}2": f"{m.area[t]:.4f}",
                     f"area_smooth_{u}2": f"{m.area_smooth[t]:.4f}", f"long_axis_{u}": f"{m.length[t]:.4f}",
                     f"volume_{vol}": f"{m.volume[t]:.6g}", "phase": ph, "beat": beat})
    columns = ["frame", "time_s", f"area_{u}2", f"area_smooth_{u}2", f"long_axis_{u}", f"volume_{vol}", "phase", "beat"]
    return write_table(path, rows, columns)


def write_beats_csv(m: EchoMeasurement, path: str | os.PathLike) -> Path:
    """One row per beat: ED/ES frames, areas, lengths, volumes, FAC and EF (percent), and its :func:`beat_flags`."""
    u = m.unit
    vol = "ml" if u == "mm" else "px3"
    columns = ["beat", "ed_frame", "es_frame", f"eda_{u}2", f"esa_{u}2", f"edl_{u}", f"esl_{u}",
               f"edv_{vol}", f"esv_{vol}", "fac_percent", "ef_percent", "fallback", "flag"]
    rows = [dict(zip(columns, [i, b.ed, b.es, f"{b.eda:.4f}", f"{b.esa:.4f}", f"{b.edl:.4f}", f"{b.esl:.4f}",
                               f"{b.edv:.6g}", f"{b.esv:.6g}", f"{b.fac:.3f}", f"{b.ef:.3f}", m.fallback,
                               "; ".join(beat_flags(b))],
                     strict=True))
            for i, b in enumerate(m.beats)]
    return write_table(path, rows, columns)


def plot_area_curve(m: EchoMeasurement, path: str | os.PathLike, title: str = "") -> Path:
    """PNG of the LV area curve (raw and smoothed) with the beats' ED and ES frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    t = np.arange(len(m.area)) / m.fps
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.plot(t, m.area, color="0.65", lw=1, label="area")
    ax.plot(t, m.area_smooth, color="k", lw=1.5, label="smoothed")
    ed = [b.ed for b in m.beats]
    es = [b.es for b in m.beats]
    ax.plot(t[ed], m.area_smooth[ed], "v", color="tab:red", ms=8, label="ED")
    ax.plot(t[es], m.area_smooth[es], "^", color="tab:blue", ms=8, label="ES")
    ax.set_xlabel("time (s)" if m.fps_known else f"time (s, assuming {m.fps:g} frames/s)")
    ax.set_ylabel(f"LV area ({'mm²' if m.unit == 'mm' else 'pixels'})")
    ef = f"EF {m.ef:.1f}%  FAC {m.fac:.1f}%  ({len(m.beats)} beat{'s' if len(m.beats) != 1 else ''}"
    ef += ", whole-clip extremes)" if m.fallback else ")"
    ax.set_title(f"{title}  {ef}" if title else ef, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def read_filelist_ef(path: str | os.PathLike) -> dict[str, float]:
    """EF (percent) per video from an EchoNet-Dynamic ``FileList.csv`` (``FileName``, ``EF``).

    Keys are file names without extension (the FileList has them with or without ``.avi``);
    rows whose EF is not a number are left out.

    Raises:
        ValueError: missing file or columns (:func:`sslseg.io.tables.read_filelist`).
    """
    out = {}
    for r in read_filelist(path, ("FileName", "EF")):
        try:
            out[filelist_name(r["FileName"])] = float(r["EF"])
        except ValueError:
            continue
    return out


def ef_error(estimated: Sequence[float] | Mapping[str, float], known: Sequence[float] | Mapping[str, float]) -> float:
    """Mean absolute error between estimated and known EF (EF points when both are in percent).

    Sequences are compared element by element; mappings over their shared keys.
    Pairs with an undefined (NaN) estimate are left out.

    Raises:
        ValueError: different lengths, or no pair to compare.
    """
    if isinstance(estimated, Mapping) and isinstance(known, Mapping):
        keys = [k for k in estimated if k in known]
        est = np.array([estimated[k] for k in keys], dtype=np.float64)
        ref = np.array([known[k] for k in keys], dtype=np.float64)
    else:
        est = np.asarray(list(estimated.values()) if isinstance(estimated, Mapping) else estimated, np.float64)
        ref = np.asarray(list(known.values()) if isinstance(known, Mapping) else known, np.float64)
        if est.shape != ref.shape:
            raise UserError(f"{est.size} estimated EF values but {ref.size} known ones")
    ok = np.isfinite(est) & np.isfinite(ref)
    if not ok.any():
        raise UserError("no video with both an estimated and a known EF")
    return float(np.abs(est[ok] - ref[ok]).mean())
