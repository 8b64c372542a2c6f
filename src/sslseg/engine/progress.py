"""Progress a person can follow wherever the output goes, and an optional Lightning logger.

On a terminal the loop shows a tqdm bar. When the output is a file or a pipe
(``make demo > demo.log``, a batch job) tqdm stays silent, so :class:`Progress`
prints a plain line at the first logging step ``every_seconds`` after the previous
one (and at the last step) with the step, the mean loss since the previous line
and the time left::

    pretrain simclr: step 120/600 (20%) loss 3.2101 1.92 steps/s ETA 4m10s

``metrics.csv`` is always written by the loop; ``logger="tensorboard"`` also
sends every logged row to Lightning's ``TensorBoardLogger`` under
``<run folder>/tensorboard`` (``tensorboard --logdir <sweep folder>`` then
shows every run of a sweep).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..errors import UserError

LOGGERS = {
    "csv": "metrics.csv in the run folder only (the default)",
    "tensorboard": "metrics.csv and TensorBoard event files in <run folder>/tensorboard "
                   "(pip install 'sslseg[tensorboard]')",
}


def check_logger(name: str) -> str:
    """Validate a logger name; ``tensorboard`` needs the ``tensorboard`` (or ``tensorboardX``) package.

    Raises:
        ValueError: an unknown name (the valid ones listed), or TensorBoard asked for but not installed.
    """
    if name not in LOGGERS:
        raise UserError(f"unknown logger {name!r}; choose one of {', '.join(LOGGERS)}")
    if name == "tensorboard" and not _has_tensorboard():
        raise UserError("logger 'tensorboard' needs the tensorboard package: pip install 'sslseg[tensorboard]'")
    return name


def _has_tensorboard() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def format_duration(seconds: float) -> str:
    """``4m10s``, ``1h02m``, ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Plain progress lines when no progress bar is shown, and the optional Lightning logger.

    Args:
        desc: the stage's name, printed at the start of each line.
        total: the last step.
        start: the step the loop starts from (after a resume, lines count from there).
        show: print lines (the loop passes True when its tqdm bar is disabled, on rank 0).
        every_seconds: seconds between lines (the last step always prints).
        out_dir: the run folder (for the TensorBoard files).
        logger: ``csv`` (nothing more to do here) or ``tensorboard``.
        stream: where lines go (default: standard output).
        clock: seconds, monotonic (a test passes its own).
    """

    def __init__(self, desc: str, total: int, start: int = 0, *, show: bool = True, every_seconds: float = 30.0,
                 out_dir: str | Path | None = None, logger: str = "csv", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.start = desc, int(total), int(start)
        self.show, self.every = show, float(every_seconds)
        self.stream = stream
        self.clock = clock
        self.t0 = self.last = clock()
        self.loss_sum, self.loss_n = 0.0, 0
        self.logger = None
        if check_logger(logger) == "tensorboard" and out_dir is not None:
            from lightning.fabric.loggers import TensorBoardLogger

            self.logger = TensorBoardLogger(root_dir=str(Path(out_dir) / "tensorboard"), name="", version="")

    def update(self, step: int, loss: float, count: int = 1) -> str | None:
        """Record the mean loss of the ``count`` steps up to ``step``; print (and return) a line when one is due.

        The loop calls it at its logging steps only, with the row's mean (it reads the
        loss from the device no more often), so lines come at logging steps.
        """
        self.loss_sum += float(loss) * count
        self.loss_n += count
        now = self.clock()
        if not self.show or (now - self.last < self.every and step < self.total):
            return None
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = format_duration((self.total - step) / rate) if rate > 0 else "?"
        line = (f"{self.desc}: step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) "
                f"loss {self.loss_sum / self.loss_n:.4f} {rate:.2f} steps/s ETA {eta}")
        print(line, file=self.stream or sys.stdout, flush=True)
        self.last, self.loss_sum, self.loss_n = now, 0.0, 0
        return line

    def log(self, row: dict) -> None:
        """Send one row of ``metrics.csv`` (with its ``step``) to the logger, when there is one."""
        if self.logger is not None:
            metrics = {k: float(v) for k, v in row.items() if k != "step"}
            self.logger.log_metrics(metrics, step=int(row["step"]))

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finalize("success")
