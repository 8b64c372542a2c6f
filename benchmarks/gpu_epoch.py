"""Seconds per SimCLR epoch over an EchoNet-size frame pool, and how busy the GPU is meanwhile.

One command, a few minutes on a GPU::

    python benchmarks/gpu_epoch.py                 # 7,459 frames at 112x112, DeepLabV3, bf16-mixed, batch 256
    python benchmarks/gpu_epoch.py --frames 256 --arch unet --batch 32 --precision 32   # a CPU smoke run

What it does, as a real run would:
1. writes synthetic echo videos in EchoNet-Dynamic's layout (``Videos/*.avi``,
   ``FileList.csv``, ``VolumeTracings.csv``; all in the TRAIN split) whose frames add
   up to ``--frames``; a few rendered synthetic-echo videos are varied (shifted,
   flipped, re-noised) to reach the count, since rendering thousands of frames
   would take longer than the benchmark;
2. reads them with ``load_echonet`` (decoded once into the memory-mapped cache; timed apart);
3. pretrains SimCLR through the library's loop (``sslseg.engine.loop.fit`` on
   Lightning Fabric, the prefetching data path with pinned batches), a few
   warm-up steps, then one epoch = ceil(frames / batch) steps, timed.

The GPU's busy fraction is ``torch.cuda.utilization()`` (NVML: the share of time
a kernel was running) sampled every 50 ms during the timed epoch; without NVML,
``nvidia-smi`` is polled instead. Goal on an H100/H200: under 5 s per epoch with
the GPU busy at least 70% of the time.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


def write_echonet(root: Path, frames: int, per_video: int, seed: int = 0, distinct: int = 6) -> int:
    """Synthetic echo in EchoNet-Dynamic's layout; returns the number of videos."""
    from sslseg.data.synthetic import make_echo_case
    from sslseg.io.video import write_video

    (root / "Videos").mkdir(parents=True, exist_ok=True)
    base = [make_echo_case(i, seed=seed, num_frames=per_video, size=112) for i in range(distinct)]
    rng = np.random.default_rng(seed)
    counts = [per_video] * (frames // per_video) + ([frames % per_video] if frames % per_video else [])
    if counts[-1] < 2:  # every video needs two traced frames
        counts[-2] -= 2 - counts[-1]
        counts[-1] = 2
    files, traces = [], []
    for v, n in enumerate(counts):
        src = base[v % distinct]
        clip = np.asarray(src.frames[:n]).astype(np.int16)
        clip = np.roll(clip, int(rng.integers(-6, 7)), axis=2)
        if rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        clip = np.clip(clip + rng.normal(0, 4, clip.shape), 0, 255).astype(np.uint8)
        name = f"0X{v:05d}"
        write_video(np.ascontiguousarray(clip), root / "Videos" / f"{name}.avi", Fraction(50), lossless=True)
        files.append([name, 55.0, 20.0, 50.0, 112, 112, 50, n, "TRAIN"])
        for frame in (0, n - 1):  # an ellipse-like tracing: the long axis, then chords
            rows = [[56, 30, 56, 80]] + [[56 - 12, y, 56 + 12, y] for y in range(35, 80, 5)]
            traces += [[f"{name}.avi", *r, frame] for r in rows]
    with open(root / "FileList.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"])
        w.writerows(files)
    with open(root / "VolumeTracings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "X1", "Y1", "X2", "Y2", "Frame"])
        w.writerows(traces)
    return len(counts)


class BusySampler(threading.Thread):
    """Samples the GPU's utilisation (percent of time a kernel ran) every ``period`` seconds."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self.how = period, [], "none"
        self._stop = threading.Event()
        try:
            torch.cuda.utilization()
            self.how = "nvml"
        except Exception:  # noqa: BLE001 - no NVML bindings: try nvidia-smi
            if shutil.which("nvidia-smi"):
                self.how = "nvidia-smi"

    def _read(self) -> float | None:
        if self.how == "nvml":
            return float(torch.cuda.utilization())
        if self.how == "nvidia-smi":
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  f"--id={torch.cuda.current_device()}"], capture_output=True, text=True)
            return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
        return None

    def run(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.period)

    def stop(self) -> float | None:
        self._stop.set()
        self.join()
        return float(np.mean(self.samples)) / 100 if self.samples else None


def main(argv: list[str] | None = None) -> int:
    from sslseg.data.batches import FramePool, Normalizer, Prefetcher, step_generator
    from sslseg.data.echonet import load_echonet
    from sslseg.engine.distributed import start
    from sslseg.engine.loop import LoopConfig, fit
    from sslseg.models.build import build_model
    from sslseg.pretrain.build import build_method

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=7459, help="frames in the epoch's pool")
    ap.add_argument("--per-video", type=int, default=100, help="frames per synthetic video")
    ap.add_argument("--arch", default="deeplabv3", choices=["deeplabv3", "unet"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="bf16-mixed", choices=["32", "bf16-mixed", "16-mixed"])
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--workdir", help="keep the videos and cache here (default: a temporary folder)")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="sslseg-gpu-epoch-") if args.workdir is None else args.workdir
    root = Path(tmp) / "EchoNet-Dynamic"
    try:
        t0 = time.perf_counter()
        if not (root / "FileList.csv").is_file():
            n_videos = write_echonet(root, args.frames, args.per_video)
        else:
            n_videos = sum(1 for _ in open(root / "FileList.csv")) - 1
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        cases = load_echonet(root, cache_dir=str(Path(tmp) / "cache"), progress=False)
        t_decode = time.perf_counter() - t0
        torch.backends.cudnn.benchmark = True
        fabric = start(1, args.precision)
        torch.manual_seed(0)
        method = build_method("simclr", build_model(args.arch, in_channels=1, num_classes=2))
        pool = FramePool(cases, 112, Normalizer.fit(cases))
        epoch = math.ceil(len(pool) / args.batch)
        total = args.warmup + epoch
        marks: dict[str, float] = {}
        sampler = BusySampler() if fabric.device.type == "cuda" else None

        def after_step(step: int, _total: int) -> None:
            if step + 1 == args.warmup:
                if fabric.device.type == "cuda":
                    torch.cuda.synchronize()
                marks["start"] = time.perf_counter()
                if sampler is not None:
                    sampler.start()

        def make(step: int):
            return pool.load(pool.indices(args.batch, step_generator(0, step)))

        with Prefetcher(make, total, depth=4, pin_memory=fabric.device.type == "cuda") as batches:
            fit(method, batches, LoopConfig(steps=total, lr=1e-3, log_every=max(1, total), warmup_steps=0),
                after_step=after_step, fabric=fabric, desc="gpu epoch")
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - marks["start"]
        busy = sampler.stop() if sampler is not None else None
        name = torch.cuda.get_device_name() if fabric.device.type == "cuda" else "cpu"
        print(f"device {name}; {args.arch}, {args.precision}, batch {args.batch}; torch {torch.__version__}")
        print(f"data: {n_videos} videos, {len(pool)} frames at 112x112 (written in {t_write:.1f} s, "
              f"decoded to the cache in {t_decode:.1f} s)")
        print(f"SimCLR epoch: {epoch} steps in {seconds:.2f} s ({len(pool) / seconds:.0f} frames/s) "
              f"after {args.warmup} warm-up steps")
        if sampler is not None:
            print(f"GPU busy: {busy:.0%} of the epoch ({sampler.how}, {len(sampler.samples)} samples)"
                  if busy is not None else "GPU busy: not measurable (no NVML, no nvidia-smi)")
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
