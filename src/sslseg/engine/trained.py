"""Open a fine-tuned checkpoint for use: the model, and how to feed it as it was trained.

Everything that evaluates, predicts with or exports a trained model starts
here (:func:`open_trained`), so the preprocessing is read from the checkpoint
in one place and never re-typed: the training square ``image_size``, the
intensity normaliser (``mean``, ``std``, ``scale``), the data reader's
``intensity`` option (``preprocess["intensity"]``; older checkpoints:
``config.data.options``), the voxel axis volumes were cut along
(``preprocess["axis"]``; older checkpoints: 2, ``k``), what the training frames
were (``preprocess["frames"]``), their size and pixel spacing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.batches import Normalizer
from ..errors import UserError
from .checkpoint import load_checkpoint, model_from_checkpoint

#: what the training frames were, as a fine-tuned checkpoint records it (``preprocess["frames"]``)
TRAINING_FRAMES = ("echo-sector", "native", "resized")


def training_frames(spec: str, native_size: tuple[int, int] | None, image_size: int,
                    modalities: set[str] | None = None, options: dict | None = None) -> str:
    """What a model's training frames were, for the checkpoint: ``"echo-sector"``, ``"native"`` or ``"resized"``.

    Whether a data set's frames are echo sectors filling a square is the data
    set's registered fact (``echo_sectors`` in :data:`sslseg.data.registry.DATASETS`):
    True for the echo sets; the name of the option that prepares them for a
    reader that does so on request (``dicom``'s ``sector``, ultrasound only).

    Args:
        spec: the data spec (``synthetic-echo``, ``echonet:PATH``, ``dicom:PATH`` ...).
        native_size: the training frames' size before resizing when they share one.
        image_size: the training square size.
        modalities: the training cases' modalities (``Case.modality``).
        options: the data reader's options.
    """
    from ..data.registry import DATASETS

    name = spec.partition(":")[0]
    sectors = DATASETS.entry(name).info.get("echo_sectors", False) if name in DATASETS else False
    if sectors is True or (isinstance(sectors, str) and (options or {}).get(sectors) and modalities == {"US"}):
        return "echo-sector"
    if native_size is not None and tuple(native_size) == (image_size, image_size):
        return "native"
    return "resized"


@dataclass
class TrainedModel:
    """A fine-tuned model and its training preprocessing.

    Attributes:
        path: the checkpoint file.
        model: the network in eval mode; returns logits ``(B, K, H, W)``.
        arch: its architecture name.
        normalizer: the training normaliser (applied after resizing).
        image_size: the training square size.
        in_channels, num_classes: the model's.
        intensity: the training reader's intensity option (``scale``, ``zscore``, ``none``).
        axis: the voxel axis the training volumes were cut along (0, 1 or 2).
        frames: what the training frames were (:data:`TRAINING_FRAMES`).
        native_size: ``(H, W)`` of the labelled training frames when they shared one.
        spacing: their median pixel spacing ``(row mm, column mm)``, when known.
        dataset: the training data spec.
        config: the fully resolved run config.
        checkpoint: everything else the checkpoint holds (splits, labelled cases, ...).
    """

    path: Path
    model: torch.nn.Module
    arch: str
    normalizer: Normalizer
    image_size: int
    in_channels: int
    num_classes: int
    intensity: str
    frames: str
    native_size: tuple[int, int] | None = None
    spacing: tuple[float, float] | None = None
    dataset: str = ""
    config: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict, repr=False)
    axis: int = 2


def check_finite(state_dict: dict, where: str | os.PathLike) -> None:
    """Refuse weights holding NaN or infinite values (a run that diverged): nothing they predict means anything.

    Raises:
        ValueError: one line naming ``where``, how many tensors are affected and the first of them.
    """
    bad = [k for k, v in state_dict.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{where}: its weights hold NaN or infinite values ({len(bad)} tensor(s), e.g. {bad[0]!r}); "
                        "the run diverged: train it again, e.g. with a lower learning rate")


def open_trained(path: str | os.PathLike, device: torch.device | str = "cpu") -> TrainedModel:
    """Open a fine-tuned ``sslseg/1`` checkpoint: its model in eval mode on ``device``, and its preprocessing.

    Checkpoints written before ``preprocess["frames"]`` existed get it from
    their data spec and native size (:func:`training_frames`).

    Raises:
        ValueError: a missing or unreadable file, a checkpoint that is not fine-tuned
            or records no preprocessing, weights that do not fit their model, or
            weights holding NaN or infinite values (one line naming the file).
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("stage") != "finetune":
        raise UserError(f"{path}: a {ckpt.get('stage', 'unknown')} checkpoint has no trained segmentation head; "
                        "fine-tune it first")
    pre = ckpt.get("preprocess") or {}
    if not pre.get("normalizer") or "image_size" not in pre:
        raise UserError(f"{path}: the checkpoint records no preprocessing (normalizer, image_size)")
    kwargs = ckpt.get("model_kwargs") or {}
    config = ckpt.get("config") or {}
    data_cfg = config.get("data") or {}
    image_size = int(pre["image_size"])
    native = tuple(int(v) for v in pre["native_size"]) if pre.get("native_size") else None
    frames = pre.get("frames")
    if frames is None:
        frames = training_frames(str(data_cfg.get("spec", "")), native, image_size)
    if frames not in TRAINING_FRAMES:
        raise UserError(f"{path}: preprocess.frames is {frames!r}; expected one of {', '.join(TRAINING_FRAMES)}")
    axis = pre.get("axis", 2)  # older checkpoints: the readers' default, k
    if axis not in (0, 1, 2):
        raise UserError(f"{path}: preprocess.axis is {axis!r}; expected 0, 1 or 2")
    intensity = pre.get("intensity") or (data_cfg.get("options") or {}).get("intensity", "scale")
    check_finite(ckpt.get("state_dict") or {}, path)
    model = model_from_checkpoint(ckpt, where=path).to(device).eval()
    return TrainedModel(
        path=Path(path),
        model=model,
        arch=str(ckpt.get("arch")),
        normalizer=Normalizer.from_dict(pre["normalizer"]),
        image_size=image_size,
        # build_model's defaults when the checkpoint leaves them out
        in_channels=int(kwargs.get("in_channels", 1)),
        num_classes=int(kwargs.get("num_classes", 2)),
        intensity=str(intensity),
        axis=int(axis),
        frames=frames,
        native_size=native,
        spacing=tuple(float(v) for v in pre["spacing"]) if pre.get("spacing") else None,
        dataset=str(ckpt.get("dataset") or data_cfg.get("spec", "")),
        config=config,
        checkpoint=ckpt,
    )
