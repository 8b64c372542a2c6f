"""Training-step throughput of the segmentation models, next to MONAI's UNet of similar size.

One supervised step = forward, cross-entropy, backward, AdamW step, on random
images (B, 1, S, S) and random K-class masks. Each model gets a few warm-up
steps, then N timed steps; all models are measured in the same run so the
ratios compare like with like (the numbers themselves depend on the machine).

    python benchmarks/train_step.py                      # 112 x 112, batch 16, CPU or CUDA
    python benchmarks/train_step.py --steps 3 --warmup 1 --models unet16 monai_unet16
    python benchmarks/train_step.py --bf16 --models unet16   # also bf16-mixed (autocast), same run: the speed-up

MONAI's ``UNet`` (residual units, strided convolutions) is sized to match:
channels 16..256 with 2 residual units per level has 1.63 M parameters against
1.81 M for our UNet with base width 16; 32..512 has 6.50 M against 7.24 M.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sslseg.models.build import build_model


def _monai_unet(base: int, num_classes: int) -> nn.Module:
    from monai.networks.nets import UNet

    channels = tuple(base * 2**i for i in range(5))
    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes, channels=channels,
                strides=(2, 2, 2, 2), num_res_units=2)


#: name -> (builder taking num_classes, the name of the model it is compared with)
MODELS: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "unet16": (lambda k: build_model("unet", num_classes=k, base_channels=16), "monai_unet16"),
    "unet32": (lambda k: build_model("unet", num_classes=k, base_channels=32), "monai_unet32"),
    "deeplabv3": (lambda k: build_model("deeplabv3", num_classes=k), "unet16"),
    "monai_unet16": (lambda k: _monai_unet(16, k), "monai_unet16"),
    "monai_unet32": (lambda k: _monai_unet(32, k), "monai_unet32"),
}


def forward_gflops(model: nn.Module, size: int) -> float:
    """Forward GFLOP for one image (torch's FLOP counter: 2 per multiply-add), to read speed against work."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    return counter.get_total_flops() / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(
    model: nn.Module, batch: int, size: int, num_classes: int, steps: int, warmup: int, device: torch.device,
    bf16: bool = False,
) -> float:
    """Timed supervised steps on one fixed random batch; returns images per second.

    ``bf16``: the forward under ``torch.autocast(bfloat16)``, as Fabric's ``bf16-mixed`` does.
    """
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch, size, size), generator=g).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--size", type=int, default=112, help="square image side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--bf16", action="store_true", help="also time each model under bf16 autocast")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, {args.size}x{args.size}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, torch {torch.__version__}")
    results: dict[str, float] = {}
    params: dict[str, int] = {}
    gflops: dict[str, float] = {}
    bf16: dict[str, float] = {}
    for name in args.models:
        torch.manual_seed(0)
        model = MODELS[name][0](args.classes)
        params[name] = sum(p.numel() for p in model.parameters())
        gflops[name] = forward_gflops(model, args.size)
        results[name] = images_per_second(model, args.batch, args.size, args.classes, args.steps, args.warmup, device)
        if args.bf16:
            bf16[name] = images_per_second(model, args.batch, args.size, args.classes, args.steps, args.warmup,
                                           device, bf16=True)
        del model
    print(f"{'model':<14}{'params':>12}{'GFLOP/img':>11}{'images/s':>10}  ratio")
    for name, ips in results.items():
        ref = MODELS[name][1]
        ratio = f"{ips / results[ref]:.2f} x {ref}" if ref in results and ref != name else ""
        print(f"{name:<14}{params[name]:>12,}{gflops[name]:>11.2f}{ips:>10.2f}  {ratio}")
    if bf16:
        print(f"\n{'model':<14}{'fp32 img/s':>11}{'bf16 img/s':>11}  bf16 speed-up")
        for name, ips in bf16.items():
            print(f"{name:<14}{results[name]:>11.2f}{ips:>11.2f}  {ips / results[name]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
