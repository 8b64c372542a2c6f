"""The one training loop, used by pretraining and fine-tuning alike.

A readable loop on Lightning Fabric (devices, mixed precision, DDP) that adds
little to a bare PyTorch step: draw a batch, ``task(batch)["loss"]``, backward,
step, schedule, log.  The *task* is any ``nn.Module`` whose forward returns a
dict of scalar tensors with key ``"loss"`` (a pretraining method, or
:class:`sslseg.finetune.task.SupervisedTask`).
"""

from __future__ import annotations

import hashlib
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

from ..errors import UserError
from ..io.files import discard
from ..io.tables import write_table
from . import resume as resume_
from .distributed import on_rank_zero
from .progress import Progress

log = logging.getLogger("sslseg")


@dataclass(kw_only=True)
class LoopConfig:
    """Optimisation settings shared by both stages.

    ``steps``, ``lr`` and ``weight_decay`` have no default here: each stage's
    config owns them (:class:`sslseg.experiments.config.PretrainConfig` and
    ``FinetuneConfig``), so the loop cannot hold a third opinion of them.

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
        sync_batchnorm: on several processes, BatchNorm statistics over the global batch
            (:func:`sslseg.engine.distributed.convert_batchnorm`; on CPUs as on GPUs), as
            one process over that batch computes them; False keeps statistics per process.
        find_unused_parameters: DDP's option, for tasks that leave some trainable
            parameters without gradient at some steps.
        logger: ``csv`` (metrics.csv only) or ``tensorboard`` as well (:mod:`sslseg.engine.progress`).
        progress_seconds: seconds between plain progress lines when no progress bar is shown (a line
            comes at the first logging step after them).
    """

    steps: int
    lr: float
    weight_decay: float
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
    sync_batchnorm: bool = True
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
    rank 0 with its result sent to all, so every rank makes the same choice (and
    when it fails there, every rank stops with it). Each rank's torch stream is a
    pure function of (seed, rank, step) (:class:`RankStreams`), so a resume is exact
    on every rank.

    The loss and the logged values are read from the device every ``cfg.log_every``
    steps only (:class:`RunningSums`): a loss that is not finite stops the run at the
    next row (at most ``log_every`` steps late, never saved in ``last.pt``) with a
    ``ValueError`` naming its step.

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
    # the running sums of the logged values stay on the device, read only every log_every steps:
    # reading a device tensor makes the host wait for the device
    sums = RunningSums(fabric.device)
    last_path = out / "last.pt" if out is not None else None
    policy = resume_.SnapshotPolicy(cfg.save_every, cfg.save_seconds)
    snap = resume_.read_snapshot(last_path) if resume and last_path is not None else None
    elapsed = 0.0
    if snap is not None and resume_.restore_run(snap, last_path, task, optimizer, scheduler, generators):
        # everything the next step depends on: weights, optimiser, schedule, every RNG, the partial log row
        start = int(snap["step"])
        history = [dict(h) for h in snap["history"]]
        best = dict(snap["best"]) if snap.get("best") else None
        best_state = snap.get("best_state")
        sums.restore(dict(snap["running"]), int(snap["n_running"]))
        elapsed = float(snap["elapsed"])
        log.info("%s: resumed from %s at step %d", desc, last_path, start)
    streams = RankStreams(fabric, snap.get("rank_seed") if snap is not None and start > 0 else None)

    def run_validation(step: int) -> None:
        nonlocal best, best_state
        was_training = task.training
        task.eval()
        # rank 0's numbers decide for all: every rank keeps the same best weights; a rank 0 that
        # fails here stops every rank (the others would wait for its numbers until the timeout)
        metrics = on_rank_zero(lambda: _validate_no_grad(validate, task))
        task.train(was_training)
        row = {"step": step, **{f"val_{k}": float(v) for k, v in metrics.items()}}
        history.append(row)
        progress.log(row)
        log.info("%s step %d validation %s", desc, step, metrics)
        if monitor is not None and (best is None or metrics[monitor] > best[monitor]):
            best = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            best_state = {k: v.detach().cpu().clone() for k, v in task.state_dict().items()}

    task.train()
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, dynamic_ncols=True, leave=True,
               disable=None if rank0 else True)
    # plain lines where tqdm shows no bar (output to a file or pipe); optional TensorBoard
    progress = Progress(desc, cfg.steps, start, show=bool(bar.disable) and rank0,
                        every_seconds=cfg.progress_seconds, out_dir=out if rank0 else None,
                        logger=cfg.logger)
    for step in range(start, cfg.steps):
        streams.seed(step)
        batch = fabric.to_device(next_batch(step))
        if step == start and fabric.world_size > 1:
            log_rank_batches(fabric, batch, desc)
        out_dict = task_f(batch)
        loss = out_dict["loss"]
        optimizer_f.zero_grad(set_to_none=True)
        fabric.backward(loss)
        if cfg.grad_clip > 0:
            fabric.clip_gradients(task_f, optimizer_f, max_norm=cfg.grad_clip)
        optimizer_f.step()
        scheduler.step()
        if after_step is not None:
            after_step(step, cfg.steps)
        sums.add(out_dict, step)  # no device sync: the values are read at the next row
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            means, n = sums.read(fabric)  # the one device sync of these steps
            check_finite(sums.bad_step, task, cfg, desc)
            row = {"step": step + 1, **means}
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(row)
            progress.log(row)
            progress.update(step + 1, row["loss"], count=n)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            log.info("%s step %d loss %.5f", desc, step + 1, row["loss"])
            sums.reset()
        if validate is not None and cfg.val_every > 0 and (step + 1) % cfg.val_every == 0 and step + 1 < cfg.steps:
            check_finite(sums.diverged(fabric), task, cfg, desc)  # no validation of diverged weights
            run_validation(step + 1)
        # never a snapshot of diverged weights to resume from (rank 0 alone decides on a snapshot, so it
        # cannot stop the run here: the next row, read on every rank, does)
        if rank0 and last_path is not None and policy.due(step + 1, cfg.steps) and sums.diverged() is None:
            running, n_running = sums.partial()
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
                    "rank_seed": streams.base,
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


