"""SimCLR epochs over an EchoNet-Dynamic-size frame set: images/s, epoch time, and how busy the GPU is.

    python benchmarks/gpu_epoch.py                 # DeepLabV3 and UNet, both epoch kinds, bf16-mixed, batch 256
    python benchmarks/gpu_epoch.py --arch unet --epoch one-per-video
    python benchmarks/gpu_epoch.py --epoch all-frames --max-steps 500   # time 500 steps of the long epoch
    python benchmarks/gpu_epoch.py --smoke         # tiny sizes, runs on a CPU in seconds (checks the script)

The data: 7,465 synthetic echo videos (EchoNet-Dynamic's TRAIN split) with
1,315,340 frames at 112x112 in all (176 or 177 frames each: 16.5 GB as uint8),
held in host memory as ``Case`` objects like a decoded data set. A few distinct
rendered clips (``make_echo_case``) are shared between videos, since rendering
1.3 M frames would take longer than the benchmark; the training work does not
depend on the pixel values. (The decode and cache path is ``decode_cache.py``'s.)

Two epochs, as SimCLR pretraining runs them:

- ``one-per-video``: contrastive-echo's epoch, one random frame of each video
  (7,465 images; the videos shuffled per epoch), two views each;
- ``all-frames``: every frame once (1,315,340 images, shuffled), two views each.

A step's batch is a pure function of (seed, step), as in the library. The frames
go to the device as uint8 when ``resident_fits`` says they fit (the batch is
then cut, converted and normalised there: ``sslseg.data.batches.ResidentFramePool``),
otherwise the host path builds batches on the prefetching thread (``--resident``
forces either). Each run pretrains through the library's loop
(``sslseg.engine.loop.fit`` on Lightning Fabric, ``--precision``, bf16-mixed by
default): ``--warmup`` untimed steps, then the epoch (or its first ``--max-steps``
steps, and the epoch time is then stated as projected from the timed steps).

GPU busy fraction, two ways: (1) CUDA events recorded on the stream at the start
of each step's forward and after its optimiser step; the sum of those spans over
the epoch's wall time. A span also holds any wait of the GPU for the CPU within
the step, so this is an upper bound; what it leaves out is the time between
steps (batch cutting, copies, the loop's own work). (2) NVML's utilisation (the
share of time a kernel ran), sampled every 50 ms, where available.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import threading
import time

import numpy as np
import torch

#: EchoNet-Dynamic's TRAIN split
ECHONET_TRAIN_VIDEOS = 7465
ECHONET_TRAIN_FRAMES = 1_315_340


def video_lengths(videos: int, frames: int) -> list[int]:
    """``videos`` lengths as even as possible that add up to ``frames``."""
    base, extra = divmod(frames, videos)
    return [base + 1] * extra + [base] * (videos - extra)


def synthetic_videos(videos: int, frames: int, size: int, distinct: int = 8, seed: int = 0) -> list:
    """``videos`` training cases of 8-bit frames ``(T, size, size)``, views of ``distinct`` rendered clips."""
    from sslseg.data.sample import Case
    from sslseg.data.synthetic import make_echo_case

    lengths = video_lengths(videos, frames)
    longest = max(lengths)
    clips = [np.asarray(make_echo_case(i, seed=seed, num_frames=longest, size=size).frames, dtype=np.uint8)
             for i in range(min(distinct, videos))]
    return [Case(f"v{v:05d}", clips[v % len(clips)][:n], {}, (1.0, 1.0), split="train")
            for v, n in enumerate(lengths)]


class EpochDraw:
    """Flat frame indices of step ``s``: a pure function of (seed, step), like the library's step draws.

    ``one-per-video``: epoch ``e`` shuffles the videos, and each video gives one random frame;
    ``all-frames``: epoch ``e`` shuffles every frame. Batches are consecutive slices of the epoch's order.
    """

    def __init__(self, kind: str, offsets: np.ndarray, batch: int, seed: int = 0) -> None:
        self.kind, self.offsets, self.batch, self.seed = kind, offsets, batch, seed
        self.items = len(offsets) - 1 if kind == "one-per-video" else int(offsets[-1])
        self.steps_per_epoch = math.ceil(self.items / batch)
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.items)
            if self.kind == "one-per-video":
                counts = np.diff(self.offsets)[order]
                order = self.offsets[order] + (rng.random(len(order)) * counts).astype(np.int64)
            self._epoch, self._order = epoch, order
        return self._order

    def __call__(self, step: int) -> np.ndarray:
        epoch, s = divmod(step, self.steps_per_epoch)
        return self._order_of(epoch)[s * self.batch:(s + 1) * self.batch]


class StepEvents:
    """CUDA events at the start of each step's forward and after its optimiser step (see the module's text)."""

    def __init__(self) -> None:
        self.on = False
        self.pairs: list[list[torch.cuda.Event]] = []

    def start(self, *_args) -> None:
        if self.on:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.pairs.append([e])

    def end(self) -> None:
        if self.on and self.pairs and len(self.pairs[-1]) == 1:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.pairs[-1].append(e)

    def busy_seconds(self) -> float:
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in (p for p in self.pairs if len(p) == 2)) / 1000


class NvmlSampler(threading.Thread):
    """NVML utilisation (percent of time a kernel ran) every ``period`` seconds; nvidia-smi without NVML bindings."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self.how = period, [], "none"
        self._halt = threading.Event()
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
        while not self._halt.is_set():
            v = self._read()
            if v is not None:
                self.samples.append(v)
            self._halt.wait(self.period)

    def stop(self) -> float | None:
        self._halt.set()
        if self.is_alive():
            self.join()
        return float(np.mean(self.samples)) / 100 if self.samples else None


