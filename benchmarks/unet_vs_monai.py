"""sslseg's UNet against MONAI's UNet: training-step throughput per FLOP, side by side in one process.

One step = forward, Dice+CE (the fine-tuning loss, ``finetune.loss: dice_ce``),
backward, AdamW step, on one fixed random batch ``(B, 1, S, S)`` with random
2-class masks. The two models alternate over ``--rounds`` rounds of ``--steps``
timed steps each (after ``--warmup`` untimed steps), and the medians of the
rounds are compared, so that a load change on the machine hits both alike.

    python benchmarks/unet_vs_monai.py                      # 112x112, batch 16, fp32, 2 threads
    python benchmarks/unet_vs_monai.py --threads 1 --rounds 3 --steps 2
    python benchmarks/unet_vs_monai.py --channels-last      # also the NHWC memory format for both
    python benchmarks/unet_vs_monai.py --compile            # also torch.compile'd models (slow to compile on a CPU)

sslseg: ``build_model("unet", base_channels=16)`` (widths 16..256, depth 4).
MONAI: ``monai.networks.nets.UNet(spatial_dims=2, channels=(32, 64, 128, 256, 512),
strides=(2, 2, 2, 2), num_res_units=2)``. Both do about the same work per image
(GFLOP printed: torch's FLOP counter, 2 per multiply-add, forward only); the
figure of merit is images/s divided by GFLOP/image, as the ratio sslseg / MONAI.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from sslseg.finetune.losses import segmentation_loss
from sslseg.models.build import build_model


def monai_unet(num_classes: int = 2) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes, channels=(32, 64, 128, 256, 512),
                strides=(2, 2, 2, 2), num_res_units=2)


def sslseg_unet(num_classes: int = 2) -> nn.Module:
    return build_model("unet", in_channels=1, num_classes=num_classes, base_channels=16)


def gflop_per_image(model: nn.Module, size: int) -> float:
    """Forward GFLOP for one image (torch.utils.flop_counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


class Stepper:
    """One model's training step on a fixed batch, ready to be called round after round."""

    def __init__(self, model: nn.Module, batch: int, size: int, num_classes: int, channels_last: bool,
                 compile_: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 1, size, size, generator=g)
        self.y = torch.randint(0, num_classes, (batch, size, size), generator=g)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.model = model.train()
        self.forward: Callable = torch.compile(model) if compile_ else model
        self.loss = segmentation_loss("dice_ce")
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def __call__(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps; returns the wall-clock and the process CPU seconds they took."""
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss(self.forward(self.x), self.y)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--size", type=int, default=112, help="square image side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians are compared")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    ap.add_argument("--channels-last", action="store_true", help="also time both models in channels_last")
    ap.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    builders = {"sslseg": sslseg_unet, "monai": monai_unet}
    variants = [("", False, False)]
    if args.channels_last:
        variants.append((" channels_last", True, False))
    if args.compile:
        variants.append((" compiled", False, True))
    steppers: dict[str, Stepper] = {}
    gflop: dict[str, float] = {}
    params: dict[str, int] = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        gflop[name] = gflop_per_image(build(), args.size)
        params[name] = sum(p.numel() for p in build().parameters())
        for suffix, cl, comp in variants:
            torch.manual_seed(0)
            steppers[name + suffix] = Stepper(build(), args.batch, args.size, 2, cl, comp)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.size}x{args.size}, fp32, Dice+CE, AdamW; {args.warmup} warm-up steps, then "
          f"{args.rounds} rounds x {args.steps} steps per model, alternating")
    warm = {k: s(args.warmup)[0] for k, s in steppers.items()}
    if args.compile:
        print("warm-up seconds (torch.compile compiles here): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in warm.items()))
    wall: dict[str, list[float]] = {k: [] for k in steppers}
    cpu: dict[str, list[float]] = {k: [] for k in steppers}
    for r in range(args.rounds):
        # alternate the order too, so neither model always runs first in a round
        order = list(steppers) if r % 2 == 0 else list(reversed(steppers))
        for k in order:
            w, c = steppers[k](args.steps)
            wall[k].append(w)
            cpu[k].append(c)
    n = args.batch * args.steps
    ips = {k: n / statistics.median(v) for k, v in wall.items()}
    # images per CPU-second and thread: less disturbed than wall time when other processes share the cores
    ipc = {k: n * args.threads / statistics.median(v) for k, v in cpu.items()}
    print(f"{'model':<22}{'params':>11}{'GFLOP/img':>11}{'images/s':>10}{'(min..max)':>17}"
          f"{'img/CPU-s':>11}{'GFLOP/s':>9}")
    for k, v in ips.items():
        base = k.split(" ")[0]
        lo, hi = n / max(wall[k]), n / min(wall[k])
        print(f"{k:<22}{params[base]:>11,}{gflop[base]:>11.3f}{v:>10.2f}   {lo:>6.2f} ..{hi:>6.2f}"
              f"{ipc[k]:>11.2f}{v * gflop[base] * 3:>9.1f}")
    for suffix, _, _ in variants:
        a, b = "sslseg" + suffix, "monai" + suffix
        per_flop = gflop["sslseg"] / gflop["monai"]
        print(f"per-FLOP throughput ratio sslseg/MONAI{suffix}: {ips[a] / ips[b] * per_flop:.2f}x wall-clock, "
              f"{ipc[a] / ipc[b] * per_flop:.2f}x CPU time (images/s ratio {ips[a] / ips[b]:.2f}x)")
    for suffix, _, _ in variants[1:]:
        for name in builders:
            print(f"{name}{suffix} vs {name}: {ips[name + suffix] / ips[name]:.2f}x images/s")
    print("GFLOP/s counts a training step as 3x the forward FLOPs (forward + backward); img/CPU-s is images per\n"
          "second of process CPU time per thread (with --threads 1 and a busy machine, the steadier figure).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
