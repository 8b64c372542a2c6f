"""Synthetic apical-four-chamber (A4C) echocardiography videos.

One video is one :class:`~sslseg.data.sample.Case`: ``frames`` is a ``uint8``
``(T, H, W)`` clip, ``masks`` holds the exact left-ventricle (LV) cavity mask of
the end-diastolic (ED, largest cavity) and end-systolic (ES, smallest cavity)
frames, like the two traced frames of EchoNet-Dynamic.

Why a simulator at all: the pipeline (pretraining, label-efficient fine-tuning,
evaluation, EF regression) has to be testable without downloading real data.
Why such a detailed one: a crude generator (clean ellipses in speckle) is so
easy that a randomly initialised UNet fine-tuned on a single labelled case
already reaches Dice ~0.95, which leaves no room for pretraining to help.  The
difficulty of real echo does not lie in the speckle, it lies in *missing and
misleading evidence* (walls that drop out, haze in the apex, shadows, valves
and papillary muscles touching the cavity) and in the *variation between
patients and machines* (depth, sector width, gain, dynamic range, heart size
and orientation).  The generator models those, and it makes appearance vary
much more across cases than within a case, so one labelled case generalises
poorly while many do well.

The model, step by step (all per case from ``np.random.default_rng([seed, index])``
so that a case does not depend on how many cases are drawn):

1. **Geometry (mm).**  The probe sits at the top centre of the image.  The
   heart has its own frame ``(u, v)``: ``u`` runs along the LV long axis from
   the endocardial apex towards the base, ``v`` across it (positive towards the
   lateral wall, i.e. image right, as in the standard A4C display).  The heart
   frame is placed at a random apex position and tilt.

   * LV cavity: a truncated ellipse ("bullet") -- an ellipse of semi-axes
     ``A`` (long) and ``B`` (short) centred at ``u = A``, cut by the mitral
     annulus plane ``u = L = A (1 + kappa)`` -- whose radius is perturbed by a
     few smooth Fourier harmonics so that LVs are not perfect ellipses.
   * LV myocardium: the same shape inflated by the wall thickness, minus the
     cavity.  RV: a smaller, shorter bullet on the septal side that is carved
     by the LV epicardium (crescent, shares the septum) with a thin free wall.
     LA and RA: ellipses beyond the annulus planes, separated by a thin
     inter-atrial septum.  Pericardium: a bright shell around the ventricles.
   * Mitral and tricuspid leaflets (line segments hinged at the annulus,
     closed at ED and ES and swinging into the ventricle during filling),
     bright annulus "hinge" blobs, a papillary muscle (sometimes two) with a
     chorda, and a trabecular layer lining the endocardium.
   * **Mask convention**: the mask is the geometric cavity (endocardium closed
     by the straight annulus line), rasterised at pixel centres.  Papillary
     muscles, chordae and trabeculae inside the cavity belong to the cavity (as
     in clinical tracings), the closed leaflets bow into the atrium, outside
     the mask.  This is applied identically to every case.

2. **Cardiac cycle.**  A contraction state ``c(t)`` in ``[0, 1]`` (0 = ED,
   1 = ES), smooth and periodic, with a shorter systole than diastole; 1 to 2
   beats per clip and a random phase.  The long axis shortens (the base moves
   towards the quasi-static apex), the short axis shortens more, the wall
   thickens, the RV contracts, the atria fill during systole and the whole
   heart rocks by a few mm.  ED/ES are the frames of largest/smallest
   *rasterised* cavity area; ``meta["ef"]`` is the volume EF (area-length
   method on the ED/ES masks), ``meta["fac"]`` the area change.

3. **Echogenicity** (linear intensity, relative to myocardium).  Blood is
   30-45 dB below tissue, the pericardium and valves are the brightest.  Wall
   brightness depends on the angle between the wall normal and the beam
   (specular reflection) so the septum and lateral wall, parallel to the beam,
   are weak; on top of that the lateral wall, the apex, the inter-atrial septum
   and random patches drop out per case.  Side lobes smear bright walls into
   the cavities; a stationary clutter/haze (reverberation from the chest wall)
   fills the near field and hence the LV apex.

4. **Image formation** on a polar (depth x beam) grid, so that speckle grains
   get wider with depth as in a real scan-converted sector image:
   fully developed speckle is a smoothed complex Gaussian field whose modulus
   is Rayleigh.  It mixes a per-case fixed field, warped with the tissue motion
   (speckle tracking works on real echo because speckle is partly coherent
   frame to frame), with fresh per-frame speckle; blood decorrelates faster
   than tissue.  Then: depth-dependent residual attenuation after imperfect
   TGC (random "slider" curve), lateral gain variation, acoustic shadows (dark
   radial streaks from ribs/lung), electronic noise that grows with TGC, log
   compression with random gain, dynamic range and grey map, and scan
   conversion to ``size x size`` pixels.  Everything outside the fan is 0.

Depth (12-18 cm over ``size`` rows) sets the pixel spacing, so hearts appear
at different scales; columns may be a little wider than rows (EchoNet images
are also resized anisotropically), which ``spacing`` records.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .memory import check_fits
from .sample import Case

__all__ = ["make_echo_case", "synthetic_echo"]

# Polar (depth x beam-line) rendering grid.  Speckle is drawn on this grid so
# its lateral size grows with depth after scan conversion, as in real images.
_N_LINES = 96


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Zero-mean, unit-std smooth Gaussian random field."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _complex_speckle(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Band-limited circular complex Gaussian field with E|z|^2 = 1 (its modulus is Rayleigh).

    The smoothing kernel plays the role of the point-spread function.
    """
    re = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    im = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    z = re + 1j * im
    return (z / np.sqrt(np.mean(np.abs(z) ** 2))).astype(np.complex64)


