"""``predict`` flags an echo measurement outside the physiological range in echo_summary.csv and on the console."""

from __future__ import annotations

import csv
from fractions import Fraction

import numpy as np

from sslseg.cli import main
from sslseg.io.video import write_video
from sslseg.predict.run import Predictor


def ellipse_video(es_axes: tuple[float, float], frames: int = 45, size: int = 96, period: int = 40) -> np.ndarray:
    """Bright ellipses of semi-axes 36 x 16 px at ED (frame 10) moving to ``es_axes`` at ES (frame 30)."""
    r, c = np.mgrid[:size, :size].astype(np.float64)
    s = (1 - np.cos(2 * np.pi * (np.arange(frames) - 10) / period)) / 2
    a, b = 36 + (es_axes[0] - 36) * s, 16 + (es_axes[1] - 16) * s
    inside = ((r - 47.3)[None] / a[:, None, None]) ** 2 + ((c - 46.8)[None] / b[:, None, None]) ** 2 <= 1
    return np.where(inside, 200, 20).astype(np.uint8)


def test_an_impossible_and_an_implausible_ef_are_flagged(tmp_path, ckpt, threshold, capsys, monkeypatch):
    # V = 4/3 pi a b^2 for a prolate ellipsoid: at ES a shorter (36 -> 30) but wider (16 -> 18.5) LV has a
    # smaller area (30 * 18.5 < 36 * 16) and a larger volume: EF = 1 - 30 * 18.5^2 / (36 * 16^2) = -11.4%
    folder = tmp_path / "Videos"
    folder.mkdir()
    write_video(ellipse_video((30.0, 18.5)), folder / "wide.avi", Fraction(50), lossless=True)
    # 36 x 16 -> 12 x 8: EF = 1 - 12 * 8^2 / (36 * 16^2) = 91.7%, beyond the range
    write_video(ellipse_video((12.0, 8.0)), folder / "empties.avi", Fraction(50), lossless=True)
    write_video(ellipse_video((32.4, 12.8)), folder / "normal.avi", Fraction(50), lossless=True)  # EF 42.4%
    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, path, **kw: threshold(64, tile=True)))
    assert main(["predict", "--model", str(ckpt), str(folder), "--out", str(tmp_path / "out")]) == 0
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(tmp_path / "out" / "echo_summary.csv"))}
    assert float(rows["wide.avi"]["ef_percent"]) < 0 and "ES volume above ED volume (impossible)" in \
        rows["wide.avi"]["flag"]
    assert float(rows["empties.avi"]["ef_percent"]) > 90 and "outside 5-90% (implausible)" in rows["empties.avi"]["flag"]
    assert 30 < float(rows["normal.avi"]["ef_percent"]) < 55 and rows["normal.avi"]["flag"] == ""
    out = capsys.readouterr().out.splitlines()
    for name in ("wide.avi", "empties.avi"):
        i = next(i for i, s in enumerate(out) if s.startswith("ok") and name in s)
        assert out[i + 1] == f"        check the segmentation: {rows[name]['flag']}"
    i = next(i for i, s in enumerate(out) if s.startswith("ok") and "normal.avi" in s)
    assert "check the segmentation" not in out[i + 1]
    notes = {r["input"].rsplit("/", 1)[-1]: r["notes"] for r in csv.DictReader(open(tmp_path / "out" / "predictions.csv"))}
    assert "outside the physiological range" in notes["wide.avi"] and "outside" not in notes["normal.avi"]
