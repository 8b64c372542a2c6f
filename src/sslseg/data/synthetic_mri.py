"""Synthetic T2-weighted axial prostate MRI volumes with zonal labels.

The embedded default for the MRI side (``synthetic-mri``), shaped like
Medical Segmentation Decathlon Task05_Prostate: one volume is one
:class:`~sslseg.data.sample.Case`, its axial slices are the frames (``float32``
``(S, H, W)``), every slice is labelled (0 background, 1 peripheral zone PZ,
2 transition zone TZ; slices above and below the gland are background only).

What makes it MRI-like, and hard in the right places:

1. **Anatomy (mm, patient frame).**  An elliptic body with subcutaneous fat;
   obturator internus and gluteal muscles; femoral heads and the pubic
   symphysis (dark cortex, fatty marrow); the bladder above and in front of
   the gland; the rectum behind it (dark wall, air or content inside).  The
   prostate is a perturbed ellipsoid, wider at the base than at the apex and
   flattened where the rectum presses on it.  The TZ is an ellipsoid in the
   anterior-central gland, larger towards the base (benign hyperplasia grows
   it, so its size varies a lot between cases), joined by the anterior
   fibromuscular stroma; the PZ is the rest of the gland, the crescent
   behind and around it, dominant at the apex.  A thin dark capsule, the
   urethra and the neurovascular bundles complete it.
2. **Contrast.**  T2 intensities per tissue (fat and fluid bright, muscle and
   cortex dark, PZ brighter than the nodular TZ) drawn per case, with texture
   per tissue; sometimes a dark PZ lesion that looks like TZ.  The PZ/TZ
   contrast varies from clear to faint, as between scanners and patients.
3. **Acquisition.**  Thick slices (3-4 mm) average the anatomy through the
   slice (partial volume); an in-plane point-spread blur; a smooth
   multiplicative bias field (surface or endorectal coil: brightest near the
   coil); Rician noise: the magnitude of the signal plus complex Gaussian
   noise, so that air is Rayleigh-distributed, as in magnitude MR images
   (Gudbjartsson & Patz, MRM 1995).
4. **Scale.**  Each volume is divided by its 99.5th percentile, as the
   Decathlon reader does (MR has no absolute intensity scale).

Every case comes from ``np.random.default_rng([seed, index])`` so a case does
not depend on how many cases are drawn.  The field of view varies per case
(120-150 mm), so spacing varies around 1.4 mm for 96 pixels (Task05 has 0.6
mm over 320 pixels: the same anatomy at a coarser grid).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import UserError
from .memory import check_fits
from .sample import Case

__all__ = ["LABEL_NAMES", "make_mri_case", "synthetic_mri"]

LABEL_NAMES = {0: "background", 1: "PZ", 2: "TZ"}
_SUB = 3  # through-slice samples for partial volume


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((f - f.mean()) / (f.std() + 1e-8)).astype(np.float32)


def _ellipsoid(x, y, z, c, r) -> np.ndarray:
    """Normalised radius ``sqrt(sum(((p - c) / r)^2))`` (< 1 inside)."""
    return np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)


def make_mri_case(index: int, seed: int = 0, num_slices: int = 20, size: int = 96) -> Case:
    """One synthetic prostate volume (see the module notes).

    Shape:
        ``frames`` float32 ``(num_slices, size, size)``; ``masks`` every
        slice, int64 ``(size, size)`` with 0 background, 1 PZ, 2 TZ.
    """
    if num_slices < 1 or size < 16:
        raise UserError(f"synthetic-mri needs num_slices >= 1 and size >= 16, got {num_slices}, {size}")
    rng = np.random.default_rng([seed, index])
    fov = _u(rng, 120.0, 150.0)
    dxy = fov / size
    thick = _u(rng, 3.0, 4.0)

    # ---- grid: rows = anterior (top) -> posterior, columns = patient right -> left
    S = num_slices
    zc = (np.arange(S) - (S - 1) / 2.0) * thick
    sub = (np.arange(_SUB) + 0.5) / _SUB - 0.5
    zs = (zc[:, None] + sub[None] * thick).reshape(-1)  # (S * _SUB,)
    ax = (np.arange(size) + 0.5 - size / 2.0) * dxy
    Z, Y, X = np.meshgrid(zs, ax, ax, indexing="ij")
    Zc, Yc, Xc = np.meshgrid(zc, ax, ax, indexing="ij")  # slice centres, for the labels

    # ---- anatomy parameters
    body = (_u(rng, 0.40, 0.46) * fov, _u(rng, 0.30, 0.36) * fov)
    body_c = (_u(rng, -4, 4), _u(rng, -3, 5))
    fat_t = _u(rng, 6.0, 16.0)
    p_c = (_u(rng, -6, 6), _u(rng, -4, 8), _u(rng, -5, 5))
    p_r = (_u(rng, 18, 26), _u(rng, 13, 18), _u(rng, 16, 22))
    taper = _u(rng, 0.08, 0.28)  # base (superior) wider than apex
    flat = _u(rng, 0.78, 0.95)  # posterior radius factor (rectum)
    harm = [(k, _u(rng, 0, 0.06), _u(rng, 0, 2 * math.pi)) for k in (2, 3)]
    tz_frac = _u(rng, 0.5, 0.8)  # BPH: TZ size relative to the gland
    tz_c = (p_c[0] + _u(rng, -2, 2), p_c[1] - _u(rng, 0.1, 0.3) * p_r[1], p_c[2] + _u(rng, 0.05, 0.25) * p_r[2])
    tz_r = (tz_frac * p_r[0], tz_frac * _u(rng, 0.85, 1.0) * p_r[1], _u(rng, 0.7, 0.9) * p_r[2])
    rect_r = _u(rng, 11, 17)
    rect_c = (p_c[0] + _u(rng, -4, 4), p_c[1] + flat * p_r[1] + rect_r + _u(rng, 2, 5))
    blad_c = (p_c[0] + _u(rng, -5, 5), p_c[1] - _u(rng, 5, 15), p_c[2] + p_r[2] + _u(rng, 10, 22))
    blad_r = (_u(rng, 25, 40), _u(rng, 18, 28), _u(rng, 15, 25))
    fem_x = _u(rng, 0.30, 0.36) * fov
    fem_c = (_u(rng, -8, 2), p_c[2] + _u(rng, 5, 25))
    fem_r = _u(rng, 19, 24)
    pubis_c = (p_c[1] - p_r[1] - _u(rng, 8, 16), p_c[2] + _u(rng, -15, 0))
    lesion = rng.random() < 0.4
    les_c = (p_c[0] + rng.choice([-1, 1]) * _u(rng, 0.4, 0.7) * p_r[0], p_c[1] + _u(rng, 0.4, 0.7) * p_r[1], p_c[2] + _u(rng, -0.4, 0.3) * p_r[2])
    les_r = _u(rng, 4, 8)

    # ---- T2 intensities (relative)
    t2 = {
        "fat": _u(rng, 0.8, 1.0),
        "muscle": _u(rng, 0.15, 0.3),
        "pz": _u(rng, 0.45, 0.8),
        "tz": _u(rng, 0.28, 0.5),
        "capsule": _u(rng, 0.12, 0.25),
        "bladder": _u(rng, 0.95, 1.2),
        "rect_wall": _u(rng, 0.18, 0.3),
        "rect_lumen": _u(rng, 0.03, 0.5),
        "marrow": _u(rng, 0.5, 0.75),
        "cortex": 0.05,
        "nvb": _u(rng, 0.8, 1.0),
        "lesion": _u(rng, 0.2, 0.35),
    }

    # ---- geometry on the sub-slice grid
    def gland_rho(x, y, z):
        zn = np.clip((z - p_c[2]) / p_r[2], -1.5, 1.5)
        rx = p_r[0] * (1 + taper * zn)
        ry = np.where(y > p_c[1], flat * p_r[1], p_r[1])
        th = np.arctan2(y - p_c[1], x - p_c[0])
        pert = 1.0 + sum(a * np.cos(k * th + ph) for k, a, ph in harm)
        return np.sqrt(((x - p_c[0]) / rx) ** 2 + ((y - p_c[1]) / ry) ** 2 + ((z - p_c[2]) / p_r[2]) ** 2) / pert

    def zones(x, y, z):
        rho = gland_rho(x, y, z)
        gland = rho < 1.0
        tz = gland & ((_ellipsoid(x, y, z, tz_c, tz_r) < 1.0) | (y < p_c[1] - 0.6 * p_r[1]))
        return rho, gland, tz

    rho, gland, tz = zones(X, Y, Z)
    pz = gland & ~tz
    shape = X.shape
    img = np.zeros(shape, dtype=np.float32)
    body_rho = np.sqrt(((X - body_c[0]) / body[0]) ** 2 + ((Y - body_c[1]) / body[1]) ** 2)
    th_b = np.arctan2(Y - body_c[1], X - body_c[0])
    body_rho = body_rho / (1 + 0.03 * np.cos(2 * th_b + _u(rng, 0, 6.3)) + 0.02 * np.cos(3 * th_b + _u(rng, 0, 6.3)))
    in_body = body_rho < 1.0
    scale_b = min(body)
    img[in_body] = t2["fat"]
    inner = body_rho < 1.0 - fat_t / scale_b
    # pelvic cavity: fat with muscles around it
    img[inner] = t2["fat"] * 0.9
    for side in (-1, 1):
        obt = _ellipsoid(X, Y, Z, (side * (p_r[0] + _u(rng, 14, 22)), p_c[1] + _u(rng, -5, 5), 0), (_u(rng, 7, 11), _u(rng, 22, 32), 200.0)) < 1
        glut = _ellipsoid(X, Y, Z, (side * _u(rng, 0.2, 0.3) * fov, body_c[1] + 0.7 * body[1], 0), (_u(rng, 25, 35), _u(rng, 15, 22), 200.0)) < 1
        img[(obt | glut) & inner] = t2["muscle"]
        dz = Z - fem_c[1]
        rz = np.sqrt(np.clip(fem_r**2 - dz**2, 0, None))
        d = np.hypot(X - side * fem_x, Y - fem_c[0])
        img[(d < rz) & in_body] = t2["cortex"]
        img[(d < rz - 2.5) & in_body] = t2["marrow"]
    pub = _ellipsoid(X, Y, Z, (0, pubis_c[0], pubis_c[1]), (_u(rng, 10, 16), _u(rng, 6, 9), _u(rng, 14, 20)))
    img[(pub < 1) & inner] = t2["cortex"]
    img[(pub < 0.7) & inner] = t2["marrow"]
    img[_ellipsoid(X, Y, Z, blad_c, blad_r) < 1] = t2["bladder"]
    d_rect = np.hypot(X - rect_c[0], Y - rect_c[1])
    img[d_rect < rect_r] = t2["rect_wall"]
    img[d_rect < rect_r - 3.0] = t2["rect_lumen"]
    # the gland: zones with texture, capsule, urethra, neurovascular bundles
    tex_tz = _texture(rng, shape, (1.0 * _SUB, 1.5, 1.5))
    tex_pz = _texture(rng, shape, (1.0 * _SUB, 3.0, 3.0))
    img = np.where(tz, t2["tz"] * (1 + 0.25 * tex_tz), img)
    img = np.where(pz, t2["pz"] * (1 + 0.08 * tex_pz), img)
    if lesion:
        img = np.where(pz & (_ellipsoid(X, Y, Z, les_c, (les_r, les_r * 0.8, les_r)) < 1), t2["lesion"], img)
    img = np.where(gland & (rho > 0.93), t2["capsule"], img)
    ur = np.hypot(X - p_c[0], Y - (p_c[1] - 0.1 * p_r[1])) < _u(rng, 1.5, 3.0)
    img = np.where(ur & gland, _u(rng, 0.2, 0.9), img)
    for side in (-1, 1):
        nvb = np.hypot(X - (p_c[0] + side * 0.75 * p_r[0]), Y - (p_c[1] + 0.85 * flat * p_r[1])) < _u(rng, 1.5, 2.5)
        img = np.where(nvb & ~gland & (np.abs(Z - p_c[2]) < p_r[2]), t2["nvb"], img)
    # fat texture
    img = img * (1 + 0.06 * _texture(rng, shape, (_SUB, 2.0, 2.0)) * in_body)

    # ---- acquisition: partial volume, PSF, bias field, Rician noise
    img = img.reshape(S, _SUB, size, size).mean(axis=1)
    img = ndimage.gaussian_filter(img, (0, _u(rng, 0.5, 0.9), _u(rng, 0.5, 0.9)))
    xn, yn, zn = Xc / (fov / 2), Yc / (fov / 2), Zc / max(1.0, S * thick / 2)
    c = rng.uniform(-0.3, 0.3, 5)
    log_b = c[0] * xn + c[1] * yn + c[2] * xn * yn + c[3] * (xn**2 + yn**2) + 0.5 * c[4] * zn
    coil = _u(rng, 0.0, 0.8)  # endorectal / posterior coil hot spot
    log_b = log_b + coil * np.exp(-((Xc - rect_c[0]) ** 2 + (Yc - rect_c[1]) ** 2) / (2 * (0.18 * fov) ** 2))
    img = img * np.exp(log_b)
    ref = float(np.median(img[img > 0.05])) if np.any(img > 0.05) else 1.0
    sigma = _u(rng, 0.02, 0.06) * ref
    n1 = rng.normal(0.0, sigma, img.shape)
    n2 = rng.normal(0.0, sigma, img.shape)
    img = np.sqrt((img + n1) ** 2 + n2**2)
    img = (img / np.percentile(img, 99.5)).astype(np.float32)

    # ---- labels at the slice centres
    _, g_c, tz_cen = zones(Xc, Yc, Zc)
    lab = np.where(tz_cen, 2, np.where(g_c, 1, 0)).astype(np.int64)
    masks = {s: lab[s] for s in range(S)}
    meta = {
        "label_names": dict(LABEL_NAMES),
        "synthetic": True,
        "slice_thickness": thick,
        "fov_mm": fov,
        "noise_fraction": sigma / ref,  # Rician sigma relative to the median tissue signal
        "pz_tz_contrast": t2["pz"] / t2["tz"],
        "lesion": bool(lesion),
        "bias_coil": coil,
    }
    # contiguous slices: their spacing is the thickness
    return Case(f"synth_mri_{index:04d}", img, masks, (dxy, dxy), None, meta,
                volume=True, slice_spacing=thick, modality="MR", channels=("T2",))


def synthetic_mri(num_cases: int = 16, seed: int = 0, num_slices: int = 20, size: int = 96) -> list[Case]:
    """``num_cases`` independent synthetic prostate volumes; case ``i`` does not depend on ``num_cases``."""
    if num_cases < 1:
        raise UserError(f"synthetic-mri needs num_cases >= 1, got {num_cases}")
    # float32 slices and int64 masks (12 bytes a voxel) held, and one volume's working arrays while it
    # is drawn (about 450 bytes a voxel, measured): refused before the first case
    voxels = float(num_slices) * size * size
    check_fits(num_cases * voxels * 12 + voxels * 450,
               f"synthetic-mri with num_cases={num_cases}, num_slices={num_slices}, size={size}")
    return [make_mri_case(i, seed=seed, num_slices=num_slices, size=size) for i in range(num_cases)]
