"""Several processes, one result: checks, launch, rank-0 helpers and batch statistics over all ranks.

A run on N devices is N processes (DDP through Lightning Fabric: NCCL on GPUs,
gloo on CPUs). :func:`start` checks the request against the machine *before*
anything is launched, then starts the other processes; on one machine Fabric's
launcher re-runs the same command line with ``LOCAL_RANK`` set, on several
machines ``torchrun`` (or ``fabric run``) starts them all. Everything after
:func:`start` runs on every rank: each rank draws its own share of the global
batch, DDP averages the gradients, and only rank 0 writes files and prints.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import UserError
from .precision import PRECISIONS

_FABRICS: dict[tuple, object] = {}

T = TypeVar("T")


def world_size() -> int:
    """Processes in this run (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_rank() -> int:
    """This process's rank (0 when not distributed, and in the launching process before launch)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_rank_zero() -> bool:
    """True in the one process that writes files and prints.

    Before the process group exists, a process started by Fabric's launcher knows
    only ``LOCAL_RANK`` and ``NODE_RANK`` (torchrun also sets ``RANK``).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (building caches, writing split files); the others follow and read.

    When the block raises on rank 0, the other ranks raise too (see :func:`on_rank_zero`)
    instead of waiting for rank 0 until the process group's timeout.
    """
    if world_size() == 1:
        yield
        return
    if is_rank_zero():
        try:
            yield
        except BaseException as err:
            _send_outcome(err)
            raise
        _send_outcome(None)
    else:
        _receive_outcome()
        yield


def on_rank_zero(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone, its result sent to every rank (validation, a choice all must share).

    When ``fn`` raises on rank 0, every other rank raises as well, at once: a user
    error (``UserError``, ``OSError``) as a ``UserError`` with the same message, anything
    else as :class:`RankZeroFailed`. Without the outcome sent, the other ranks would
    wait for rank 0's result in a collective until the process group's timeout.
    """
    if world_size() == 1:
        return fn()
    if is_rank_zero():
        try:
            result = fn()
        except BaseException as err:
            _send_outcome(err)
            raise
        _send_outcome(None, result)
        return result
    return _receive_outcome()


class RankZeroFailed(RuntimeError):
    """Raised on the other ranks when rank 0 stopped with an unexpected error."""


def _send_outcome(err: BaseException | None, result=None) -> None:
    if err is None:
        box = [("ok", result)]
    else:
        box = [("user" if isinstance(err, (UserError, OSError)) else "failed", f"{type(err).__name__}: {err}",
                str(err))]
    try:
        dist.broadcast_object_list(box, src=0)
    except Exception:  # noqa: BLE001 - the group itself is broken: rank 0's own error is the one to show
        if err is None:
            raise


def _receive_outcome():
    box = [None]
    dist.broadcast_object_list(box, src=0)
    kind, *rest = box[0]
    if kind == "ok":
        return rest[0]
    if kind == "user":
        raise UserError(rest[1])  # the same one line rank 0 shows (the command line prints it there only)
    raise RankZeroFailed(f"process 0 stopped with {rest[0]}; this process stops too")


def normalise_precision(precision: str) -> str:
    p = str(precision)
    if p not in PRECISIONS:
        raise UserError(f"--precision {p!r} is not one of {', '.join(sorted(set(PRECISIONS.values())))}")
    return PRECISIONS[p]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS says, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def native_bf16() -> bool:
    """Whether this machine computes in bfloat16 natively: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX.

    Emulated bf16 (older CPUs) is slower than fp32, so callers choosing a fast
    precision (the demo) fall back to ``32-true`` there.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(probe()) for probe in probes if probe is not None)
    except RuntimeError:
        return False


def _launched_externally() -> bool:
    # torchrun / fabric run / Fabric's own children set these before our code runs
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def _main_is_sslseg() -> bool:
    """Whether re-running ``sys.argv`` re-runs this sslseg command (what Fabric's launcher does)."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None:
        return spec.name in ("sslseg", "sslseg.__main__", "sslseg.cli")
    return os.path.basename(sys.argv[0] or "") in ("sslseg", "sslseg.exe")


def check_request(devices, precision: str, num_nodes: int = 1, accelerator: str = "auto",
                  relaunch: bool = True) -> str:
    """Refuse what this machine cannot run, before any process is started; returns the Fabric precision.

    On GPUs ``devices`` may not exceed the visible GPUs. Without a GPU each
    device is a CPU process, at most ``os.cpu_count()`` of them: more would
    only time-share the cores.

    Args:
        relaunch: also check that this process can be re-run by Fabric's launcher.

    Raises:
        ValueError: a count or precision the hardware lacks, or several devices
            requested from a process that cannot be re-launched.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise UserError(f"--devices must be a whole number of at least 1, got {devices!r}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise UserError(f"--num-nodes must be a whole number of at least 1, got {num_nodes!r}")
    prec = normalise_precision(precision)
    gpu = accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()
    if accelerator in ("cuda", "gpu") and not gpu:
        raise UserError("accelerator 'cuda' requested, but no CUDA GPU is visible")
    if gpu:
        have = torch.cuda.device_count()
        if devices > have:
            raise UserError(f"--devices {devices}: this machine has {have} GPU(s)")
        if prec == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            raise UserError(f"--precision bf16-mixed: {torch.cuda.get_device_name()} has no bfloat16; use 16-mixed or 32")
    else:
        cores = os.cpu_count() or 1
        if devices > cores:
            raise UserError(f"--devices {devices}: no GPU here, and this machine has {cores} CPU core(s) "
                            f"for the CPU processes; use --devices {cores} or fewer")
        if prec == "16-mixed":
            raise UserError("--precision 16-mixed needs a GPU; on the CPU use bf16-mixed or 32")
    if relaunch and devices * num_nodes > 1 and not _launched_externally() and not _main_is_sslseg():
        raise UserError("more than one device: the other processes re-run the command line, so start it as "
                        "`sslseg ...`, `python -m sslseg.cli ...` or under torchrun")
    return prec


def start(devices: int = 1, precision: str = "32-true", num_nodes: int = 1, accelerator: str = "auto"):
    """Check the request, create the Lightning Fabric and launch the other processes.

    Call it before anything is read or written: on one machine the other ranks
    re-run the command from the start and reach this call, where they join the
    process group. The Fabric is kept per process, so that a sweep's many
    stages share one process group.
    """
    import logging

    from lightning.fabric import Fabric

    # Fabric announces each rank's start on each rank; log.txt says how many processes ran
    for name in ("lightning.fabric", "lightning.pytorch"):  # (rank-zero messages go through either)
        logging.getLogger(name).setLevel(logging.WARNING)
    prec = check_request(devices, precision, num_nodes, accelerator)
    key = (devices, prec, num_nodes, accelerator)
    if key in _FABRICS:
        return _FABRICS[key]
    distributed = devices * num_nodes > 1
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, precision=prec,
                    strategy="ddp" if distributed else "auto")
    if distributed:
        fabric.launch()
    _FABRICS[key] = fabric
    return fabric


def finish() -> int:
    """End of a command: every rank waits for the others, then rank 0 for its child processes.

    Returns:
        0, or the first non-zero exit code of a child process.
    """
    code = 0
    if world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()
    for fabric in _FABRICS.values():
        for proc in getattr(fabric.strategy.launcher, "procs", None) or []:
            rc = proc.wait()
            code = code or rc
    _FABRICS.clear()
    return code


def set_find_unused_parameters(fabric, value: bool) -> None:
    """DDP's ``find_unused_parameters`` for the next ``fabric.setup``.

    Fabric fixes DDP's options when it is created, before launch; which
    parameters a task leaves without gradient is known only once the task is
    built, after launch.
    """
    kwargs = getattr(fabric.strategy, "_ddp_kwargs", None)
    if kwargs is not None:
        kwargs["find_unused_parameters"] = bool(value)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone().contiguous()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # d(sum_r x_r)/dx_q = 1 for every rank's output, so x_q's gradient is the sum of all outputs' gradients
        grad = grad.clone().contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable (the gradient is the sum of the ranks' gradients)."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose batch statistics come from the batch of every rank (SimCLR's "global BN").

    "we aggregate BN mean and variance over all devices during the training"
    (Chen et al., SimCLR, ICML 2020, https://arxiv.org/abs/2002.05709). Works
    with any process-group backend, gloo on CPUs included (PyTorch's
    ``nn.SyncBatchNorm`` is GPU-only); on GPUs :func:`convert_batchnorm` uses
    ``nn.SyncBatchNorm``. Two sums go over the ranks per forward: the per-channel
    sums (for the mean), then the squared deviations from that mean (for the
    variance, without the cancellation of E[x^2] - E[x]^2). Both are
    differentiable, so gradients reach every rank's inputs. In eval mode, or on
    one process, it is a plain BatchNorm.

    Shape: ``(B, C, *)``.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise UserError(f"GlobalBatchNorm expects (B, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_n = xf.numel() // xf.shape[1]
        sums = all_reduce_sum(torch.cat([xf.sum(dims), xf.new_tensor([float(local_n)])]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        dev = xf - mean.view(shape)
        var = all_reduce_sum(dev.pow(2).sum(dims)) / n  # biased, as BatchNorm normalises with
        y = dev * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, gpu: bool) -> int:
    """Replace every BatchNorm of ``module`` in place by a rank-synchronised one; returns how many.

    The new layers take over the old ones' parameters and buffers (the same
    tensors), so optimiser references and state_dict keys are unchanged. A layer
    reachable by two paths (a method's ``encoder`` is also ``model.encoder``)
    is converted once.
    """
    cls = nn.SyncBatchNorm if gpu else GlobalBatchNorm
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, _BatchNorm) or isinstance(child, (nn.SyncBatchNorm, GlobalBatchNorm)):
                continue
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(parent, name, new)
            count += 1
    return count
