"""Move pretrained weights into a segmentation model, report what moved, freeze the encoder.

Every key of a model's state_dict belongs to one part, ``encoder``, ``decoder``
or ``head``, as the model itself says through ``model.part_of(key)``: the UNet
keeps its parts under those names (``encoder.stages.0.0.weight``), DeepLabV3
keeps torchvision's (``backbone.*`` is the encoder, ``classifier.0``-``3`` the
decoder, ``classifier.4`` the head). Transfer therefore filters and reports by
part without knowing any architecture's naming.

Initial weights come from an sslseg checkpoint or from a plain DeepLabV3
state_dict in torchvision's naming (:func:`read_init`), such as EchoNet-Dynamic's
published ``{"state_dict": ...}`` files saved from ``nn.DataParallel``
(``module.`` prefixes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.checkpoint import FORMAT, read_torch_file
from ..errors import UserError
from ..models.segmentation import PARTS

#: Report bucket for checkpoint keys that belong to no part of the model (e.g. ``aux_classifier.*``).
OTHER = "other"

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# attribute of a frozen encoder holding the hook that keeps its BatchNorm layers in eval mode
_HOOK = "_sslseg_freeze_hook"


def part_of(model: nn.Module, key: str) -> str | None:
    """The part (``encoder``, ``decoder``, ``head``) of a state_dict key, as ``model`` names it."""
    own = getattr(model, "part_of", None)
    if callable(own):
        return own(key)
    first = key.split(".", 1)[0]
    return first if first in PARTS else None


@dataclass
class TransferReport:
    """Per part: keys loaded, missing (left at initialisation) and unexpected (in the checkpoint only).

    ``unexpected`` keys are grouped by the part their name would belong to, or
    ``other``; ``adapted`` lists tensors reshaped on the way (the first
    convolution summed to one input channel).
    """

    loaded: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    unexpected: dict[str, list[str]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for part in PARTS:
            n_l = len(self.loaded.get(part, []))
            n_m = len(self.missing.get(part, []))
            n_u = len(self.unexpected.get(part, []))
            line = f"{part}: {n_l} tensors loaded, {n_m} left at initialisation"
            if n_u:
                line += f", {n_u} in the checkpoint ignored"
            lines.append(line)
        if self.unexpected.get(OTHER):
            lines.append(f"ignored {len(self.unexpected[OTHER])} checkpoint tensors of no part of this model")
        if self.adapted:
            lines.append(f"summed over input channels: {', '.join(self.adapted)}")
        return "; ".join(lines)

    @property
    def num_loaded(self) -> int:
        return sum(len(v) for v in self.loaded.values())


def input_conv_key(model: nn.Module) -> str | None:
    """The state_dict key of the encoder's first convolution weight (the one that sees the image)."""
    first = next((m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return None
    # match by identity, so that any naming (encoder.* or backbone.*) works
    for key, tensor in model.state_dict(keep_vars=True).items():
        if tensor is first.weight:
            return key
    return None


def match_input_channels(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Sum the first convolution of C-channel weights over its inputs when the model takes one channel.

    A grayscale image ``x`` given to an RGB network as ``(x, x, x)`` meets
    ``sum_c W[:, c] * x``; a one-channel network with ``W.sum(1)`` computes the
    same from ``x`` alone, so summing keeps what the pretrained filters respond
    to (per-channel input normalisation aside).

    Shape: ``(O, C, k, k)`` -> ``(O, 1, k, k)``.

    Returns:
        the state_dict (a shallow copy when a tensor changed) and the adapted keys.
    """
    key = input_conv_key(model)
    if key is None or key not in state_dict:
        return state_dict, []
    own = model.state_dict()[key]
    src = state_dict[key]
    if src.ndim == 4 and own.shape[1] == 1 and src.shape[1] > 1 and src.shape[0] == own.shape[0] and src.shape[2:] == own.shape[2:]:
        state_dict = dict(state_dict)
        state_dict[key] = src.sum(dim=1, keepdim=True)
        return state_dict, [key]
    return state_dict, []


def transfer_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], parts: tuple[str, ...] = ("encoder", "decoder")
) -> TransferReport:
    """Copy tensors of ``parts`` whose names and shapes match into ``model``.

    The head is never transferred by default: it is task-specific (number of
    classes) and pretraining does not train it. 3-channel weights going into a
    1-channel model have their first convolution summed (:func:`match_input_channels`).

    Raises:
        ValueError: nothing matched (wrong architecture or a foreign checkpoint).
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"unknown model part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    own = model.state_dict()
    state_dict, adapted = match_input_channels(model, state_dict)
    report = TransferReport()
    new_state = {}
    for key, value in own.items():
        part = part_of(model, key) or OTHER
        src = state_dict.get(key)
        if part in parts and src is not None and tuple(src.shape) == tuple(value.shape):
            new_state[key] = src
            report.loaded.setdefault(part, []).append(key)
        else:
            report.missing.setdefault(part, []).append(key)
    for key in state_dict:
        if key not in own:
            report.unexpected.setdefault(part_of(model, key) or OTHER, []).append(key)
    report.adapted = [k for k in adapted if k in new_state]
    # a BatchNorm step counter has shape () in every model; alone it is no match
    if not any(not k.endswith("num_batches_tracked") for k in new_state):
        raise UserError(
            "no pretrained weight matched this model (names or shapes differ); "
            "was the checkpoint made for the same --arch and model settings?"
        )
    model.load_state_dict(new_state, strict=False)
    return report


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a prefix that every key has (``module.`` from ``nn.DataParallel`` / DDP), repeatedly."""
    while state_dict and all(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict in a loaded file: bare, or under ``state_dict`` / ``model``; ``module.`` removed.

    Raises:
        ValueError: no dict of tensors was found (the message names ``source``).
    """
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise UserError(
            f"{source}: neither an {FORMAT} checkpoint nor a state_dict "
            "(a dict of tensors, bare or under 'state_dict' or 'model')"
        )
    return strip_prefix(dict(obj))


def is_torchvision_deeplabv3(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether keys follow torchvision's DeepLabV3 naming (``backbone.conv1.weight``, ``classifier.0.*``)."""
    return "backbone.conv1.weight" in state_dict and any(k.startswith("classifier.0.") for k in state_dict)


def read_init(path: str | os.PathLike) -> dict:
    """Read ``--init``: an sslseg checkpoint, or a plain DeepLabV3 state_dict in torchvision's naming.

    A plain state_dict comes back dressed as a checkpoint: ``{"format": "state_dict",
    "arch": "deeplabv3", "model_kwargs": {}, "state_dict": ..., "trained_parts":
    ["encoder", "decoder"]}``; its head is not transferred (it was trained for
    another task; the number of classes usually differs too).

    Raises:
        ValueError: missing or unreadable file, or a state_dict in another naming.
    """
    path = Path(path)
    obj = read_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    state_dict = unwrap_state_dict(obj, str(path))
    if not is_torchvision_deeplabv3(state_dict):
        example = next(iter(state_dict))
        raise UserError(
            f"{path}: a plain state_dict, but not in torchvision's DeepLabV3 naming (first key {example!r}, "
            f"no 'backbone.conv1.weight'); give an {FORMAT} checkpoint or a deeplabv3_resnet50 state_dict"
        )
    return {
        "format": "state_dict",
        "arch": "deeplabv3",
        "model_kwargs": {},
        "state_dict": state_dict,
        "trained_parts": ["encoder", "decoder"],
    }


def freeze_encoder(model: nn.Module, frozen: bool) -> None:
    """Freeze (or release) ``model.encoder``: no gradients, and BatchNorm kept in eval mode.

    Why BatchNorm too: ``requires_grad=False`` stops the weights, but a
    BatchNorm layer in training mode would still (a) normalise with the
    statistics of each small fine-tuning batch instead of the pretrained running
    ones, so the decoder would learn on features the encoder never gives at
    test time, and (b) overwrite those running statistics (buffers, untouched
    by the optimiser) with a few labelled images'. A forward pre-hook puts the
    encoder's BatchNorm layers in eval mode before every forward while frozen,
    so a later ``model.train()`` (the loop calls it after each validation)
    cannot undo it.

    Idempotent. Parameters stay in the optimiser; with no gradient, AdamW skips them.
    """
    encoder = model.encoder
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
    handle = getattr(encoder, _HOOK, None)
    if frozen and handle is None:
        setattr(encoder, _HOOK, encoder.register_forward_pre_hook(_norms_to_eval))
        _norms_to_eval(encoder, ())
    elif not frozen and handle is not None:
        handle.remove()
        delattr(encoder, _HOOK)
        for m in encoder.modules():
            if isinstance(m, _BATCH_NORMS):
                m.train(encoder.training)


def _norms_to_eval(module: nn.Module, _args: tuple) -> None:
    for m in module.modules():
        if isinstance(m, _BATCH_NORMS):
            m.eval()


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, batches) -> int:
    """Re-estimate the BatchNorm running statistics of ``module`` on ``batches`` (AdaBN).

    Pretext tasks normalise with statistics of *augmented views* (crops, intensity
    jitter, noise, masked pixels); a frozen pretrained encoder then meets plain
    frames with statistics that do not fit them. Each BatchNorm layer's running
    mean and variance become the plain average over the given batches (momentum
    ``None``); weights, biases and the layers' modes are left as they were.

    Args:
        module: e.g. ``model.encoder``.
        batches: iterable of input tensors ``(B, C, H, W)`` for ``module``.

    Returns:
        the number of BatchNorm layers re-estimated (0: nothing to do, no forward run).
    """
    norms = [m for m in module.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms:
        return 0
    saved = [(m.momentum, m.training) for m in norms]
    was_training = module.training
    module.eval()  # dropout and the like stay off; only the norms compute batch statistics
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
            m.train()
        for x in batches:
            module(x)
    finally:
        for m, (momentum, training) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.train(training)
        module.train(was_training)
    return len(norms)
