"""Decode + cache throughput of the EchoNet reader, cold and warm (frames per second).

Writes an EchoNet-format tree (FileList.csv, VolumeTracings.csv, Videos/*.avi)
of moving speckled blobs in a temporary folder, then times, in one process:

* decode only: ``decode_video`` on every AVI, nothing cached (the cost a
  reader without a cache pays every epoch);
* cold load: ``load_echonet`` with an empty cache (decode + write ``.npy``);
* warm load: ``load_echonet`` again (content keys remembered, entries mapped);
* warm load, keys recomputed: as above after deleting the key index, so every
  file is hashed again (what a moved data set costs);
* read: every frame of every case through ``Case.frames[i]`` (memory map).

Usage: ``python benchmarks/decode_cache.py [--videos 20] [--frames 100] [--size 112] [--codec mjpeg]``
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from scipy import ndimage

from sslseg.data.cache import cache_dir
from sslseg.data.echonet import load_echonet
from sslseg.io.video import decode_video


def make_video(rng: np.random.Generator, t: int, size: int) -> np.ndarray:
    """Blurred speckle over a moving bright blob: compresses like grey echo, not like noise."""
    yy, xx = np.mgrid[:size, :size]
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (size, size)), 0.8)
    out = np.empty((t, size, size), np.uint8)
    for k in range(t):
        cy = size * (0.45 + 0.08 * np.sin(2 * np.pi * k / 30))
        blob = np.exp(-(((yy - cy) / (0.25 * size)) ** 2 + ((xx - size / 2) / (0.2 * size)) ** 2))
        img = 60 + 120 * (1 - blob) * speckle * (0.8 + 0.2 * rng.random())
        out[k] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_tree(root: Path, n: int, t: int, size: int, codec: str) -> None:
    (root / "Videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pix = {"mjpeg": "yuvj420p", "ffv1": "gray", "libx264": "yuv420p"}[codec]
    with open(root / "FileList.csv", "w", newline="") as f, open(root / "VolumeTracings.csv", "w", newline="") as g:
        fl, vt = csv.writer(f), csv.writer(g)
        fl.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"])
        vt.writerow(["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
        for i in range(n):
            name = f"0X{i:014X}"
            frames = make_video(rng, t, size)
            with av.open(str(root / "Videos" / f"{name}.avi"), "w") as c:
                s = c.add_stream(codec, rate=50)
                s.width = s.height = size
                s.pix_fmt = pix
                for fr in frames:
                    for p in s.encode(av.VideoFrame.from_ndarray(fr, format="gray")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
            fl.writerow([name, 55.0, 30.0, 70.0, size, size, 50, t, ("TRAIN", "VAL", "TEST")[i % 3]])
            for frame, r in ((t // 3, 0.25), (2 * t // 3, 0.32)):
                c0 = size / 2
                vt.writerow([f"{name}.avi", c0, 0.15 * size, c0, 0.85 * size, frame])
                for k in range(1, 21):
                    yv = 0.15 * size + 0.7 * size * k / 21
                    half = r * size * np.sqrt(max(0.0, 1 - ((yv - size / 2) / (0.35 * size)) ** 2))
                    vt.writerow([f"{name}.avi", c0 - half, yv, c0 + half, yv, frame])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--codec", default="mjpeg", choices=["mjpeg", "ffv1", "libx264"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sslseg-bench-"))
    try:
        root, cache = tmp / "EchoNet", tmp / "cache"
        write_tree(root, args.videos, args.frames, args.size, args.codec)
        total = args.videos * args.frames
        mb = sum(p.stat().st_size for p in (root / "Videos").iterdir()) / 2**20
        print(f"{args.videos} videos x {args.frames} frames, {args.size}x{args.size}, {args.codec}, {mb:.1f} MiB of AVI")

        def timed(label: str, fn) -> object:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            print(f"{label:<34s} {dt:7.3f} s  {total / dt:10.0f} frames/s")
            return out

        timed("decode only (no cache)", lambda: [decode_video(p) for p in sorted((root / "Videos").iterdir())])
        cases = timed("cold load (decode + write cache)", lambda: load_echonet(root, cache_dir=str(cache), progress=False))
        timed("warm load", lambda: load_echonet(root, cache_dir=str(cache), progress=False))
        shutil.rmtree(cache_dir(str(cache)) / "keys")
        timed("warm load, keys recomputed", lambda: load_echonet(root, cache_dir=str(cache), progress=False))
        timed("read every frame via Case.frames[i]", lambda: [c.frames[i] for c in cases for i in range(c.num_frames)])
        size = sum(p.stat().st_size for p in cache.rglob("*.npy")) / 2**20
        print(f"cache: {size:.1f} MiB of .npy for {mb:.1f} MiB of AVI")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