def run_epoch(arch: str, kind: str, pool, source, args, fabric) -> dict:
    """One SimCLR epoch (or its first ``--max-steps`` steps) of ``arch`` through the library's loop,
    batches cut from ``source`` (``pool`` itself, or its frames resident on the device)."""
    from sslseg.data.batches import Prefetcher
    from sslseg.engine.loop import LoopConfig, fit
    from sslseg.models.build import build_model
    from sslseg.pretrain.build import build_method

    cuda = fabric.device.type == "cuda"
    torch.manual_seed(0)
    method = build_method("simclr", build_model(arch, in_channels=1, num_classes=2))
    resident = source is not pool
    draw = EpochDraw(kind, pool.offsets, args.batch)
    timed = draw.steps_per_epoch if args.max_steps is None else min(args.max_steps, draw.steps_per_epoch)
    total = args.warmup + timed
    events, marks = StepEvents(), {}
    sampler = NvmlSampler() if cuda else None
    method.register_forward_pre_hook(events.start)

    def make(step: int):
        # the warm-up steps are the epoch's last ones, so the timed steps are its first ``timed``
        return source.load(draw((step - args.warmup) % draw.steps_per_epoch))

    def after_step(step: int, _total: int) -> None:
        events.end()
        if step + 1 == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            marks["start"] = time.perf_counter()
            events.on = cuda
            if sampler is not None:
                sampler.start()

    cfg = LoopConfig(steps=total, lr=1e-3, weight_decay=1e-4, log_every=max(1, total), warmup_steps=0)
    if resident:
        fit(method, make, cfg, after_step=after_step, fabric=fabric, desc=f"{arch} {kind}")
    else:
        with Prefetcher(make, total, depth=4, pin_memory=cuda) as batches:
            fit(method, batches, cfg, after_step=after_step, fabric=fabric, desc=f"{arch} {kind}")
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - marks["start"]
    images = sum(len(draw(s)) for s in range(timed))
    busy_events = events.busy_seconds() / seconds if cuda else None
    return {
        "arch": arch, "epoch": kind, "items": draw.items, "steps": draw.steps_per_epoch, "timed": timed,
        "seconds": seconds, "images_per_s": images / seconds,
        "epoch_s": seconds * draw.steps_per_epoch / timed, "projected": timed < draw.steps_per_epoch,
        "busy_events": busy_events, "busy_nvml": sampler.stop() if sampler is not None else None,
        "nvml_how": sampler.how if sampler is not None else "none",
    }


