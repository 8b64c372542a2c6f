"""Seconds per fine-tuning step of each mode, as a ratio to supervised, measured in one run.

One step = the mode's forward (every pass it makes), its loss, backward, AdamW
step and ``after_step``, on random images and masks at the demo's size (UNet base
16, depth 4, 64x64, 8 labelled + 8 unlabelled images). Each mode gets warm-up
steps first; a semi-supervised mode is timed past its labelled warm-up (its
pseudo-labelled passes are what costs), and again inside it.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/finetune_modes.py
    ... --steps 5 --warmup 1 --size 32          # a quick look
    ... --bf16                                  # under bf16 autocast (where the CPU has native bf16)
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from sslseg.augment.views import SegAugment
from sslseg.finetune.losses import segmentation_loss
from sslseg.finetune.modes import MODES, build_task
from sslseg.models.build import build_model


def seconds_per_step(mode: str, steps: int, warmup: int, size: int, batch: int, bf16: bool, phase: str) -> float:
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, num_classes=2, base_channels=16, depth=4, norm="batch")
    total = 1000
    task = build_task(mode, model, segmentation_loss("dice_ce"), SegAugment(), total)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(batch, 1, size, size)
    y = (x[:, 0] > 0).long()
    u = torch.randn(batch, 1, size, size)
    first = getattr(task, "warmup_steps", 0) if phase == "pseudo" else 0
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    task.train()
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        step = first + i
        batch_in = (x, y) if mode == "supervised" else {"images": x, "masks": y, "unlabelled": u, "step": step}
        with cast:
            loss = task(batch_in)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(task, "after_step"):
            task.after_step(step, total)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.size}x{args.size}, "
          f"batch {args.batch} (+{args.batch} unlabelled), {'bf16 autocast' if args.bf16 else 'fp32'}")
    base = seconds_per_step("supervised", args.steps, args.warmup, args.size, args.batch, args.bf16, "pseudo")
    print(f"{'mode':<12} {'phase':<22} {'s/step':>8} {'x supervised':>13}")
    print(f"{'supervised':<12} {'':<22} {base:>8.4f} {1.0:>13.2f}")
    for mode in MODES:
        if mode == "supervised":
            continue
        for phase, label in (("warmup", "labelled warm-up"), ("pseudo", "with pseudo-labels")):
            s = seconds_per_step(mode, args.steps, args.warmup, args.size, args.batch, args.bf16, phase)
            print(f"{mode:<12} {label:<22} {s:>8.4f} {s / base:>13.2f}")


if __name__ == "__main__":
    main()
