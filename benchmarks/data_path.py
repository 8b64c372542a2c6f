"""Does the data path keep up? Batches/s the data path produces against batches/s a training step consumes.

The producer is what a pretraining run does per step (``sslseg.experiments.pipeline``):
draw the step's global indices, read the frames from a memory-mapped ``uint8``
cache, convert, resize as one batch, normalise (and pin, on CUDA). The consumer
is one SimCLR step (two views made on the device, forward, NT-Xent, backward,
AdamW) on batches already in memory. Both are timed in the same run; the ratio
producer/consumer says how far ahead the data path is (goal on a GPU: at least 3).
Then the two run together, the producer on :class:`sslseg.data.batches.Prefetcher`'s
thread: the time the step spends waiting for a batch is the stall.

    python benchmarks/data_path.py                                   # 112x112, batch 64, unet + deeplabv3
    python benchmarks/data_path.py --models unet --steps 3 --warmup 1  # a short CPU run

The cache holds frames of ``--native`` pixels (EchoNet-Dynamic's 112 by
default; a larger value makes the producer resize, as for CAMUS or DICOM).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sslseg.data.batches import FramePool, Normalizer, Prefetcher, pin, step_generator
from sslseg.data.sample import Case
from sslseg.models.build import build_model
from sslseg.pretrain.build import build_method


def memmap_cases(folder: Path, videos: int, frames: int, native: int, seed: int = 0) -> list[Case]:
    """``videos`` cases whose frames live in one memory-mapped ``uint8`` array, like the decode cache."""
    path = folder / "frames.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(videos * frames, native, native))
    rng = np.random.default_rng(seed)
    for v in range(videos):
        arr[v * frames:(v + 1) * frames] = rng.integers(0, 256, (frames, native, native), dtype=np.uint8)
    arr.flush()
    del arr
    stack = np.load(path, mmap_mode="r")
    return [Case(f"v{v:04d}", stack[v * frames:(v + 1) * frames], {}, (1.0, 1.0)) for v in range(videos)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def producer_rate(pool: FramePool, batch: int, steps: int, pin_memory: bool) -> float:
    """Batches/s of the per-step data path on this thread."""
    t0 = time.perf_counter()
    for s in range(steps):
        b = pool.load(pool.indices(batch, step_generator(0, s)))
        if pin_memory:
            pin(b)
    return steps / (time.perf_counter() - t0)


def make_step(arch: str, device: torch.device, bf16: bool):
    torch.manual_seed(0)
    method = build_method("simclr", build_model(arch, in_channels=1, num_classes=2)).to(device).train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)

    def step(images: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = method(images.to(device, non_blocking=True))["loss"]
        loss.backward()
        opt.step()

    return step


def consumer_rate(step, images: torch.Tensor, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step(images)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(images)
    _sync(device)
    return steps / (time.perf_counter() - t0)


def together(step, pool: FramePool, batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    """Steps fed by the prefetch thread: (steps/s, fraction of the time spent waiting for a batch)."""
    wait = 0.0
    with Prefetcher(lambda s: pool.load(pool.indices(batch, step_generator(0, s))), steps,
                    pin_memory=device.type == "cuda") as batches:
        t0 = time.perf_counter()
        for s in range(steps):
            tw = time.perf_counter()
            b = batches(s)
            wait += time.perf_counter() - tw
            step(b)
        _sync(device)
        total = time.perf_counter() - t0
    return steps / total, wait / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["unet", "deeplabv3"], choices=["unet", "deeplabv3"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=112, help="the model's input side")
    ap.add_argument("--native", type=int, default=112, help="side of the cached frames")
    ap.add_argument("--steps", type=int, default=10, help="timed consumer steps per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--producer-steps", type=int, default=30)
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--bf16", action="store_true", help="consumer under bf16 autocast")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size} from "
          f"{args.native}x{args.native} uint8 memmap, {'bf16' if args.bf16 else 'fp32'}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        pool = FramePool(memmap_cases(Path(tmp), args.videos, args.frames, args.native), args.size,
                         Normalizer(0.12, 0.2))
        produce = producer_rate(pool, args.batch, args.producer_steps, pin_memory=device.type == "cuda")
        print(f"producer: {produce:.2f} batches/s ({produce * args.batch:.0f} frames/s)")
        images = pool.batch(args.batch, step_generator(0, 0))
        print(f"{'model':<11}{'consumer b/s':>13}{'producer/consumer':>19}{'fed b/s':>9}{'waiting':>9}")
        for arch in args.models:
            step = make_step(arch, device, args.bf16)
            consume = consumer_rate(step, images, args.steps, args.warmup, device)
            fed, waiting = together(step, pool, args.batch, args.steps, device)
            print(f"{arch:<11}{consume:>13.3f}{produce / consume:>19.1f}{fed:>9.3f}{waiting:>9.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
