"""Export a fine-tuned checkpoint to ONNX or TorchScript, checked against PyTorch.

The exported graph takes *normalised* images ``(B, C, S, S)`` at the training
size ``S`` (batch size free) and returns logits ``(B, K, S, S)``.  The
preprocessing needed to get there travels inside the file, as JSON under the
key ``sslseg_preprocess`` (ONNX ``metadata_props``; TorchScript extra file
``sslseg_preprocess.json``): ``{"image_size", "normalizer": {"mean", "std",
"scale"}, "intensity", "in_channels", "num_classes", "arch"}``, so that
``x -> ((x / scale) - mean) / std`` after resizing to ``S`` reproduces
:mod:`sslseg.predict`.

The spatial size is fixed: the model pads inputs to a multiple of its
reduction with Python control flow on the input shape, which tracing (both
exporters here trace) records for ``S`` only.

ONNX uses ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based
exporter: no ``onnxscript`` dependency) at opset 17; the result is run with
onnxruntime on a fresh random batch of another batch size and must match
PyTorch within ``atol`` (1e-4).  TorchScript uses ``torch.jit.trace`` (the
models' feature lists do not script) and is checked the same way.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .engine.trained import TrainedModel, open_trained
from .errors import UserError
from .io.files import atomic_write

FORMATS = ("onnx", "torchscript")
META_KEY = "sslseg_preprocess"


@dataclass
class ExportResult:
    """The exported file, the largest |exported - PyTorch| on the check batch, and the metadata."""

    path: Path
    max_abs_diff: float | None
    metadata: dict


def _metadata(trained: TrainedModel) -> dict:
    return {
        "arch": trained.arch,
        "image_size": trained.image_size,
        "normalizer": trained.normalizer.to_dict(),
        "intensity": trained.intensity,
        "in_channels": trained.in_channels,
        "num_classes": trained.num_classes,
        "input": "normalised image (B, in_channels, image_size, image_size)",
        "output": "logits (B, num_classes, image_size, image_size)",
    }


def check_writable(path: Path) -> None:
    """Refuse an output file whose folder cannot be written, before any work (a file is made and removed there).

    Raises:
        ValueError: one line naming ``path`` and why (read-only folder, no such place, a file in the way).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = (err.strerror or str(err)).lower()
        raise UserError(f"{path}: cannot be written ({err.filename or path.parent}: {why})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as err:
        why = (err.strerror or str(err)).lower()
        raise UserError(f"{path}: cannot be written (folder {path.parent}: {why})") from None
    os.close(fd)
    os.unlink(probe)


def export_model(
    ckpt: str | os.PathLike,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    *,
    opset: int = 17,
    atol: float = 1e-4,
    check: bool = True,
) -> ExportResult:
    """Export a fine-tuned ``sslseg/1`` checkpoint (see the module notes).

    Args:
        ckpt: the checkpoint file.
        format: ``"onnx"`` or ``"torchscript"``.
        out: the exported file; default the checkpoint's path with ``.onnx`` /
            ``.torchscript.pt``.
        opset: ONNX opset.
        atol: largest accepted |exported - PyTorch| on the check batch.
        check: run the exported model and compare (ONNX: needs onnxruntime).

    Raises:
        ValueError: unknown format, not a fine-tuned checkpoint, an output
            folder that cannot be written, or the export extra (onnx,
            onnxruntime) is not installed.
        OSError: a full disk (naming ``path``).
        RuntimeError: the exported model disagrees with PyTorch beyond ``atol``.
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    trained = open_trained(ckpt)
    meta = _metadata(trained)
    suffix = ".onnx" if format == "onnx" else ".torchscript.pt"
    path = Path(out) if out is not None else Path(ckpt).with_suffix(suffix)
    check_writable(path)
    model = trained.model
    s, c = meta["image_size"], meta["in_channels"]
    g = torch.Generator().manual_seed(0)
    example = torch.randn(2, c, s, s, generator=g)
    # checked on another batch size than the traced one: the batch axis must be free
    probe = torch.randn(3, c, s, s, generator=g)
    with torch.inference_mode():
        ref = model(probe).numpy()
    # written all at once (sslseg.io.files.atomic_write): a failed export leaves no temporary
    if format == "onnx":
        diff = _export_onnx(model, example, probe, path, meta, opset, check)
    else:
        diff = _export_torchscript(model, example, probe, path, meta, check)
    if diff is not None:
        diff = float(np.abs(diff - ref).max())
        if not diff <= atol:  # nan (a NaN in either output) fails too
            raise RuntimeError(f"{path}: the exported model differs from PyTorch by {diff:.3g} (> {atol:g})")
    return ExportResult(path, diff, meta)


def _export_onnx(model, example, probe, path: Path, meta: dict, opset: int, check: bool) -> np.ndarray | None:
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'sslseg[export]' (onnx, onnxruntime)") from None
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the tracing exporter: no onnxscript needed
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # shape-dependent padding is traced for the training size only (module notes)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buf, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, **kwargs,
        )
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.checker.check_model(proto)
    with atomic_write(path, "wb") as f:
        f.write(proto.SerializeToString())
    if not check:
        return None
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("checking the ONNX export needs onnxruntime: pip install 'sslseg[export]'") from None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": probe.numpy()})[0]


def _export_torchscript(model, example, probe, path: Path, meta: dict, check: bool) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit deprecation notice and the traced-padding notice
        traced = torch.jit.trace(model, example)
        with atomic_write(path, "wb") as f:
            torch.jit.save(traced, f, _extra_files={f"{META_KEY}.json": json.dumps(meta)})
        if not check:
            return None
        loaded = torch.jit.load(str(path))
        with torch.inference_mode():
            return loaded(probe).numpy()


def read_metadata(path: str | os.PathLike) -> dict:
    """The preprocessing stored in an exported file (ONNX or TorchScript)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        for p in onnx.load(str(path)).metadata_props:
            if p.key == META_KEY:
                return json.loads(p.value)
        raise UserError(f"{path}: no {META_KEY} metadata")
    files = {f"{META_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[f"{META_KEY}.json"])
