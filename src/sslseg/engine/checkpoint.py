"""Checkpoints: one ``.pt`` file, written atomically, read with ``weights_only=True``.

Format ``sslseg/1``, as :func:`save_checkpoint` and the pipeline's stages write it::

    {"format": "sslseg/1", "arch": "unet", "model_kwargs": {"in_channels", "num_classes", ...},
     "state_dict": {...}, "config": {...fully resolved run config...}, "version": "0.1.0",
     "stage": "pretrain" | "finetune", "dataset": "<data spec>",
     "splits": {case_id: "train" | "val" | "test"},
     "preprocess": {"normalizer": {"mean", "std", "scale"}, "image_size": S, ...}, ...}

A pretraining checkpoint adds ``"method"`` and ``"trained_parts"`` (``["encoder"]``
or ``["encoder", "decoder"]``).  A fine-tuned one adds to ``preprocess``
``"native_size"`` (``[H, W]`` of the labelled frames when they share one, else
None), ``"frames"`` (``"echo-sector"``, ``"native"`` or ``"resized"``),
``"spacing"`` (median ``[row mm, column mm]`` or None), ``"axis"`` (the voxel
axis volumes were cut along, which prediction cuts along too) and
``"intensity"`` (the reader's intensity option), and ``"labelled_cases"``,
``"best_val"``, ``"transfer"`` and ``"freeze_encoder_steps"``.  Open a fine-tuned
checkpoint for use with :func:`sslseg.engine.trained.open_trained`.

The resume snapshot ``last.pt`` is another format (:mod:`sslseg.engine.resume`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import UserError
from ..io.files import atomic_write

FORMAT = "sslseg/1"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` all at once, synced to disk (:func:`sslseg.io.files.atomic_write`: the previous file
    kept on any failure, a full disk named, dead writers' temporaries removed, permissions 0644)."""
    with atomic_write(path, "wb", sync=True) as f:
        torch.save(obj, f)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    arch: str,
    model_kwargs: dict,
    config: dict | None = None,
    **extra: Any,
) -> None:
    """Write an ``sslseg/1`` checkpoint that rebuilds its model with no user code."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        {
            "format": FORMAT,
            "arch": arch,
            "model_kwargs": dict(model_kwargs),
            "state_dict": state,
            "config": config or {},
            "version": __version__,
            **extra,
        },
        path,
    )


def read_torch_file(path: str | os.PathLike):
    """``torch.load(..., weights_only=True)`` on the CPU, with one-line errors for the user."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text:
            # torch's explanation spans many lines; what matters: the file holds code, and it was not run
            why = "it holds Python objects beyond tensors and plain values, refused without running them"
        else:
            why = f"{type(err).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({why})") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint safely (``weights_only=True``).

    Raises:
        ValueError: the file is missing, unreadable, or not an ``sslseg/1`` checkpoint.
    """
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an {FORMAT} checkpoint (no 'format': '{FORMAT}' entry)")
    return ckpt


def model_from_checkpoint(ckpt: dict, where: str | os.PathLike = "checkpoint") -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint and load its weights (strict).

    Raises:
        ValueError: the model cannot be rebuilt or its weights do not fit; the message starts with ``where``.
    """
    from ..models.build import build_model

    try:
        kwargs = dict(ckpt["model_kwargs"])
        model = build_model(ckpt["arch"], **kwargs)
    except (KeyError, TypeError) as err:
        raise UserError(f"{where}: cannot rebuild its model ({type(err).__name__}: {err})") from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        # torch lists every mismatched tensor over many lines; the first one says enough
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        first = next((ln for ln in lines[1:] if "size mismatch" in ln or "key(s)" in ln), lines[0] if lines else "")
        raise UserError(f"{where}: its weights do not fit its model_kwargs ({first})") from None
    return model
