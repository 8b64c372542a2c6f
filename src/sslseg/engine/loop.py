"""The one training loop, used by pretraining and fine-tuning alike.

A readable loop on Lightning Fabric (devices, mixed precision, DDP) that adds
little to a bare PyTorch step: draw a batch, ``task(batch)["loss"]``, backward,
step, schedule, log.  The *task* is any ``nn.Module`` whose forward returns a
dict of scalar tensors with key ``"loss"`` (a pretraining method, or
:class:`sslseg.finetune.task.SupervisedTask`).
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import atomic_save
from .progress import Progress

log = logging.getLogger("sslseg")


@dataclass
class LoopConfig:
    """Optimisation settings shared by both stages.

    Args:
        steps: optimiser steps.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0, then cosine decay to ``final_lr_ratio * lr``.
        final_lr_ratio: floor of the cosine schedule relative to ``lr``.
        log_every: steps between rows of ``metrics.csv``.
        save_every: steps between ``last.pt`` snapshots (resume points); 0 disables.
        val_every: steps between validations (when a validation function is given).
        accelerator, devices, precision: passed to Lightning Fabric.
        grad_clip: max gradient norm (0 disables).
        logger: ``csv`` (metrics.csv only) or ``tensorboard`` as well (:mod:`sslseg.engine.progress`).
        progress_seconds: seconds between plain progress lines when no progress bar is shown.
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    final_lr_ratio: float = 0.0
    log_every: int = 10
    save_every: int = 0
    val_every: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    grad_clip: float = 0.0
    logger: str = "csv"
    progress_seconds: float = 30.0


def lr_lambda(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up then cosine decay; a multiplier of the peak lr."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class LoopResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None


def make_fabric(cfg: LoopConfig):
    """A Lightning Fabric for the requested devices and precision."""
    from lightning.fabric import Fabric

    precision = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}.get(str(cfg.precision), cfg.precision)
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, precision=precision)
    if fabric.world_size > 1:
        fabric.launch()
    return fabric


def fit(
    task: nn.Module,
    next_batch: Callable[[int], Any],
    cfg: LoopConfig,
    *,
    params: Iterable | None = None,
    out_dir: str | Path | None = None,
    desc: str = "train",
    after_step: Callable[[int, int], None] | None = None,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    monitor: str | None = None,
    resume: bool = True,
    fabric=None,
) -> LoopResult:
    """Train ``task`` for ``cfg.steps`` optimiser steps.

    Args:
        task: module whose ``forward(batch)`` returns ``{"loss": scalar, ...}``.
        next_batch: ``step -> batch`` (tensors or tuples of tensors, on the CPU).
        cfg: optimisation settings.
        params: parameters or param groups to optimise (default: all that require grad).
        out_dir: where ``metrics.csv``, ``log.txt`` and ``last.pt`` go (None: nowhere).
        after_step: called as ``after_step(step, total_steps)`` (e.g. BYOL's EMA).
        validate: ``task -> metrics``; run every ``cfg.val_every`` steps and at the end.
        monitor: a key of ``validate``'s output to maximise; the best weights are
            restored at the end.
        resume: continue from ``out_dir/last.pt`` when it exists.

    Returns:
        :class:`LoopResult` with the logged history.
    """
    fabric = fabric or make_fabric(cfg)
    out = Path(out_dir) if out_dir is not None else None
    handler = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        handler = _add_file_log(out / "log.txt")
    try:
        return _fit(task, next_batch, cfg, fabric, out, params, desc, after_step, validate, monitor, resume)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _fit(task, next_batch, cfg, fabric, out, params, desc, after_step, validate, monitor, resume) -> LoopResult:

    if params is None:
        params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    task_f, optimizer_f = fabric.setup(task, optimizer)

    start, history, best, best_state = 0, [], None, None
    last_path = out / "last.pt" if out is not None else None
    if resume and last_path is not None and last_path.is_file():
        snap = torch.load(last_path, map_location="cpu", weights_only=True)
        task.load_state_dict(snap["task"])
        optimizer.load_state_dict(snap["optimizer"])
        scheduler.load_state_dict(snap["scheduler"])
        start = int(snap["step"])
        history = [dict(h) for h in snap.get("history", [])]
        best = dict(snap["best"]) if snap.get("best") else None
        best_state = snap.get("best_state")
        torch.manual_seed(int(snap.get("seed_base", 0)) + start)
        log.info("%s: resumed from %s at step %d", desc, last_path, start)

    def run_validation(step: int) -> None:
        nonlocal best, best_state
        was_training = task.training
        task.eval()
        with torch.inference_mode():
            metrics = validate(task)
        task.train(was_training)
        row = {"step": step, **{f"val_{k}": float(v) for k, v in metrics.items()}}
        history.append(row)
        progress.log(row)
        log.info("%s step %d validation %s", desc, step, metrics)
        if monitor is not None and (best is None or metrics[monitor] > best[monitor]):
            best = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            best_state = {k: v.detach().cpu().clone() for k, v in task.state_dict().items()}

    task.train()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, dynamic_ncols=True, leave=False, disable=None)
    # plain lines where tqdm shows no bar (output to a file or pipe); optional TensorBoard
    progress = Progress(desc, cfg.steps, start, show=bool(bar.disable) and getattr(fabric, "global_rank", 0) == 0,
                        every_seconds=cfg.progress_seconds, out_dir=out, logger=cfg.logger)
    running: dict[str, float] = {}
    n_running = 0
    for step in range(start, cfg.steps):
        batch = fabric.to_device(next_batch(step))
        out_dict = task_f(batch)
        loss = out_dict["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer_f.zero_grad(set_to_none=True)
        fabric.backward(loss)
        if cfg.grad_clip > 0:
            fabric.clip_gradients(task_f, optimizer_f, max_norm=cfg.grad_clip)
        optimizer_f.step()
        scheduler.step()
        if after_step is not None:
            after_step(step, cfg.steps)
        for k, v in out_dict.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        n_running += 1
        bar.update(1)
        progress.update(step + 1, float(out_dict["loss"].detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {"step": step + 1, **{k: v / n_running for k, v in running.items()}}
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            progress.log(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            log.info("%s step %d loss %.5f", desc, step + 1, row["loss"])
            running, n_running = {}, 0
        if validate is not None and cfg.val_every > 0 and (step + 1) % cfg.val_every == 0 and step + 1 < cfg.steps:
            run_validation(step + 1)
        if last_path is not None and cfg.save_every > 0 and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            atomic_save(
                {
                    "task": task.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step + 1,
                    "history": history,
                    "best": best,
                    "best_state": best_state,
                },
                last_path,
            )
    bar.close()
    if validate is not None and start < cfg.steps:
        run_validation(cfg.steps)
    progress.close()
    if monitor is not None and best_state is not None:
        task.load_state_dict(best_state)
        log.info("%s: restored best weights from step %d (%s = %.4f)", desc, best["step"], monitor, best[monitor])
    seconds = time.perf_counter() - t0
    if out is not None:
        write_metrics_csv(out / "metrics.csv", history)
        if last_path is not None and last_path.exists():
            last_path.unlink()  # the run is complete; the final checkpoint supersedes it
    return LoopResult(steps=cfg.steps, seconds=seconds, history=history, best=best)


def write_metrics_csv(path: Path, history: list[dict[str, float]]) -> None:
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow(row)
    tmp.replace(path)


def _add_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