class RankStreams:
    """Each rank's torch random stream on several processes: a pure function of (seed, rank, step).

    On one process torch's stream runs on from step to step, and ``last.pt`` carries
    it. On several, every rank's torch generators (CPU and CUDA) are seeded before
    step ``s`` from ``(base, rank, s)``: ranks draw different augmentations, and a
    resumed run draws, on every rank, what the run never stopped drew. ``base`` is
    rank 0's torch seed at the start of the run, sent to all and kept in ``last.pt``.
    """

    def __init__(self, fabric, base: int | None = None) -> None:
        self.rank, self.base = fabric.global_rank, None
        if fabric.world_size > 1:
            self.base = int(base) if base is not None else int(fabric.broadcast(torch.initial_seed(), src=0))

    def seed(self, step: int) -> None:
        if self.base is not None:
            torch.manual_seed(stream_seed(self.base, self.rank, step))


def stream_seed(base: int, rank: int, step: int) -> int:
    """A seed for ``(base, rank, step)``: hashed, so that nearby triples give unrelated streams."""
    digest = hashlib.blake2b(f"{base}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**63


class RunningSums:
    """The sums of a task's logged values since the last row, and the first non-finite loss, kept on the device.

    :meth:`add` only queues additions (no device sync); :meth:`read` brings the sums
    and the step of the first non-finite loss to the host in one transfer, averaged
    over the ranks (that step: the earliest of any rank). Float64 on the device, so
    the rows equal the sums of the per-step values read one by one.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float32 if self.device.type == "mps" else torch.float64  # (no float64 on MPS)
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        # 1-based step of the first non-finite loss; inf while there is none
        self.first_bad = torch.full((), math.inf, dtype=self.dtype, device=self.device)
        self.bad_step: int | None = None  # the host's copy, as of the last read

    def add(self, values: Mapping[str, torch.Tensor], step: int) -> None:
        for k, v in values.items():
            # (the task's tensors are on the device already: moving them would be a transfer)
            v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=self.device)
            v = v.to(self.dtype).reshape(())
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        newly = ~torch.isfinite(self.sums["loss"]) & torch.isinf(self.first_bad)
        self.first_bad = self.first_bad.masked_fill(newly, float(step + 1))
        self.n += 1

    def read(self, fabric=None) -> tuple[dict[str, float], int]:
        """The means since the last row (over every rank when ``fabric`` has several) and their step count."""
        keys = list(self.sums)  # the task's order, the same on every rank
        vec = torch.stack([*(self.sums[k] for k in keys), self.first_bad])
        if fabric is not None and fabric.world_size > 1:
            vec = torch.cat([fabric.all_reduce(vec[:-1], reduce_op="mean"), _min_over_ranks(vec[-1:])])
        values = vec.tolist()
        self._set_bad(values[-1])
        return {k: v / max(self.n, 1) for k, v in zip(keys, values[:-1], strict=True)}, self.n

    def diverged(self, fabric=None) -> int | None:
        """The 1-based step of the first non-finite loss, or None (over every rank when ``fabric`` has several)."""
        bad = self.first_bad.reshape(1)
        if fabric is not None and fabric.world_size > 1:
            self._set_bad(_min_over_ranks(bad).item())  # a collective: every rank calls it
        elif self.bad_step is None:
            self._set_bad(bad.item())
        return self.bad_step

    def _set_bad(self, value: float) -> None:
        self.bad_step = None if math.isinf(value) else int(value)

    def partial(self) -> tuple[dict[str, float], int]:
        """This rank's sums as plain numbers, for ``last.pt``."""
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).tolist() if keys else []
        return dict(zip(keys, values, strict=True)), self.n

    def restore(self, running: Mapping[str, float], n: int) -> None:
        self.sums = {k: torch.tensor(float(v), dtype=self.dtype, device=self.device) for k, v in running.items()}
        self.n = int(n)

    def reset(self) -> None:
        self.sums, self.n = {}, 0


def _min_over_ranks(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MIN)
    return x


def check_finite(step: int | None, task: nn.Module, cfg: LoopConfig, desc: str) -> None:
    """Stop a run whose loss was not finite at ``step`` (None: it never was), naming what to change.

    Raises:
        ValueError: one line with the step, and the learning rate or, for a tiny
            contrastive temperature, the temperature to change.
    """
    if step is None:
        return
    temps = [t for m in task.modules() for t in [getattr(m, "temperature", None)]
             if isinstance(t, (int, float)) and not isinstance(t, bool)]
    if temps and min(temps) < TINY_TEMPERATURE:
        fix = (f"the temperature (now {min(temps):g}) divides the similarities and is so small that they overflow: "
               f"raise it (0.1 is usual)")
    else:
        fix = f"lower the learning rate (now {cfg.lr:g})"
    raise UserError(f"{desc}: the loss was not finite at step {step} (training diverged); {fix}")


#: a contrastive temperature below this is named as the likely cause of a non-finite loss
TINY_TEMPERATURE = 1e-3


def _validate_no_grad(validate, task):
    with torch.inference_mode():
        return validate(task)


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


def _add_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
