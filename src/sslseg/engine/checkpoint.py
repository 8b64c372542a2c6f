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

import contextlib
import glob
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import UserError
from ..io.files import naming_disk_full

FORMAT = "sslseg/1"


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owner() -> str:
    """``host-pid`` of this process, as its temporary files carry it (dots and dashes of the host name dropped)."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files of ``path`` that :func:`atomic_save` writes (``.<name>.<host>-<pid>.<random>.tmp``)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def _writer_gone(tmp: Path, name: str) -> bool:
    """Whether the process that made ``tmp`` is known to be dead (this host, its pid no longer running)."""
    owner = tmp.name[len(name) + 2 : -len(".tmp")].rpartition(".")[0]  # "<host>-<pid>"
    host, _, pid = owner.rpartition("-")
    if host != _owner().rpartition("-")[0] or not pid.isdigit():
        return False  # another machine's writer (shared storage), or a name of another form: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def remove_temporaries(path: str | os.PathLike, only_dead: bool = False) -> list[Path]:
    """Delete the temporaries of ``path`` left by writers killed mid-write (SIGKILL, a power cut).

    Args:
        only_dead: delete only those whose writer is known to be dead on this host;
            False: every one (the caller owns the folder, so nobody else writes ``path``).

    Returns:
        the files deleted.
    """
    path = Path(path)
    gone = []
    for tmp in temporaries(path):
        if only_dead and not _writer_gone(tmp, path.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            gone.append(tmp)
    return gone


def discard(path: str | os.PathLike) -> None:
    """Delete ``path`` and every temporary of it (a finished run's ``last.pt``, superseded by its checkpoint)."""
    Path(path).unlink(missing_ok=True)
    remove_temporaries(path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``.

    The file gets the permissions of any new file (0666 less the umask: 0644 usually), not ``mkstemp``'s 0600.
    A failed or interrupted write removes its temporary and leaves the previous file as it was; a full disk
    becomes one ``OSError`` naming ``path`` (:func:`sslseg.io.files.naming_disk_full`).  The temporary's
    name carries its writer (``.<name>.<host>-<pid>.<random>.tmp``): one left by a writer killed
    mid-write (SIGKILL) is deleted by the next successful write of the same file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_disk_full(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
        try:
            if hasattr(os, "fchmod"):  # mkstemp's 0600 would hide the file from colleagues on shared storage
                os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    remove_temporaries(path, only_dead=True)


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
