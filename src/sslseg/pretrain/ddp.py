"""What each pretext task trains, for DDP: the parts it never trains are frozen before wrapping.

DDP expects a gradient for every parameter that requires one, at every step;
without one it stops with "parameters that were not used in producing loss".
A pretext task leaves parts of the segmentation model untouched (every task
leaves the segmentation head; SimCLR, BYOL and the global contrastive loss
leave the decoder; the local loss uses the first ``num_blocks`` decoder
blocks). Those parts are frozen (``requires_grad=False``), which changes
nothing on one process (AdamW skips a parameter without gradient) and keeps
them out of DDP's gradient reduction.

One task changes what it trains during the run: ``global_local`` trains
encoder + g1 first, then decoder + g2. A DDP wrapper made once cannot be told
the set changed, so that task runs with ``find_unused_parameters=True`` (one
extra pass over the autograd graph per step).

All of this is read from the method's contract (:class:`~sslseg.pretrain.contract.PretextTask`:
``trains``, ``frozen_modules()``, ``find_unused_parameters``), never from its class.
"""

from __future__ import annotations

from ..errors import UserError
from ..models.segmentation import PARTS, SegmentationModel
from .contract import PretextTask


def segmentation_model(task: PretextTask) -> SegmentationModel:
    """The segmentation model inside a pretext task."""
    for m in task.modules():
        if isinstance(m, SegmentationModel):
            return m
    raise UserError(f"{type(task).__name__} holds no SegmentationModel")


def prepare_for_ddp(task: PretextTask) -> bool:
    """Freeze the parts of ``task``'s model that it never trains; return ``find_unused_parameters``.

    Args:
        task: a pretext task from :func:`sslseg.pretrain.build.build_method`.

    Returns:
        the task's ``find_unused_parameters``: True when it trains different parameters at different steps.
    """
    model = segmentation_model(task)
    for part in PARTS:
        if part not in task.trains:
            getattr(model, part).requires_grad_(False)
    for module in task.frozen_modules():  # e.g. the local loss's decoder blocks past num_blocks
        module.requires_grad_(False)
    return bool(task.find_unused_parameters)
