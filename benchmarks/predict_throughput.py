"""Prediction throughput (frames/s) of UNet and DeepLabV3 at 112 x 112, on the CPU or a GPU.

Times ``Predictor.predict`` on a 8-bit echo-like clip (the whole path a video
takes in ``sslseg predict``: intensity range, resize, normalisation, forward
under ``torch.inference_mode``, log-softmax, arg-max, copy back), with and
without flip TTA, next to the bare forward pass of the same model on the same
batches, so the ratio shows what the prediction path adds. Weights are random:
speed does not depend on them. Reading and writing files is not included.

    python benchmarks/predict_throughput.py                    # CPU, or CUDA when there is one
    python benchmarks/predict_throughput.py --frames 64 --models unet

``--cine`` times a scanner-sized echo cine instead (480 x 640, a moving sector
under static text and a moving ECG trace): the echo preparation (sector found,
cropped, masked, resized to 112; masks back on the 480 x 640 grid) against
sliding windows of 112 at the cine's own scale, which is what a model trained
on 112 x 112 frames got before the preparation existed.  Tiling is timed on
``--tile-frames`` frames and scaled to the clip (its cost is linear in frames).

    python benchmarks/predict_throughput.py --cine --frames 120 --models unet
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sslseg.data.batches import Normalizer
from sslseg.models.build import build_model
from sslseg.predict.run import Predictor

MODELS = {
    "unet": lambda: build_model("unet", in_channels=1, num_classes=2, base_channels=16),
    "unet32": lambda: build_model("unet", in_channels=1, num_classes=2, base_channels=32),
    "deeplabv3": lambda: build_model("deeplabv3", in_channels=1, num_classes=2),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (allocations, cuDNN choices)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(model: torch.nn.Module, clip: np.ndarray, args) -> tuple[float, float, float]:
    """Seconds for the clip: bare forward passes, ``Predictor.predict``, and with flip TTA."""
    predictor = Predictor(model=model, normalizer=Normalizer(0.2, 0.2), image_size=args.size,
                          batch_size=args.batch_size, device=args.device)
    x = torch.from_numpy(clip).float()[:, None].div(255.0).to(args.device)

    @torch.inference_mode()
    def bare() -> None:
        for s in range(0, x.shape[0], args.batch_size):
            model(x[s : s + args.batch_size])

    t_bare = _time(bare, args.device, args.repeats)
    t_pred = _time(lambda: predictor.predict(clip), args.device, args.repeats)
    predictor.tta = True
    t_tta = _time(lambda: predictor.predict(clip), args.device, args.repeats)
    return t_bare, t_pred, t_tta


def echo_screen(frames: int, h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """An 8-bit scanner screen: a 90-degree sector of moving speckle, static text, a moving ECG trace."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:h, :w].astype(np.float32)
    dr, dc = r - 40, c - w / 2
    fan = (np.hypot(dr, dc) <= 0.8 * h) & (np.abs(np.arctan2(dc, dr)) <= np.pi / 4) & (dr >= 0)
    clip = np.zeros((frames, h, w), np.uint8)
    for t in range(frames):
        f = clip[t]
        f[fan] = rng.integers(20, 200, int(fan.sum()))
        f[5:25, 5:120] = 220  # text
        f[h - 30, 20 : w - 20] = 150  # ECG baseline
        f[h - 40 : h - 30, 20 + (5 * t) % (w - 40)] = 150  # its moving blip
    return clip


def measure_cine(model: torch.nn.Module, clip: np.ndarray, args) -> tuple[float, float, float]:
    """Seconds for the whole clip: echo preparation, the sector search alone, tiling (scaled from a part)."""
    from sslseg.echo.sector import find_sector

    common = {"model": model, "normalizer": Normalizer(0.2, 0.2), "image_size": args.size,
              "batch_size": args.batch_size, "device": args.device}
    prepared = Predictor(trained_on="echo-sector", **common)
    tiled = Predictor(tile=True, **common)
    t_prep = _time(lambda: prepared.predict(clip, echo=True), args.device, args.repeats)
    t_find = _time(lambda: find_sector(clip), args.device, args.repeats)
    part = clip[: args.tile_frames]
    t_tile = _time(lambda: tiled.predict(part), args.device, 1) * clip.shape[0] / part.shape[0]
    return t_prep, t_find, t_tile


def main_cine(args) -> None:
    clip = echo_screen(args.frames)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"echo cine: {args.frames} frames of 480 x 640, model input {args.size}, batch {args.batch_size}, {name}")
    print(f"{'model':<10} {'prepared':>12} {'(sector search)':>16} {'tiled':>14} {'tiled/prepared':>15}")
    for key in args.models:
        t_prep, t_find, t_tile = measure_cine(MODELS[key](), clip, args)
        n = args.frames
        print(f"{key:<10} {n / t_prep:>8.1f} f/s {t_find:>14.2f} s {n / t_tile:>10.2f} f/s {t_tile / t_prep:>14.1f}x"
              f"   ({n} frames: prepared {t_prep:.1f} s, tiled {t_tile:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--frames", type=int, default=128, help="frames in the clip")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cine", action="store_true", help="a 480 x 640 echo cine: echo preparation vs tiling")
    ap.add_argument("--tile-frames", type=int, default=8, help="with --cine: frames that tiling is timed on")
    args = ap.parse_args()
    if args.cine:
        main_cine(args)
        return

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(args.frames, args.size, args.size), dtype=np.uint8)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.frames} frames of {args.size} x {args.size}, batch {args.batch_size}, {name}")
    print(f"{'model':<10} {'bare forward':>14} {'predict':>10} {'predict+TTA':>12} {'predict/bare':>13}")
    for key in args.models:
        t_bare, t_pred, t_tta = measure(MODELS[key](), clip, args)
        n = args.frames
        print(f"{key:<10} {n / t_bare:>10.1f} f/s {n / t_pred:>6.1f} f/s {n / t_tta:>8.1f} f/s "
              f"{t_bare / t_pred:>12.2f}x")

if __name__ == "__main__":
    main()