def _seg_dist(u, v, pu, pv, qu, qv):
    """Distance from points (u, v) to the segments p->q (all broadcastable)."""
    du, dv = qu - pu, qv - pv
    t = np.clip(((u - pu) * du + (v - pv) * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
    return np.hypot(u - (pu + t * du), v - (pv + t * dv))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _bilinear_weights(fi: np.ndarray, fj: np.ndarray, shape: tuple[int, int]):
    """Flat gather indices and weights for bilinear sampling at fractional (fi, fj), clamped.

    A numpy gather is several times faster than ``ndimage.map_coordinates`` here.
    """
    n0, n1 = shape
    fi = np.clip(fi, 0, n0 - 1.001)
    fj = np.clip(fj, 0, n1 - 1.001)
    i0, j0 = fi.astype(np.int32), fj.astype(np.int32)
    wi, wj = (fi - i0).astype(np.float32), (fj - j0).astype(np.float32)
    k = i0 * n1 + j0
    return (k, k + 1, k + n1, k + n1 + 1), (
        (1 - wi) * (1 - wj),
        (1 - wi) * wj,
        wi * (1 - wj),
        wi * wj,
    )


def _gather(field: np.ndarray, idx, wts) -> np.ndarray:
    """Bilinear sample of the trailing two axes of ``field`` with precomputed weights."""
    flat = field.reshape(field.shape[:-2] + (-1,))
    out = None
    for k, w in zip(idx, wts, strict=True):
        term = np.take(flat, k, axis=-1) * w
        out = term if out is None else out + term
    return out


def _radial_limit(phi: np.ndarray, harm: list[tuple[int, float, float]]) -> np.ndarray:
    """Smooth radial perturbation 1 + sum_k a_k cos(k phi + p_k) of the LV outline."""
    r = np.ones_like(phi)
    for k, a, p in harm:  # python-float coefficients keep the dtype of phi
        r = r + a * np.cos(k * phi + p)
    return r


def _cycle(phase: np.ndarray, systole: float) -> tuple[np.ndarray, np.ndarray]:
    """Contraction c in [0, 1] (0 = ED, 1 = ES) and its derivative d c / d phase.

    Half-cosine rise over the systolic fraction, half-cosine fall over the rest:
    C1-smooth and periodic, with the asymmetric systole/diastole of a real cycle.
    """
    p = np.mod(phase, 1.0)
    sys = p < systole
    c = np.where(
        sys,
        0.5 * (1 - np.cos(np.pi * p / systole)),
        0.5 * (1 + np.cos(np.pi * (p - systole) / (1 - systole))),
    )
    dc = np.where(
        sys,
        0.5 * np.pi / systole * np.sin(np.pi * p / systole),
        -0.5 * np.pi / (1 - systole) * np.sin(np.pi * (p - systole) / (1 - systole)),
    )
    return c, dc


# --------------------------------------------------------------------------- #
# parameters
# --------------------------------------------------------------------------- #
def _draw_params(rng: np.random.Generator, num_frames: int, size: int) -> dict:
    P: dict = {}
    # --- probe / field of view -------------------------------------------------
    P["depth_cm"] = _u(rng, 12.0, 18.0)
    P["D"] = 10.0 * P["depth_cm"]  # mm
    P["half_angle"] = math.radians(_u(rng, 30.0, 44.0))
    P["dy"] = P["D"] / size  # mm per row
    P["dx"] = P["dy"] * _u(rng, 0.92, 1.2)  # mm per column (anisotropic resize)

    # --- heart size, shape and pose ----------------------------------------------
    s = _u(rng, 0.82, 1.12) * (P["D"] / 150.0) ** 0.35  # deeper scans tend to be larger hearts
    P["L0"] = s * _u(rng, 78.0, 100.0)  # apex -> annulus (ED)
    P["B0"] = P["L0"] / (2.0 * _u(rng, 1.55, 2.3))  # half width; aspect L / 2B
    P["kappa"] = _u(rng, 0.55, 0.8)  # annulus cut of the ellipse
    n_strong = rng.random() < 0.5  # "occasional" clearly non-elliptic LV
    amp = 0.07 if n_strong else 0.03
    P["harm"] = [
        (k, _u(rng, 0.0, amp) / math.sqrt(k - 1), _u(rng, 0, 2 * math.pi)) for k in (2, 3, 4)
    ]
    P["t0"] = _u(rng, 6.5, 11.5)  # LV wall thickness
    P["apex_x"] = _u(rng, -4.0, 6.0)  # sonographers put the apex mid-sector
    P["apex_y"] = _u(rng, 20.0, 40.0) * (P["D"] / 150.0) ** 0.5
    P["tilt"] = math.radians(_u(rng, -6.0, 22.0))
    # RV
    P["rv_b"] = _u(rng, 0.5, 0.85)  # RV half width / LV half width
    P["rv_apex"] = _u(rng, 0.12, 0.32)  # RV apex offset / L
    P["rv_base"] = _u(rng, 0.9, 1.0)  # tricuspid level / L
    P["rv_ov"] = _u(rng, 0.15, 0.45)  # how much RV wraps the septum
    P["t_rv"] = _u(rng, 2.5, 4.5)
    # atria
    P["la_a"] = _u(rng, 0.3, 0.5)  # LA semi-axis (along u) / L
    P["la_b"] = _u(rng, 0.9, 1.3)
    P["la_v"] = _u(rng, -0.1, 0.3)
    P["ra_a"] = _u(rng, 0.28, 0.48)
    P["ra_b"] = _u(rng, 0.8, 1.2)
    P["atr_kappa"] = _u(rng, 0.55, 0.8)
    P["t_at"] = _u(rng, 1.8, 3.0)
    # pericardium shell (gap, thickness)
    P["peri_gap"] = _u(rng, 0.0, 1.5)
    P["peri_t"] = _u(rng, 2.0, 5.0)
    # papillary muscles (lateral one always, septal one sometimes)
    P["pm_u"] = _u(rng, 0.5, 0.7)
    P["pm_size"] = _u(rng, 0.7, 1.3)
    P["pm2"] = rng.random() < 0.4
    P["pm2_u"] = _u(rng, 0.45, 0.7)

    # --- cardiac cycle --------------------------------------------------------------
    P["heart_rate"] = _u(rng, 50.0, 110.0)
    P["beats"] = _u(rng, 1.0, 2.0)
    P["phase0"] = _u(rng, 0.0, 1.0)
    P["systole"] = _u(rng, 0.3, 0.42)
    f = rng.beta(2.0, 1.4)  # contractility: 0 = failing, 1 = vigorous
    P["ls"] = 0.04 + 0.14 * f * _u(rng, 0.8, 1.2)  # long-axis shortening
    P["rs"] = 0.07 + 0.28 * f * _u(rng, 0.8, 1.2)  # short-axis shortening
    P["thick"] = 0.15 + 0.45 * f  # systolic wall thickening
    P["rv_s"] = _u(rng, 0.1, 0.3)
    P["rock"] = _u(rng, 0.0, 3.0)  # whole-heart rocking, mm
    P["rock_dir"] = _u(rng, 0.0, 2 * math.pi)
    P["rock_lag"] = _u(rng, -0.15, 0.15)

    # --- echogenicity (linear intensity; 1 = bright myocardium) ------------------
    db = lambda lo, hi: 10.0 ** (_u(rng, lo, hi) / 10.0)  # noqa: E731
    P["e_myo"] = db(-5.0, 0.0)
    P["e_peri"] = db(2.0, 8.0)
    P["e_blood"] = db(-45.0, -30.0)
    P["e_bg_near"] = db(-8.0, 0.0)
    P["e_bg_far"] = db(-30.0, -14.0)
    P["bg_len"] = _u(rng, 15.0, 50.0)
    P["e_valve"] = db(-2.0, 6.0)
    P["e_pm"] = db(-10.0, -1.0)
    P["e_trab"] = db(-26.0, -14.0)
    P["trab_w"] = _u(rng, 0.8, 2.5)  # mm
    P["ang_s"] = _u(rng, 0.35, 0.9)  # strength of angle dependence
    P["ang_p"] = _u(rng, 0.7, 2.0)
    P["tex_db"] = _u(rng, 2.0, 5.0)  # tissue texture (dB std)
    # dropouts
    P["d_lat"] = _u(rng, 0.5, 0.98) if rng.random() < 0.75 else 0.0
    P["d_lat_u"] = _u(rng, 0.1, 0.7)
    P["d_lat_w"] = _u(rng, 0.1, 0.3)
    P["d_apex"] = _u(rng, 0.4, 0.95) if rng.random() < 0.5 else 0.0
    P["d_ias"] = _u(rng, 0.5, 1.0) if rng.random() < 0.7 else 0.0
    P["d_sep"] = _u(rng, 0.3, 0.85) if rng.random() < 0.3 else 0.0
    P["d_sep_u"] = _u(rng, 0.2, 0.8)
    P["d_rand"] = _u(rng, 0.0, 0.9)
    P["d_rand_thr"] = _u(rng, 0.3, 1.2)
    # clutter / haze (stationary w.r.t. the probe) and side lobes
    P["haze_db"] = _u(rng, -30.0, -10.0)
    P["haze_len"] = _u(rng, 12.0, 45.0)
    P["haze_nf"] = _u(rng, 4.0, 14.0)  # near-field (chest wall) depth
    P["rev_db"] = _u(rng, -24.0, -10.0) if rng.random() < 0.5 else -99.0
    P["rev_r"] = _u(rng, 15.0, 45.0)
    P["rev_w"] = _u(rng, 1.5, 5.0)
    P["sl_db"] = _u(rng, -28.0, -14.0)
    P["sl_sigma"] = _u(rng, 3.0, 9.0)  # beam lines
    # speckle
    P["psf_r"] = _u(rng, 0.5, 1.1)  # in polar samples (axial)
    P["psf_t"] = _u(rng, 0.7, 1.8)  # in beam lines (lateral)
    P["coh_t"] = _u(rng, 0.55, 0.92)  # tissue speckle frame-to-frame coherence
    P["coh_b"] = _u(rng, 0.0, 0.35)  # blood decorrelates fast
    # system: attenuation/TGC, lateral gain, shadows, noise, log compression
    P["tgc_slope"] = _u(rng, -1.1, 0.6)  # residual dB/cm after TGC
    P["tgc_knots"] = rng.uniform(-5.0, 5.0, size=5)  # TGC "sliders", dB
    P["lat_gain"] = rng.uniform(-3.5, 3.5, size=3)  # dB at left/centre/right
    n_sh = int(rng.choice([0, 1, 1, 2, 2, 3]))
    P["shadows"] = [
        (
            _u(rng, -1.0, 1.0),
            math.radians(_u(rng, 1.5, 6.0)),
            _u(rng, -24.0, -7.0),
            _u(rng, 0.1, 0.7),
        )
        for _ in range(n_sh)
    ]
    P["noise_db"] = _u(rng, -52.0, -36.0)
    P["gain_db"] = _u(rng, -7.0, 6.0)
    P["dr_db"] = _u(rng, 38.0, 56.0)
    P["gamma"] = _u(rng, 0.7, 1.45)
    P["reject"] = _u(rng, 0.0, 0.12)
    return P


# --------------------------------------------------------------------------- #
# anatomy
# --------------------------------------------------------------------------- #
def _frame_states(P: dict, num_frames: int) -> dict:
    """Per-frame geometric parameters, shaped (T, 1, 1) for broadcasting."""
    t = np.arange(num_frames, dtype=np.float64)
    phase = P["phase0"] + P["beats"] * t / num_frames
    c, dc = _cycle(phase, P["systole"])
    c_rock, _ = _cycle(phase + P["rock_lag"], P["systole"])
    S: dict = {"c": c}
    S["L"] = P["L0"] * (1.0 - P["ls"] * c)
    S["A"] = S["L"] / (1.0 + P["kappa"])
    S["B"] = P["B0"] * (1.0 - P["rs"] * c)
    S["t"] = P["t0"] * (1.0 + P["thick"] * c)
    # valves open while the ventricle fills (c decreasing), closed at ED and ES
    S["open"] = np.clip(-dc / (np.max(np.abs(dc)) + 1e-9) * 1.8, 0.0, 1.0)
    # rocking of the whole heart (mm), applied to the apex position
    S["px"] = P["apex_x"] + P["rock"] * c_rock * math.cos(P["rock_dir"])
    S["py"] = P["apex_y"] + P["rock"] * c_rock * math.sin(P["rock_dir"])
    return {k: v.reshape(-1, 1, 1).astype(np.float32) for k, v in S.items()}


def _to_heart(x, y, px, py, tilt):
    """Image mm (x right, y depth) -> heart frame (u along the long axis, v lateral)."""
    su, cu = math.sin(tilt), math.cos(tilt)
    dx, dy = x - px, y - py
    return dx * su + dy * cu, dx * cu - dy * su


def _from_heart(u, v, px, py, tilt):
    su, cu = math.sin(tilt), math.cos(tilt)
    return px + u * su + v * cu, py + u * cu - v * su


def _lv_cavity(u, v, P, S):
    """Exact LV cavity indicator, plus normalised coordinates reused by the renderer."""
    A, B = S["A"], S["B"]
    xi, eta = (u - A) / A, v / B
    rho = np.hypot(xi, eta)
    lim = _radial_limit(np.arctan2(eta, xi), P["harm"])
    return (rho < lim) & (u < S["L"]), rho, lim


def _annulus_halfwidths(P: dict) -> tuple[float, float]:
    """Normalised (v / B) positions of the septal and lateral mitral hinge points."""
    k = P["kappa"]
    out = []
    for sign in (-1.0, 1.0):
        phi = sign * math.acos(k)
        for _ in range(6):  # fixed point: rho(phi) cos(phi) = kappa on the outline
            r = float(_radial_limit(np.array(phi), P["harm"]))
            phi = sign * math.acos(min(k / r, 0.999))
        r = float(_radial_limit(np.array(phi), P["harm"]))
        out.append(r * math.sin(phi))
    return out[0], out[1]


def _render_echogenicity(u, v, beam_x, beam_y, tex, P, S, hinge):
    """Linear echogenicity of the tissue at heart coordinates (u, v) -> (E, blood, lv_cav)."""
    A, B, L, t = S["A"], S["B"], S["L"], S["t"]
    tilt = P["tilt"]
    su, cu = math.sin(tilt), math.cos(tilt)

    def ang_factor(nu, nv):
        # specular reflection: strong when the wall normal is along the beam
        nx, ny = nu * su + nv * cu, nu * cu - nv * su
        cosang = np.abs(nx * beam_x + ny * beam_y) / (np.hypot(nx, ny) + 1e-9)
        return (1.0 - P["ang_s"]) + P["ang_s"] * cosang ** P["ang_p"]

    lv_cav, rho, lim = _lv_cavity(u, v, P, S)
    # LV epicardium: same outline inflated by the wall thickness
    ae, be = A + t, B + t
    xie, etae = (u - A) / ae, v / be
    rhoe = np.hypot(xie, etae)
    lv_epi = (rhoe < lim) & (u < L)
    lv_myo = lv_epi & ~lv_cav
    lv_ang = ang_factor(xie / ae, etae / be)

    # RV: bullet carved by the LV epicardium (crescent sharing the septum)
    Brv = P["rv_b"] * P["B0"] * (1.0 - P["rv_s"] * S["c"])
    u_rv0 = P["rv_apex"] * L
    Lrv = P["rv_base"] * L
    Arv = (Lrv - u_rv0) / (1.0 + P["kappa"])
    v_rv = -(B + t + Brv * (1.0 - P["rv_ov"]))
    xr, er = (u - u_rv0 - Arv) / Arv, (v - v_rv) / Brv
    rv_cav = (np.hypot(xr, er) < 1.0) & (u < Lrv) & ~lv_epi
    xre, ere = (u - u_rv0 - Arv) / (Arv + P["t_rv"]), (v - v_rv) / (Brv + P["t_rv"])
    rv_epi = (np.hypot(xre, ere) < 1.0) & (u < Lrv)
    rv_wall = rv_epi & ~rv_cav & ~lv_epi
    rv_ang = ang_factor(xre / (Arv + P["t_rv"]), ere / (Brv + P["t_rv"]))

    # atria (fill during systole: grow with c)
    grow = 1.0 + 0.12 * S["c"]
    ka = P["atr_kappa"]
    Ala, Bla = P["la_a"] * P["L0"] * grow, P["la_b"] * P["B0"] * grow
    u_la, v_la = L + 1.5 + Ala * ka, P["la_v"] * P["B0"]
    xl, el = (u - u_la) / Ala, (v - v_la) / Bla
    la_cav = (np.hypot(xl, el) < 1.0) & (u > L)  # open towards the mitral orifice
    xle, ele = (u - u_la) / (Ala + P["t_at"]), (v - v_la) / (Bla + P["t_at"])
    la_epi = (np.hypot(xle, ele) < 1.0) & (u > L)
    la_wall = la_epi & ~la_cav
    Ara, Bra = P["ra_a"] * P["L0"] * grow, P["ra_b"] * P["B0"] * grow
    u_ra, v_ra = Lrv + 1.5 + Ara * ka, v_rv
    xa, ea = (u - u_ra) / Ara, (v - v_ra) / Bra
    ra_cav = (np.hypot(xa, ea) < 1.0) & (u > Lrv) & ~la_epi
    xae, eae = (u - u_ra) / (Ara + P["t_at"]), (v - v_ra) / (Bra + P["t_at"])
    ra_wall = (np.hypot(xae, eae) < 1.0) & (u > Lrv) & ~ra_cav & ~la_epi
    at_ang = ang_factor(xle, ele)

    # pericardium: bright shell around the ventricles (mostly seen laterally and at the apex)
    g0, g1 = t + P["peri_gap"], t + P["peri_gap"] + P["peri_t"]
    rp0 = np.hypot((u - A) / (A + g0), v / (B + g0))
    rp1 = np.hypot((u - A) / (A + g1), v / (B + g1))
    peri = (rp1 < lim) & (rp0 >= lim) & (u < L + 4.0) & (v > -(B + t) * 0.6)
    peri_rv = (
        (
            np.hypot(
                xre * (Arv + P["t_rv"]) / (Arv + P["t_rv"] + 3.0),
                ere * (Brv + P["t_rv"]) / (Brv + P["t_rv"] + 3.0),
            )
            < 1.0
        )
        & ~rv_epi
        & (u < Lrv)
    )
    heart = lv_epi | rv_epi | la_epi | ra_wall | ra_cav

    # --- compose ------------------------------------------------------------------
    E = np.broadcast_to(tex["bg"], u.shape)  # background (chest wall / lung), from the caller
    E = np.where(heart, 0.0, E)
    myo_gain = P["e_myo"] * tex["myo"]
    # dropout of the lateral wall, apex and mid/basal septum
    lat = 1.0 - P["d_lat"] * np.exp(-((((u / P["L0"]) - P["d_lat_u"]) / P["d_lat_w"]) ** 2)) * (
        v > 0
    )
    apx = 1.0 - P["d_apex"] * np.exp(-(((u + t) / (0.18 * P["L0"])) ** 2))
    sep = 1.0 - P["d_sep"] * np.exp(-((((u / P["L0"]) - P["d_sep_u"]) / 0.15) ** 2)) * (v < 0)
    E = np.where(lv_myo, myo_gain * lv_ang * lat * apx * sep, E)
    E = np.where(rv_wall, 0.8 * myo_gain * rv_ang * apx, E)
    ias = 1.0 - P["d_ias"] * (v < v_la)
    E = np.where(la_wall, 0.7 * myo_gain * at_ang * ias, E)
    E = np.where(ra_wall, 0.6 * myo_gain * at_ang, E)
    E = np.where((peri | peri_rv) & ~heart, P["e_peri"] * tex["myo"] * (0.35 + 0.65 * lv_ang), E)
    blood = lv_cav | rv_cav | la_cav | ra_cav
    E = np.where(blood, P["e_blood"], E)

    # trabecular layer lining the ventricular endocardium (blurs the border; for the LV it
    # lies inside the cavity and hence inside the mask)
    d_in = np.clip(lim - rho, 0.0, None) * B
    E = E + lv_cav * P["e_trab"] * tex["myo"] * np.exp(-((d_in / P["trab_w"]) ** 2))
    d_rv = np.clip(1.0 - np.hypot(xr, er), 0.0, None) * Brv
    E = E + rv_cav * P["e_trab"] * tex["myo"] * np.exp(-((d_rv / P["trab_w"]) ** 2))

    # papillary muscle(s) and chorda
    hs, hl = hinge
    pm = np.zeros_like(u, dtype=bool)
    tips = []
    for pu, side in [(P["pm_u"], 1.0)] + ([(P["pm2_u"], -1.0)] if P["pm2"] else []):
        uc = pu * L
        xi_c = (uc - A) / A
        wall = B * np.sqrt(np.clip(1.0 - xi_c**2, 0.05, 1.0))
        a_pm, b_pm = 0.11 * L * P["pm_size"], 0.22 * B * P["pm_size"]
        vc = side * (wall - 0.35 * b_pm)
        pm = pm | ((((u - uc) / a_pm) ** 2 + ((v - vc) / b_pm) ** 2) < 1.0)
        tips.append((uc + 0.7 * a_pm, vc - side * 0.3 * b_pm))
    E = np.where(pm & lv_cav, P["e_pm"] * tex["myo"] * lv_ang, E)

    # valves: leaflets hinged at the annulus, closed at ED/ES, open into the ventricle in diastole
    op = S["open"]
    ang_o = op * (math.pi / 2 * 1.05)  # 0 = closed (pointing across), ~90 deg = open (to apex)
    val = np.zeros_like(u)
    for hv, length, sgn in ((hs, 0.62, 1.0), (hl, 0.46, -1.0)):
        width = (hl - hs) * B
        pv = hv * B
        # closed direction: across the annulus bowing a little into the atrium
        dir_u = np.cos(ang_o) * 0.33 - np.sin(ang_o)
        dir_v = sgn * (np.cos(ang_o) * 0.94 + np.sin(ang_o) * 0.25)
        nrm = np.hypot(dir_u, dir_v)
        qu, qv = L + length * width * dir_u / nrm, pv + length * width * dir_v / nrm
        d = _seg_dist(u, v, L, pv, qu, qv)
        val = np.maximum(val, np.exp(-((d / 1.1) ** 2)))
        # annulus hinge: bright fibrous ring
        val = np.maximum(val, 1.3 * np.exp(-(((u - L) ** 2 + (v - pv) ** 2) / 2.5**2)))
        if (
            sgn < 0 and tips
        ):  # chorda from the lateral papillary muscle to the posterior leaflet tip
            d = _seg_dist(u, v, tips[0][0], tips[0][1], qu, qv)
            val = np.maximum(val, 0.25 * np.exp(-((d / 0.6) ** 2)) * (1 - 0.7 * op))
    # tricuspid (shorter leaflets)
    wt = Brv * math.sqrt(1 - P["kappa"] ** 2)
    for pv_t, sgn in ((v_rv - wt, 1.0), (v_rv + wt, -1.0)):
        dir_u = np.cos(ang_o) * 0.33 - np.sin(ang_o)
        dir_v = sgn * (np.cos(ang_o) * 0.94 + np.sin(ang_o) * 0.25)
        nrm = np.hypot(dir_u, dir_v)
        qu, qv = Lrv + 0.5 * 2 * wt * dir_u / nrm, pv_t + 0.5 * 2 * wt * dir_v / nrm
        d = _seg_dist(u, v, Lrv, pv_t, qu, qv)
        val = np.maximum(val, 0.7 * np.exp(-((d / 1.0) ** 2)))
    E = E + P["e_valve"] * val * (0.5 + 0.5 * lv_ang)
    return E, blood, lv_cav


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def make_echo_case(index: int, seed: int = 0, num_frames: int = 32, size: int = 112) -> Case:
    """Generate one synthetic A4C echo video (deterministic in ``(index, seed)``)."""
    rng = np.random.default_rng([int(seed), int(index)])
    P = _draw_params(rng, num_frames, size)
    T, H, W = int(num_frames), int(size), int(size)
    D, alpha = P["D"], P["half_angle"]

    # Keep the whole LV (with its wall) inside the fan and the image: shrink the heart
    # deterministically until it fits rather than redrawing (keeps the RNG stream fixed).
    iy, ix = np.mgrid[0:H, 0:W].astype(np.float32)
    gx = (ix + 0.5 - W / 2.0) * P["dx"]
    gy = (iy + 0.5) * P["dy"]
    gr, gth = np.hypot(gx, gy), np.arctan2(gx, gy)
    in_sector = (gr <= D) & (np.abs(gth) <= alpha)
    safe = (gr <= 0.96 * D) & (np.abs(gth) <= alpha - math.radians(3.0))
    safe[:2], safe[-2:], safe[:, :2], safe[:, -2:] = False, False, False, False
    for _ in range(40):
        S0 = _frame_states({**P, "phase0": 0.0, "beats": 0.0}, 1)  # ED geometry
        u, v = _to_heart(gx, gy, S0["px"][0], S0["py"][0], P["tilt"])
        A, B, L = S0["A"][0], S0["B"][0], S0["L"][0]
        t0 = 3.0  # the cavity plus a margin must fit; the wall itself may touch the fan edge
        lim = _radial_limit(np.arctan2(v / (B + t0), (u - A) / (A + t0)), P["harm"])
        epi = (np.hypot((u - A) / (A + t0), v / (B + t0)) < lim) & (u < L)
        if not np.any(epi & ~safe):
            break
        P["L0"] *= 0.95
        P["B0"] *= 0.95
        P["apex_x"] *= 0.8
        P["tilt"] = 0.8 * P["tilt"] + 0.2 * math.radians(8.0)
        P["n_shrink"] = P.get("n_shrink", 0) + 1

    S = _frame_states(P, T)
    tilt = P["tilt"]

    # ---- exact masks on the pixel grid --------------------------------------------
    u, v = _to_heart(gx[None], gy[None], S["px"], S["py"], tilt)
    cav, _, _ = _lv_cavity(u, v, P, S)
    cav &= in_sector[None]
    areas = cav.reshape(T, -1).sum(1)
    ed, es = int(np.argmax(areas)), int(np.argmin(areas))

    # ---- polar rendering grid ------------------------------------------------------
    nr, nl = H, _N_LINES
    dr, dth = D / nr, 2 * alpha / nl
    pr = (np.arange(nr) + 0.5) * dr
    pth = -alpha + (np.arange(nl) + 0.5) * dth
    R, TH = (a.astype(np.float32) for a in np.meshgrid(pr, pth, indexing="ij"))
    bx, by = np.sin(TH), np.cos(TH)  # beam direction (unit)
    X, Y = R * bx, R * by

    # per-case fixed fields on the polar grid
    z_fix = _complex_speckle(rng, (nr, nl), (P["psf_r"], P["psf_t"]))
    tex_f = _smooth_noise(rng, (nr, nl), (3.0, 2.5)).astype(np.float32)
    drop_f = _smooth_noise(rng, (nr, nl), (6.0, 4.0))
    clut_f = _smooth_noise(rng, (nr, nl), (4.0, 3.0))
    bg_f = _smooth_noise(rng, (nr, nl), (5.0, 4.0))
    z_clut = _complex_speckle(rng, (nr, nl), (P["psf_r"], P["psf_t"]))

    # heart coordinates at every frame and their ED ("reference") positions, so
    # that fixed speckle and texture move with the tissue
    u, v = _to_heart(X[None], Y[None], S["px"], S["py"], tilt)
    L0, B0 = P["L0"], P["B0"]
    Lt, Bt = S["L"], S["B"]
    u_ref = np.where(u < Lt, u * (L0 / Lt), u + (L0 - Lt))
    v_vent = np.where(np.abs(v) <= Bt, v * (B0 / Bt), np.sign(v) * (np.abs(v) + (B0 - Bt)))
    w = np.clip((Lt + 10.0 - u) / 10.0, 0.0, 1.0)
    v_ref = w * v_vent + (1 - w) * v
    xr, yr = _from_heart(u_ref, v_ref, P["apex_x"], P["apex_y"], tilt)
    ir = np.hypot(xr, yr) / dr - 0.5
    it = (np.arctan2(xr, yr) + alpha) / dth - 0.5
    idx, wts = _bilinear_weights(ir, it, (nr, nl))
    zf = _gather(z_fix, idx, wts)
    tex_w = _gather(tex_f, idx, wts)
    tex = {
        "myo": 10.0 ** (P["tex_db"] * tex_w / 10.0),
        # chest wall bright near the probe, darker (lung/fat) deeper; textured
        "bg": (P["e_bg_near"] * np.exp(-R / P["bg_len"]) + P["e_bg_far"])[None]
        * 10.0 ** (5.0 * bg_f / 10.0)[None],
    }
    hinge = _annulus_halfwidths(P)
    E, blood, _ = _render_echogenicity(u, v, bx[None], by[None], tex, P, S, hinge)

    # finite resolution: the echo envelope of a boundary is blurred by the point-spread
    # function (axially short, laterally wide), so walls are not crisp cartoons
    E = ndimage.gaussian_filter(
        E, (0.0, 0.3 + 0.5 * P["psf_r"], 0.3 + 0.6 * P["psf_t"]), mode="nearest"
    )
    # random transducer-fixed dropout patches (poor acoustic window)
    drop = 1.0 - P["d_rand"] * np.clip((drop_f - P["d_rand_thr"]) / 1.0, 0.0, 1.0)
    E = E * drop[None]
    # side lobes: bright structures smeared laterally into the cavities
    E = E + 10 ** (P["sl_db"] / 10) * ndimage.gaussian_filter1d(
        E, P["sl_sigma"], axis=2, mode="nearest"
    )

    # speckle: fixed (tissue-locked) + fresh; blood decorrelates faster
    coh = np.where(blood, P["coh_b"], P["coh_t"])
    z_new = _complex_speckle(rng, (T, nr, nl), (0.0, P["psf_r"], P["psf_t"]))
    z = coh * zf + np.sqrt(1 - coh**2) * z_new
    inten = E * np.abs(z) ** 2

    # stationary clutter/haze from the chest wall and reverberation arcs (fills the apex)
    haze = 10 ** (P["haze_db"] / 10) * np.exp(-np.clip(R - P["haze_nf"], 0, None) / P["haze_len"])
    haze = haze * 10 ** (4.0 * clut_f / 10)
    haze = haze + 10 ** (P["rev_db"] / 10) * np.exp(-(((R - P["rev_r"]) / P["rev_w"]) ** 2)) * (
        1 + 0.5 * clut_f
    ).clip(0)
    # clutter speckle is mostly stationary (it does not move with the heart); its fresh
    # part reuses the per-frame speckle of another frame (time-reversed) to save draws
    zc = 0.85 * z_clut[None] + 0.53 * z_new[:, ::-1]
    inten = inten + haze[None] * np.abs(zc) ** 2

    # residual attenuation after TGC, TGC sliders, lateral gain, shadows (dB on the polar grid)
    r_cm = R / 10.0
    knots = np.interp(R / D, np.linspace(0, 1, len(P["tgc_knots"])), P["tgc_knots"])
    g_db = P["tgc_slope"] * r_cm + knots
    g_db = g_db + np.interp(TH / alpha, [-1, 0, 1], P["lat_gain"])
    for th_s, w_s, db_s, r_s in P["shadows"]:
        edge = _sigmoid((w_s - np.abs(TH - th_s * alpha)) / (0.25 * w_s))
        g_db = g_db + db_s * edge * _sigmoid((R - r_s * D) / 4.0)
    inten = inten * 10 ** (g_db / 10)[None]
    # electronic noise (amplified by TGC slider gain, so stronger where gain was pushed)
    noise = 10 ** ((P["noise_db"] + 0.5 * knots) / 10)[None] * rng.exponential(
        1.0, size=(T, nr, nl)
    )
    inten = inten + noise

    # log compression and grey map
    db_img = 10 * np.log10(inten + 1e-12) + P["gain_db"]
    img = np.clip((db_img + P["dr_db"] - 4.0) / P["dr_db"], 0, 1)
    img = np.clip((img - P["reject"]) / (1 - P["reject"]), 0, 1) ** P["gamma"]

    # ---- scan conversion -------------------------------------------------------------
    sr = gr / dr - 0.5
    st = (gth + alpha) / dth - 0.5
    idx, wts = _bilinear_weights(sr, st, (nr, nl))
    out = _gather(img.astype(np.float32), idx, wts)
    out = out * in_sector[None]
    frames = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    # ---- labels and metadata -------------------------------------------------------
    masks = {ed: cav[ed].astype(np.int64), es: cav[es].astype(np.int64)}
    pix = P["dx"] * P["dy"]

    def vol(i: int) -> float:  # area-length method, V = 8 A^2 / (3 pi L)
        a = float(areas[i]) * pix
        return 8 * a * a / (3 * math.pi * float(S["L"][i, 0, 0]))

    ef = 100.0 * (vol(ed) - vol(es)) / vol(ed)
    fac = 100.0 * float(areas[ed] - areas[es]) / float(areas[ed])
    meta = {
        "ef": ef,
        "fac": fac,
        "depth_cm": P["depth_cm"],
        "sector_deg": math.degrees(2 * alpha),
        "heart_rate": P["heart_rate"],
        "beats": P["beats"],
        "lv_area_px": [int(a) for a in areas],
        "synthetic": True,
        "n_shrink": P.get("n_shrink", 0),
    }
    return Case(
        case_id=f"synth_echo_{index:04d}",
        frames=frames,
        masks=masks,
        spacing=(float(P["dy"]), float(P["dx"])),
        split=None,
        meta=meta,
        modality="US",
        phases={ed: "ED", es: "ES"},
    )


def synthetic_echo(
    num_cases: int = 40, seed: int = 0, num_frames: int = 32, size: int = 112, unlabelled: int = 0
) -> list[Case]:
    """``num_cases`` independent synthetic A4C videos; case ``i`` does not depend on ``num_cases``.

    ``unlabelled`` more videos (cases ``num_cases`` on) come without their masks:
    the cheap unlabelled pool self-supervision is for. They join the training
    split (pretraining) and change no labelled case, split or subset.
    """
    # what it would hold (uint8 frames, two int64 masks: 1.5 bytes a pixel) and one case's float64
    # working arrays while it is drawn (about 230 bytes a pixel, measured): refused before the first case
    pixels = float(num_frames) * size * size
    check_fits((num_cases + unlabelled) * pixels * 1.5 + pixels * 230,
               f"synthetic-echo with num_cases={num_cases}, unlabelled={unlabelled}, num_frames={num_frames}, "
               f"size={size}")
    cases = [make_echo_case(i, seed=seed, num_frames=num_frames, size=size) for i in range(num_cases)]
    for i in range(num_cases, num_cases + unlabelled):
        case = make_echo_case(i, seed=seed, num_frames=num_frames, size=size)
        case.masks, case.phases = {}, {}
        cases.append(case)
    return cases
