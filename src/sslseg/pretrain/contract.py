"""What every pretraining method provides: the one interface its callers use.

A pretext task wraps a ``SegmentationModel`` and is trained by the shared loop
(:func:`sslseg.engine.loop.fit`). The pipeline (``experiments/pipeline.py``)
and the DDP plan (:mod:`sslseg.pretrain.ddp`) read a method only through the
members of :class:`PretextTask`; none of them asks for a concrete class or
probes for an optional attribute. A new method therefore either subclasses
:class:`PretextBase`, which gives the defaults (trains the encoder, plain
frames, one parameter group, no schedule restart, nothing after a step), or
defines every member itself, and is registered in
:data:`sslseg.pretrain.build.METHODS`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class PretextTask(Protocol):
    """The members every pretraining method has (checked by ``isinstance`` in the tests).

    A method is also an ``nn.Module`` that holds the ``SegmentationModel`` it was
    built around: the loop trains its parameters, the DDP plan finds the model
    among its modules, and the model (not the method) is what the checkpoint saves.

    Attributes:
        trains: the parts of the segmentation model (``"encoder"``, ``"decoder"``;
            see ``models.segmentation.PARTS``) the method trains at some step. The
            others are frozen before training and the checkpoint records this tuple
            as its ``trained_parts`` (what fine-tuning may call pretrained).
        partitions: the batch the method asks for. None: frames drawn uniformly
            across the training cases (``FramePool.batch``); a number: that many
            partitions per case, Chaitanya et al.'s partitioned batch
            (``FramePool.meta_indices``), handed over as ``{"images", "partition"}``.
        find_unused_parameters: True when the set of parameters that get a gradient
            changes during the run (a staged schedule); DDP then looks for unused
            parameters at every step, since a wrapper made once cannot be told.
    """

    trains: tuple[str, ...]
    partitions: int | None
    find_unused_parameters: bool

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """One step's losses from a batch (see ``partitions``); key ``"loss"`` is optimised, others are logged."""
        ...

    def param_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups at stage learning rate ``lr``: parameters that require a gradient
        (read when the optimiser is built, after the DDP plan froze what is never trained)."""
        ...

    def schedule_restarts(self, total_steps: int) -> list[int]:
        """Steps at which the learning-rate schedule starts again (warm-up and cosine of their own)."""
        ...

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` of ``total_steps`` (an EMA target, a change of stage)."""
        ...

    def frozen_modules(self) -> list[nn.Module]:
        """Modules inside the trained parts that never run in the loss (frozen for DDP, beside the parts
        outside ``trains``)."""
        ...


class PretextBase(nn.Module):
    """The defaults of :class:`PretextTask`: a subclass sets what differs and defines ``forward``.

    Trains the encoder on plain frames with one parameter group; no schedule
    restart, nothing after a step, no module frozen beyond the untrained parts,
    and the same trained set at every step.
    """

    trains: tuple[str, ...] = ("encoder",)
    partitions: int | None = None
    find_unused_parameters: bool = False

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def schedule_restarts(self, total_steps: int) -> list[int]:
        return []

    def after_step(self, step: int, total_steps: int) -> None:
        return None

    def frozen_modules(self) -> list[nn.Module]:
        return []
