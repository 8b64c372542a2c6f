"""The one training loop, used by pretraining and fine-tuning alike.

A readable loop on Lightning Fabric (devices, mixed precision, DDP) that adds
little to a bare PyTorch step: draw a batch, ``task(batch)["loss"]``, backward,
step, schedule, log.  The *task* is any ``nn.Module`` whose forward returns a
dict of scalar tensors with key ``"loss"`` (a pretraining method, or
:class:`sslseg.finetune.task.SupervisedTask`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..io.tables import write_table
from . import resume as resume_
from .checkpoint import discard
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
        save_seconds: wall-clock seconds between snapshots as well (0 disables); see
            :class:`sslseg.engine.resume.SnapshotPolicy`.
        val_every: steps between validations (when a validation function is given).
        accelerator, devices, precision: passed to Lightning Fabric.
        grad_clip: max gradient norm (0 disables).
        restarts: steps at which the schedule starts again (warm-up, then cosine
            to the next restart or the end), for a staged method whose stages the
            reference trains as separate runs (``global_local``).
        sync_batchnorm: on several processes, BatchNorm statistics over the global batch.
        find_unused_parameters: DDP's option, for tasks that leave some trainable
            parameters without gradient at some steps.
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
    save_seconds: float = 0.0
    val_every: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    grad_clip: float = 0.0
    restarts: tuple[int, ...] = ()
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    logger: str = "csv"
    progress_seconds: float = 30.0


def lr_lambda(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up then cosine decay; a multiplier of the peak lr.

    With ``cfg.restarts`` each segment between restarts has its own warm-up
    (at most half the segment) and cosine, as if it were a run of its own.
    """
    start, end = 0, cfg.steps
    for r in sorted(cfg.restarts):
        if 0 < r < cfg.steps:
            if step >= r:
                start = r
            else:
                end = min(end, r)
                break
    step, steps = step - start, end - start
    warmup = min(cfg.warmup_steps, steps // 2) if cfg.restarts else cfg.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    t = min(1.0, (step - warmup) / span)
    return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class LoopResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None


def make_fabric(cfg: LoopConfig):
    """A Lightning Fabric for the requested devices and precision (see :func:`sslseg.engine.distributed.start`)."""
    from .distributed import start

    return start(cfg.devices, cfg.precision, accelerator=cfg.accelerator)


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
    generators: Mapping[str, Any] | None = None,
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
        fabric: a started Fabric (:func:`sslseg.engine.distributed.start`); default: one for ``cfg``.
        generators: the random generators ``next_batch`` draws from (NumPy ``Generator``
            or ``torch.Generator``, by name); their states go into ``last.pt`` for exact resume.

    On several processes every rank calls ``fit`` with its own share of the
    batch; rank 0 alone writes ``out_dir`` and logs, and validation runs on
    rank 0 with its result sent to all, so every rank makes the same choice.

    Returns:
        :class:`LoopResult` with the logged history.
    """
    fabric = fabric or make_fabric(cfg)
    out = Path(out_dir) if out_dir is not None else None
    handler = None
    if out is not None and fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        handler = _add_file_log(out / "log.txt")
    try:
        return _fit(task, next_batch, cfg, fabric, out, params, desc, after_step, validate, monitor, resume,
                    generators)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _fit(task, next_batch, cfg, fabric, out, params, desc, after_step, validate, monitor, resume,
         generators=None) -> LoopResult:

    rank0 = fabric.is_global_zero
    if rank0 and cfg.warmup_steps >= cfg.steps and not cfg.restarts:
        log.warning("%s: the warm-up of %d steps is as long as the run (%d steps): the learning rate never "
                    "reaches %g; set fewer warm-up steps", desc, cfg.warmup_steps, cfg.steps, cfg.lr)
    prepare_processes(task, cfg, fabric, desc)
    if params is None:
        params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))
    task_f, optimizer_f = fabric.setup(task, optimizer)

    start, history, best, best_state = 0, [], None, None
    running: dict[str, float] = {}
    n_running, elapsed = 0, 0.0
    last_path = out / "last.pt" if out is not None else None
    policy = resume_.SnapshotPolicy(cfg.save_every, cfg.save_seconds)
    snap = resume_.read_snapshot(last_path) if resume and last_path is not None else None
    if snap is not None and resume_.restore_run(snap, last_path, task, optimizer, scheduler, generators):
        # everything the next step depends on: weights, optimiser, schedule, every RNG, the partial log row
        start = int(snap["step"])
        history = [dict(h) for h in snap["history"]]
        best = dict(snap["best"]) if snap.get("best") else None
        best_state = snap.get("best_state")
        running, n_running = dict(snap["running"]), int(snap["n_running"])
        elapsed = float(snap["elapsed"])
        log.info("%s: resumed from %s at step %d", desc, last_path, start)

    def run_validation(step: int) -> None:
        nonlocal best, best_state
        was_training = task.training
        task.eval()
        metrics = None
        if rank0:
            with torch.inference_mode():
                metrics = validate(task)
        if fabric.world_size > 1:
            # rank 0's numbers decide for all: every rank keeps the same best weights
            metrics = fabric.broadcast(metrics, src=0)
        task.train(was_training)
        row = {"step": step, **{f"val_{k}": float(v) for k, v in metrics.items()}}
        history.append(row)
        progress.log(row)
        log.info("%s step %d validation %s", desc, step, metrics)
        if monitor is not None and (best is None or metrics[monitor] > best[monitor]):
            best = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            best_state = {k: v.detach().cpu().clone() for k, v in task.state_dict().items()}

    seed_rank(fabric)
    task.train()
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, dynamic_ncols=True, leave=False,
               disable=None if rank0 else True)
    # plain lines where tqdm shows no bar (output to a file or pipe); optional TensorBoard
    progress = Progress(desc, cfg.steps, start, show=bool(bar.disable) and rank0,
                        every_seconds=cfg.progress_seconds, out_dir=out if rank0 else None,
                        logger=cfg.logger)
    for step in range(start, cfg.steps):
        batch = fabric.to_device(next_batch(step))
        if step == start and fabric.world_size > 1:
            log_rank_batches(fabric, batch, desc)
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
        values = {k: float(v.detach()) for k, v in out_dict.items()}  # one device sync per step
        for k, v in values.items():
            running[k] = running.get(k, 0.0) + v
        n_running += 1
        bar.update(1)
        progress.update(step + 1, values["loss"])
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            if fabric.world_size > 1:
                running = mean_over_ranks(fabric, running)
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
        if rank0 and last_path is not None and policy.due(step + 1, cfg.steps):
            policy.save(
                {
                    "task": task.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step + 1,
                    "history": history,
                    "best": best,
                    "best_state": best_state,
                    "running": running,
                    "n_running": n_running,
                    "elapsed": time.perf_counter() - t0,
                    "rng": resume_.capture_rng(generators),
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
    if out is not None and rank0:
        write_table(out / "metrics.csv", history)
        if last_path is not None:
            # the run is complete; the final checkpoint supersedes last.pt (and any write of it a killed run left)
            discard(last_path)
    return LoopResult(steps=cfg.steps, seconds=seconds, history=history, best=best)


def prepare_processes(task: nn.Module, cfg: LoopConfig, fabric, desc: str) -> None:
    """Before DDP wraps ``task``: global BatchNorm and DDP's unused-parameter search."""
    if fabric.world_size == 1:
        return
    from .distributed import convert_batchnorm, set_find_unused_parameters

    if cfg.sync_batchnorm:
        n = convert_batchnorm(task, gpu=fabric.device.type == "cuda")
        log.info("%s: %d BatchNorm layers normalise over the global batch of %d processes", desc, n, fabric.world_size)
    set_find_unused_parameters(fabric, cfg.find_unused_parameters)


def seed_rank(fabric) -> None:
    """On ranks > 0, a torch random stream of their own: the same model everywhere, different augmentations."""
    if fabric.world_size > 1 and fabric.global_rank > 0:
        torch.manual_seed((torch.initial_seed() + 104729 * fabric.global_rank) % 2**63)


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["images"] if "images" in batch else next(iter(batch.values()))
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def log_rank_batches(fabric, batch: Any, desc: str) -> None:
    """Log, once, each rank's batch size and a fingerprint of its first batch (different ranks, different data)."""
    x = _first_tensor(batch).detach().float()
    mine = torch.stack([x.double().sum(), x.double().pow(2).sum(), torch.tensor(float(x.shape[0]), dtype=torch.float64,
                                                                              device=x.device)])
    every = [torch.empty_like(mine) for _ in range(fabric.world_size)]
    torch.distributed.all_gather(every, mine)
    every = torch.stack(every).cpu()
    prints = ", ".join(f"rank {r}: {int(n)} samples, sum {s:.6g}" for r, (s, _, n) in enumerate(every.tolist()))
    log.info("%s: %d processes; first batch per rank: %s", desc, fabric.world_size, prints)


def mean_over_ranks(fabric, running: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each logged sum (every rank logs the same keys)."""
    keys = list(running)  # the task's order, the same on every rank
    vals = fabric.all_reduce(torch.tensor([running[k] for k in keys], dtype=torch.float64, device=fabric.device),
                             reduce_op="mean")
    return dict(zip(keys, vals.cpu().tolist(), strict=True))


def _add_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