def main(argv: list[str] | None = None) -> int:
    from sslseg.data.batches import FramePool, Normalizer, batch_source
    from sslseg.engine.distributed import start

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["deeplabv3", "unet"], choices=["deeplabv3", "unet"])
    ap.add_argument("--epoch", nargs="+", default=["one-per-video", "all-frames"],
                    choices=["one-per-video", "all-frames"])
    ap.add_argument("--videos", type=int, default=ECHONET_TRAIN_VIDEOS)
    ap.add_argument("--frames", type=int, default=ECHONET_TRAIN_FRAMES, help="frames of all videos together")
    ap.add_argument("--size", type=int, default=112, help="frame side, stored and trained")
    ap.add_argument("--batch", type=int, default=256, help="images per step (each gives two views)")
    ap.add_argument("--precision", default="bf16-mixed", choices=["32-true", "bf16-mixed", "16-mixed"])
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--max-steps", type=int, help="time only the epoch's first N steps (the epoch time is projected)")
    ap.add_argument("--resident", default="auto", choices=["auto", "on", "off"],
                    help="frames on the device: auto (when the measured free memory allows), on, off")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes that run on a CPU in seconds: 12 videos, 96 frames, 32x32, batch 8, fp32")
    args = ap.parse_args(argv)
    if args.smoke:
        args.videos, args.frames, args.size, args.batch, args.warmup = 12, 96, 32, 8, 2
        args.precision = "32-true"
    if args.frames < 2 * args.videos:
        raise SystemExit(f"--frames {args.frames} must be at least twice --videos {args.videos}")
    torch.backends.cudnn.benchmark = True
    fabric = start(1, args.precision)
    t0 = time.perf_counter()
    cases = synthetic_videos(args.videos, args.frames, args.size)
    t_data = time.perf_counter() - t0
    name = torch.cuda.get_device_name() if fabric.device.type == "cuda" else "cpu (no GPU: a smoke run only)"
    print(f"device {name}; {args.precision}, batch {args.batch} (x2 views), torch {torch.__version__}")
    print(f"data: {args.videos} videos, {args.frames} frames at {args.size}x{args.size} "
          f"({args.frames * args.size ** 2 / 1e9:.1f} GB as uint8; made in {t_data:.1f} s)")
    pool = FramePool(cases, args.size, Normalizer.fit(cases))
    t0 = time.perf_counter()
    # one memory check and one copy for every run below: the frames stay where they are put
    source, why = batch_source(pool, fabric.device, args.resident)
    print(f"frames: {why} (placed in {time.perf_counter() - t0:.1f} s)")
    rows = []
    for arch in args.arch:
        for kind in args.epoch:
            rows.append(run_epoch(arch, kind, pool, source, args, fabric))
            if fabric.device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{'arch':<10}{'epoch':<15}{'images':>10}{'steps':>7}{'timed':>7}{'images/s':>10}{'epoch s':>10}"
          f"{'busy (events)':>15}{'busy (NVML)':>13}")
    for r in rows:
        ev = "-" if r["busy_events"] is None else f"{r['busy_events']:.0%}"
        nv = "-" if r["busy_nvml"] is None else f"{r['busy_nvml']:.0%}"
        ep = f"{r['epoch_s']:.2f}{'*' if r['projected'] else ''}"
        print(f"{r['arch']:<10}{r['epoch']:<15}{r['items']:>10,}{r['steps']:>7}{r['timed']:>7}"
              f"{r['images_per_s']:>10.0f}{ep:>10}{ev:>15}{nv:>13}")
    if any(r["projected"] for r in rows):
        print("* projected from the timed steps (--max-steps): timed seconds x steps per epoch / timed steps")
    print("images/s counts images (each gives two views); targets on one H100: one-per-video epoch <= 2 s, "
          "all-frames epoch <= 60 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
