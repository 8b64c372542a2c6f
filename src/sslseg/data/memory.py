"""What fits in this machine's memory: a declared size is refused up front, with its estimate.

A data set option (``synthetic-echo`` with ``size=100000``) or a batch size
(``--batch-size 100000000``) that cannot fit would otherwise end, minutes in,
in a ``MemoryError`` traceback or the kernel's out-of-memory killer.  The
estimates here are what the run would hold at once, at least; an estimate
above the memory the machine has free is a user error.
"""

from __future__ import annotations

import os

from ..errors import UserError

__all__ = ["available_bytes", "check_batch_fits", "check_fits", "gib"]


def available_bytes() -> int | None:
    """Memory free for a new allocation (Linux ``MemAvailable``; else the physical total; None if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def gib(nbytes: float) -> str:
    """``nbytes`` in GiB, as a message prints it."""
    return f"{nbytes / 2**30:,.1f} GiB"


def check_fits(nbytes: float, what: str, bound: str = "about") -> None:
    """Refuse ``what`` when its estimate ``nbytes`` exceeds the memory free now.

    Args:
        bound: how the message qualifies the estimate (``"about"``, ``"at least"``).

    Raises:
        ValueError: one line: ``what``, the estimate and the memory available.
    """
    free = available_bytes()
    if free is not None and nbytes > free:
        raise UserError(f"{what} needs {bound} {gib(nbytes)} of memory; this machine has {gib(free)} free")


def check_batch_fits(batch_size: int, image_size: int, key: str, channels: int = 1) -> None:
    """Refuse a batch whose images alone (float32 ``(B, C, S, S)``, one copy) cannot fit in memory.

    Batches are drawn with replacement, so a batch larger than the data set is
    allowed; one the machine cannot hold is not.  The model's activations
    need many times more than the images: passing this check is no promise.

    Raises:
        ValueError: one line naming ``key``, the value and the estimate.
    """
    nbytes = float(batch_size) * channels * image_size * image_size * 4
    check_fits(nbytes, f"{key} = {batch_size}: one float32 batch of {batch_size} x {channels} x "
                       f"{image_size} x {image_size} images", "at least")
