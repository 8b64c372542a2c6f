"""EchoNet-Dynamic reader: a tiny tree written here (AVIs via PyAV, both CSVs)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import av
import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from sslseg.cli import main
from sslseg.data import echonet as E
from sslseg.data.cache import MappedArray
from sslseg.data.registry import load_dataset

H = W = 32
T = 12


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_CACHE", str(tmp_path / "cache"))


def write_avi(path: Path, frames: np.ndarray, codec: str = "ffv1", pix_fmt: str = "gray") -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=50)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def video(seed: int, t: int = T) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (t, H, W), dtype=np.uint8)


def lv_rows(cx: float, cy: float, rx: float, ry: float, n: int = 8) -> list[list[float]]:
    """A tracing like EchoNet's: the long axis, then chords (X1, Y1) left end, (X2, Y2) right end."""
    rows = [[cx, cy - ry, cx, cy + ry]]
    for k in range(1, n + 1):
        yy = cy - ry + 2 * ry * k / (n + 1)
        half = rx * math.sqrt(max(0.0, 1 - ((yy - cy) / ry) ** 2))
        rows.append([cx - half, yy, cx + half, yy])
    return rows


def make_tree(root: Path) -> dict:
    (root / "Videos").mkdir(parents=True)
    vids = {"0XA": video(1), "0XB": video(2), "0XC": video(3), "0XONE": video(4), "0XTRUNC": video(5, 40)}
    for name, v in vids.items():
        write_avi(root / "Videos" / f"{name}.avi", v)
    data = (root / "Videos" / "0XTRUNC.avi").read_bytes()
    (root / "Videos" / "0XTRUNC.avi").write_bytes(data[: len(data) // 2])
    (root / "Videos" / "0XBAD.avi").write_bytes(b"this is not a video" * 20)
    files = [("0XA", "TRAIN", 55.0), ("0XB", "VAL", 60.0), ("0XC", "TEST", 40.0), ("0XONE", "TRAIN", 50.0),
             ("0XTRUNC", "TRAIN", 50.0), ("0XBAD", "TRAIN", 50.0), ("0XMISSING", "TRAIN", 50.0)]
    with open(root / "FileList.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"])
        for name, split, ef in files:
            w.writerow([name, ef, 20.0, 50.0, H, W, 50, T, split])
    traces = {
        # name: [(frame, rows)] in file order; first listed = ES, last = ED
        "0XA": [(7, lv_rows(15.3, 16.2, 5.1, 9.4)), (2, lv_rows(16.0, 15.5, 7.4, 11.6))],
        "0XB": [(3, lv_rows(14.0, 14.0, 4.0, 8.0)), (9, lv_rows(15.0, 15.0, 6.0, 10.0))],
        "0XC": [(1, lv_rows(12.0, 18.0, 6.0, 9.0)), (5, lv_rows(13.0, 17.0, 8.0, 11.0))],
        "0XONE": [(4, lv_rows(15.0, 15.0, 5.0, 8.0))],
        "0XTRUNC": [(1, lv_rows(15.0, 15.0, 5.0, 8.0)), (30, lv_rows(15.0, 15.0, 6.0, 9.0))],
        "0XBAD": [(1, lv_rows(15.0, 15.0, 5.0, 8.0)), (3, lv_rows(15.0, 15.0, 6.0, 9.0))],
        "0XMISSING": [(1, lv_rows(15.0, 15.0, 5.0, 8.0)), (3, lv_rows(15.0, 15.0, 6.0, 9.0))],
        "0XGHOST": [(1, lv_rows(15.0, 15.0, 5.0, 8.0)), (3, lv_rows(15.0, 15.0, 6.0, 9.0))],
    }
    with open(root / "VolumeTracings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
        for name, tr in traces.items():
            for frame, rows in tr:
                for r in rows:
                    w.writerow([f"{name}.avi", *r, frame])
    return {"videos": vids, "traces": traces}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "EchoNet-Dynamic"
    info = make_tree(root)
    return root, info


# ----------------------------------------------------------------------------- masks
def independent_fill(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A second rasteriser: matplotlib's point-in-polygon away from the outline, plus the
    lattice points lying exactly on an edge (integer arithmetic: collinear and between)."""
    xp, yp = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    pts = np.stack([cc.ravel(), rr.ravel()], 1)
    inside = MplPath(np.stack([xp, yp], 1)).contains_points(pts).reshape(shape)
    on = np.zeros(shape, bool)
    for i in range(len(xp)):
        ax, ay, bx, by = xp[i - 1], yp[i - 1], xp[i], yp[i]
        cross = (bx - ax) * (rr - ay) - (by - ay) * (cc - ax)
        between = (np.minimum(ax, bx) <= cc) & (cc <= np.maximum(ax, bx)) & (np.minimum(ay, by) <= rr) & (rr <= np.maximum(ay, by))
        on |= (cross == 0) & between
    return on | (inside & ~on)


def folds_back(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the rounded outline runs back over itself at a vertex (a zero-width spike).

    There the reference fill (scikit-image) treats the doubly traced edge as outside,
    where a plain boundary test says inside; such outlines are left out of the comparison.
    """
    p = np.stack([np.rint(x), np.rint(y)], 1)
    p = p[np.any(p != np.roll(p, 1, axis=0), axis=1)]
    a, b = p - np.roll(p, 1, axis=0), np.roll(p, -1, axis=0) - p
    return bool(np.any((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] == 0) & ((a * b).sum(1) < 0)))


def test_polygon_mask_agrees_with_an_independent_rasteriser():
    rng = np.random.default_rng(0)
    compared = 0
    while compared < 40:
        # star-shaped polygons, partly outside the image, like tracings near the edge
        n = int(rng.integers(3, 30))
        th = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(3, 14, n)
        cx, cy = rng.uniform(2, 30, 2)
        x, y = cx + r * np.cos(th), cy + r * np.sin(th)
        if folds_back(x, y):
            continue
        np.testing.assert_array_equal(E.polygon_mask(x, y, (28, 34)), independent_fill(x, y, (28, 34)))
        compared += 1


def test_polygon_mask_folded_outline_as_the_reference():
    # a zero-width spike (6,4)->(6,0)->(6,4) on the top edge of a square: O'Rourke's test,
    # hence skimage.draw.polygon, counts its doubly traced pixels as outside, keeps its tip
    x = np.array([2, 6, 6, 6, 12, 12, 2.0])
    y = np.array([4, 4, 0, 4, 4, 14, 14.0])
    m = E.polygon_mask(x, y, (16, 16))
    assert folds_back(x, y)
    assert m[0, 6] and not m[1:4, 6].any()
    assert m[4:15, 2:13].all() and m.sum() == 11 * 11 + 1


def test_polygon_mask_counts_lattice_points_like_picks_theorem():
    # Pick: interior points I = A - B/2 + 1; a fill that includes the outline has I + B pixels
    x = np.array([2, 17, 22, 9, 3.0])
    y = np.array([3, 1, 14, 20, 12.0])
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    b = sum(math.gcd(int(abs(x[i] - x[i - 1])), int(abs(y[i] - y[i - 1]))) for i in range(len(x)))
    assert E.polygon_mask(x, y, (32, 32)).sum() == area - b / 2 + 1 + b


def test_trace_polygon_drops_the_long_axis_and_reverses_x2():
    rows = np.array([[10, 0, 10, 20], [8, 5, 12, 5], [7, 10, 13, 10], [9, 15, 11, 15.0]])
    x, y = E.trace_polygon(rows)
    np.testing.assert_array_equal(x, [8, 7, 9, 11, 13, 12])
    np.testing.assert_array_equal(y, [5, 10, 15, 15, 10, 5])


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("codec,pix_fmt,tol", [("ffv1", "gray", 0), ("mjpeg", "yuvj420p", 10), ("libx264", "yuv420p", 6)])
def test_decode_video_gives_luma_in_full_range(tmp_path, codec, pix_fmt, tol):
    yy, xx = np.mgrid[:H, :W]
    src = np.stack([((xx * 8 + yy * 3 + 5 * t) % 256).astype(np.uint8) for t in range(6)])
    p = tmp_path / f"v_{codec}.avi"
    write_avi(p, src, codec, pix_fmt)
    out = E.decode_video(p)
    assert out.dtype == np.uint8 and out.shape == src.shape
    assert np.abs(out.astype(int) - src).mean() <= tol  # lossy codecs: close to the source
    # FFmpeg's own YUV -> grey conversion (what to_ndarray(format="gray") gives) is matched exactly
    with av.open(str(p)) as c:
        gray = np.stack([f.to_ndarray(format="gray") for f in c.decode(video=0)])
    np.testing.assert_array_equal(out, gray)


def test_unreadable_and_truncated_videos_name_the_file(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"nope" * 50)
    with pytest.raises(ValueError, match=r"bad\.avi: unreadable video"):
        E.decode_video(bad)
    p = tmp_path / "t.avi"
    write_avi(p, video(0, 30))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"t\.avi: (truncated|unreadable)"):
        E.decode_video(p)


# ----------------------------------------------------------------------------- the reader
def test_reader_builds_cases_as_the_reference(tree):
    root, info = tree
    cases = E.load_echonet(root, progress=False)
    by = {c.case_id: c for c in cases}
    assert sorted(by) == ["0XA", "0XB", "0XC"]
    assert [by[k].split for k in ("0XA", "0XB", "0XC")] == ["train", "val", "test"]
    a = by["0XA"]
    assert isinstance(a.frames, MappedArray) and a.frames.dtype == np.uint8 and a.frames.shape == (T, H, W)
    np.testing.assert_array_equal(np.asarray(a.frames), info["videos"]["0XA"])  # ffv1 is lossless
    # first traced frame listed = ES ("small"), last = ED ("large")
    assert a.phases == {7: "ES", 2: "ED"}
    assert a.labelled_indices == [2, 7]
    for frame, rows in info["traces"]["0XA"]:
        r = np.array(rows)
        x = np.concatenate([r[1:, 0], r[1:, 2][::-1]])
        y = np.concatenate([r[1:, 1], r[1:, 3][::-1]])
        m = a.masks[frame]
        assert m.dtype == np.int64 and m.shape == (H, W)
        np.testing.assert_array_equal(m, independent_fill(x, y, (H, W)).astype(np.int64))
    assert a.masks[2].sum() > a.masks[7].sum()  # ED larger than ES
    assert a.meta["ef"] == 55.0 and a.meta["edv"] == 50.0 and a.meta["esv"] == 20.0
    assert a.spacing == (1.0, 1.0) and not a.spacing_known and a.modality == "US" and not a.volume
    skipped = "\n".join(cases.skipped)
    assert len(cases.skipped) == 5, skipped
    for needle in ("0XONE: 1 traced frame", "0XTRUNC:", "0XBAD:", "0XMISSING: video file", "0XGHOST: tracings for a video that is not in FileList.csv"):
        assert needle in skipped


def test_second_load_uses_the_cache(tree, monkeypatch):
    root, _ = tree
    first = E.load_echonet(root, progress=False)
    real = E.decode_video

    def only_bad(p):  # unreadable videos are tried again (nothing is cached for them); good ones never
        assert Path(p).stem in ("0XTRUNC", "0XBAD"), f"{p} decoded again"
        return real(p)

    monkeypatch.setattr(E, "decode_video", only_bad)
    again = E.load_echonet(root, progress=False)
    assert [c.case_id for c in again] == [c.case_id for c in first]
    np.testing.assert_array_equal(np.asarray(again[0].frames), np.asarray(first[0].frames))


def test_missing_columns_and_files_are_one_line_errors(tmp_path):
    root = tmp_path / "e"
    make_tree(root)
    text = (root / "FileList.csv").read_text().replace("Split", "Fold")
    (root / "FileList.csv").write_text(text)
    with pytest.raises(ValueError, match=r"FileList\.csv: missing column\(s\) Split"):
        E.load_echonet(root, progress=False)
    (root / "FileList.csv").write_text(text.replace("Fold", "Split").replace("EDV", "Volume"))
    with pytest.raises(ValueError, match=r"FileList\.csv: missing column\(s\) EDV"):
        E.load_echonet(root, progress=False)
    (root / "FileList.csv").unlink()
    with pytest.raises(ValueError, match=r"FileList\.csv: file not found"):
        E.load_echonet(root, progress=False)
    root = tmp_path / "e2"
    make_tree(root)
    tracings = (root / "VolumeTracings.csv").read_text()
    (root / "VolumeTracings.csv").write_text(tracings.replace("Y2", "Y3", 1))
    with pytest.raises(ValueError, match=r"VolumeTracings\.csv: missing column\(s\) Y2"):
        E.load_echonet(root, progress=False)


def test_malformed_tracing_names_file_and_line(tree):
    root, _ = tree
    lines = (root / "VolumeTracings.csv").read_text().splitlines()
    lines[3] = "0XA.avi,abc,1,2,3,7"
    (root / "VolumeTracings.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"VolumeTracings\.csv line 4"):
        E.load_echonet(root, progress=False)


def test_empty_data_set_is_an_error(tmp_path):
    root = tmp_path / "e"
    (root / "Videos").mkdir(parents=True)
    (root / "FileList.csv").write_text("FileName,EF,ESV,EDV,Split\n")
    (root / "VolumeTracings.csv").write_text("FileName,X1,Y1,X2,Y2,Frame\n")
    with pytest.raises(ValueError, match="no usable video"):
        E.load_echonet(root, progress=False)


def test_registry_cli_summary_and_export(tree, tmp_path, capsys):
    root, _ = tree
    with pytest.raises(ValueError, match="unknown option 'splitt'"):
        load_dataset(f"echonet:{root}", splitt="x")
    cases = load_dataset(f"echonet:{root}", limit=2, progress=False)
    assert [c.case_id for c in cases] == ["0XA", "0XB"]
    out = tmp_path / "export"
    assert main(["data", f"echonet:{root}", "--export", str(out), "--image-size", "16",
                 "--set", "options.progress=false"]) == 0
    text = capsys.readouterr().out
    assert "cases: 3 (train 1, val 1, test 1); splits from the data set (FileList.csv Split)" in text
    assert "labelled: 6 in 3 cases" in text and "1 LV cavity" in text
    assert "skipped: 5 item(s)" in text and "in pixels" in text
    pngs = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert pngs == ["0XA_0002.png", "0XA_0007.png", "0XB_0003.png", "0XB_0009.png", "0XC_0001.png", "0XC_0005.png"]
    from PIL import Image

    m = np.asarray(Image.open(out / "masks" / "0XA_0002.png"))
    assert m.shape == (16, 16) and set(np.unique(m)) == {0, 1}
