"""What every fine-tuning mode provides: the one interface the pipeline uses.

A mode (registered in :data:`sslseg.finetune.modes.MODES`, built as
``cls(model, loss, augment, **options)``) is a task for the shared loop. The
pipeline reads it only through :class:`FinetuneTask`; a new mode subclasses
:class:`FinetuneBase` (supervised, no unlabelled frames, nothing after a step)
or defines every member itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class FinetuneTask(Protocol):
    """The members every fine-tuning mode has (checked by ``isinstance`` in the tests).

    Attributes:
        model: the segmentation network being fine-tuned: what the loop's checkpoint saves.
        augment: the augmentation it applies on the device (None: none); recorded in the provenance.
        needs_unlabelled: False: the batch is ``(images, masks)``. True (semi-supervised): the batch is a
            dict ``{"images", "masks", "unlabelled", "step"}``; a class attribute, read before building.
        unlabelled_batch: unlabelled images per step; None: the labelled batch size.
    """

    model: nn.Module
    augment: object
    needs_unlabelled: bool
    unlabelled_batch: int | None

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """One step's losses; key ``"loss"`` is optimised, others are logged."""
        ...

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` of ``total_steps`` (BCP's EMA teacher)."""
        ...


class FinetuneBase(nn.Module):
    """The defaults of :class:`FinetuneTask`: labelled frames only, nothing after a step."""

    needs_unlabelled: bool = False
    unlabelled_batch: int | None = None

    def after_step(self, step: int, total_steps: int) -> None:
        return None
