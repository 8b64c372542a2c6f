"""Prediction with a fine-tuned checkpoint on new studies: batched, optional flip TTA, frames prepared as in training.

Preprocessing is the training one, read from the checkpoint, never re-typed:
``preprocess["image_size"]``, the intensity normaliser (``mean``, ``std``,
``scale``), the data reader's ``intensity`` option (``config.data.options``)
and what the training frames were (``preprocess["frames"]``).

Intensities (:func:`sslseg.io.intensity.training_range`): 8-bit data stay 8-bit, as in training.
Other data are scaled per study as the training readers scale them
(``"scale"``: divided by the 99.5th percentile of ``|x|``, per channel;
``"zscore"``; ``"none"``).  A model trained on 8-bit data (``scale`` 255)
given other data gets them divided by their 99.5th percentile and mapped to
0..255; a model trained on floating-point data (``scale`` 1) given 8-bit data
gets them divided by 255, as the readers do when a data set mixes the two.

How a frame reaches the model (``prepare``; ``"auto"`` follows the table in
:func:`choose_preparation` and the README):

* ``"echo"``: the EchoNet-Dynamic preparation (:mod:`sslseg.echo.sector`): the
  imaging sector is found (DICOM ultrasound region calibration, then the pixels
  that vary over the clip), the rest masked, the sector's square cut out and
  resized to ``image_size``; the class probabilities go back to the frame grid,
  background outside the sector.  For a model trained on echo frames
  (``preprocess["frames"] == "echo-sector"``: synthetic echo, EchoNet-Dynamic,
  CAMUS, prepared DICOM cines) given an echo clip (a video, an ultrasound DICOM):
  the frames it learnt on were sector squares, whatever the scanner's pixel size.
* ``"tile"``: the input's pixels are at the model's scale; the frame is not
  resized.  Frames larger than ``image_size`` are covered by sliding windows of
  ``image_size`` (a smaller dimension is taken whole) with ``overlap`` (0.5),
  blended with a Gaussian importance map (sigma 1/8 of the window, as nnU-Net)
  by MONAI's ``sliding_window_inference``.  Automatic for a model trained on
  frames that were not resized (``"native"``: the training frames' size equals
  ``image_size``, e.g. MRI slices, microscopy tiles) given an input whose pixel
  spacing is within a factor 1.5 of the training spacing (or unknown on one
  side: pixels are then taken as the scale).
* ``"resize"``: every frame resized to ``image_size`` (bilinear, antialiased)
  exactly as in training, the log-probabilities resized back (bilinear) before
  the arg-max.  For everything else: training squeezed each whole frame to
  that square, so for an input whose pixel size cannot be related to the
  model's, resizing like training is the faithful choice.  Without TTA the
  labels are exactly :func:`sslseg.evaluate.inference.predict_frames`'s: all
  three go through evaluation's inference path
  (:func:`sslseg.evaluate.inference.segment`).

Test-time augmentation (``tta=True``): the frame and its left-right mirror go
through the model in one batch; the two softmax maps (the mirrored one flipped
back) are averaged.  Only the horizontal flip: vertical flips put the apex of
an apical echo view at the bottom, which the model never saw.  The
uncertainty map is the variance of the class probabilities over the TTA
passes, averaged over classes (for two classes: the variance of the
foreground probability; 0 where both passes agree, at most 0.25).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.batches import Normalizer
from ..echo.sector import Sector
from ..engine.trained import TRAINING_FRAMES, open_trained
from ..errors import UserError
from ..evaluate.inference import segment
from ..io.files import stem
from ..io.intensity import training_range
from ..io.tables import write_table
from .io import Study, expand_inputs, read_study, write_mask, write_overlay, write_uncertainty

# --------------------------------------------------------------------------- #
# pure functions
# --------------------------------------------------------------------------- #
#: how frames reach the model at prediction (``prepare``)
PREPARATIONS = ("auto", "echo", "tile", "resize")
#: input and training pixel spacings within this factor of each other count as the same scale
SPACING_TOLERANCE = 1.5


def same_scale(spacing: tuple[float, float] | None, reference: tuple[float, float] | None) -> bool:
    """Whether two pixel spacings are within :data:`SPACING_TOLERANCE`; True when either is unknown."""
    if spacing is None or reference is None:
        return True
    return all(1 / SPACING_TOLERANCE <= a / b <= SPACING_TOLERANCE for a, b in zip(spacing, reference, strict=True))


def choose_preparation(trained: str, echo_input: bool, size: tuple[int, int], image_size: int,
                       spacing: tuple[float, float] | None = None,
                       training_spacing: tuple[float, float] | None = None) -> str:
    """The automatic preparation of an input: ``"echo"``, ``"tile"`` or ``"resize"`` (the README's table).

    =================  ==========================================  =========
    trained on         input                                       prepared
    =================  ==========================================  =========
    ``echo-sector``    echo clip (video, ultrasound DICOM)         echo
    ``echo-sector``    anything else                               resize
    ``native``         larger than the training size, spacing      tile
                       within 1.5x of the training one or unknown
    ``native``         anything else                               resize
    ``resized``        anything                                    resize
    =================  ==========================================  =========
    """
    if trained not in TRAINING_FRAMES:
        raise UserError(f"training frames must be one of {', '.join(TRAINING_FRAMES)}, got {trained!r}")
    if trained == "echo-sector" and echo_input:
        return "echo"
    if trained == "native" and max(size) > image_size and same_scale(spacing, training_spacing):
        return "tile"
    return "resize"


# --------------------------------------------------------------------------- #
# the predictor
# --------------------------------------------------------------------------- #
@dataclass
class Prediction:
    """Labels ``(N, H, W)`` int64 on the input grid and, with TTA, the uncertainty ``(N, H, W)`` float32.

    ``preparation`` says how the frames reached the model (``"echo"``,
    ``"tile"``, ``"resize"``); ``sector`` is the echo sector when ``"echo"``.
    """

    labels: np.ndarray
    uncertainty: np.ndarray | None = None
    preparation: str = "resize"
    sector: Sector | None = None


@dataclass
class Predictor:
    """A model with its training preprocessing; ``predict(frames)`` on native-size frames.

    Attributes:
        model: returns logits ``(B, K, H, W)``.
        normalizer: the training normaliser.
        image_size: the training square size.
        in_channels, num_classes: the model's.
        intensity: the training reader's intensity option (for non-8-bit data).
        axis: the voxel axis the training volumes were cut along; volumes to predict on are cut the same way.
        batch_size: frames (or windows) per forward pass.
        device: where the model runs.
        tta: horizontal-flip test-time augmentation, with an uncertainty map.
        prepare: ``"auto"`` (:func:`choose_preparation`), ``"echo"``, ``"tile"`` or ``"resize"``.
        tile: the older switch: True is ``prepare="tile"``, False ``"resize"``; ``"auto"`` defers to ``prepare``.
        overlap: window overlap when tiling.
        native_size: ``(H, W)`` of the training frames when they all had one size.
        trained_on: the training frames (:data:`TRAINING_FRAMES`); None: ``"native"``
            when ``native_size`` is the training size, else ``"resized"``.
        training_spacing: median pixel spacing ``(row mm, column mm)`` of the training frames, when known.
        postprocess: keyword arguments of :func:`sslseg.evaluate.postprocess.postprocess`
            (``largest_component``, ``fill_holes``) applied to each frame's labels; None: raw labels.
    """

    model: torch.nn.Module
    normalizer: Normalizer
    image_size: int
    in_channels: int = 1
    num_classes: int = 2
    intensity: str = "scale"
    axis: int = 2
    batch_size: int = 16
    device: str = "cpu"
    tta: bool = False
    prepare: str = "auto"
    tile: bool | str = "auto"
    overlap: float = 0.5
    native_size: tuple[int, int] | None = None
    trained_on: str | None = None
    training_spacing: tuple[float, float] | None = None
    postprocess: dict | None = None

    def __post_init__(self) -> None:
        if self.tile not in (True, False, "auto"):
            raise UserError(f"tile must be True, False or 'auto', got {self.tile!r}")
        if self.prepare not in PREPARATIONS:
            raise UserError(f"prepare must be one of {', '.join(PREPARATIONS)}, got {self.prepare!r}")
        if self.tile != "auto" and self.prepare != "auto":
            raise UserError("give either tile or prepare, not both")
        if self.trained_on is None:
            s = self.image_size
            native = self.native_size is not None and tuple(self.native_size) == (s, s)
            self.trained_on = "native" if native else "resized"
        elif self.trained_on not in TRAINING_FRAMES:
            raise UserError(f"trained_on must be one of {', '.join(TRAINING_FRAMES)}, got {self.trained_on!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise UserError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")
        if self.axis not in (0, 1, 2):
            raise UserError(f"slicing axis must be 0, 1 or 2, got {self.axis!r}")
        self.model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **options) -> Predictor:
        """Model and preprocessing from a fine-tuned ``sslseg/1`` checkpoint (:func:`sslseg.engine.trained.open_trained`).

        Raises:
            ValueError: not a fine-tuned checkpoint, or one without preprocessing (one line naming the file).
        """
        trained = open_trained(path)
        options.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            model=trained.model,
            normalizer=trained.normalizer,
            image_size=trained.image_size,
            in_channels=trained.in_channels,
            num_classes=trained.num_classes,
            intensity=trained.intensity,
            axis=trained.axis,
            native_size=trained.native_size,
            trained_on=trained.frames,
            training_spacing=trained.spacing,
            **options,
        )

    def preparation(self, size: tuple[int, int], echo: bool = False,
                    spacing: tuple[float, float] | None = None) -> str:
        """How frames of ``size`` (H, W) reach the model: ``"echo"``, ``"tile"`` or ``"resize"``."""
        if self.tile != "auto":
            return "tile" if self.tile else "resize"
        if self.prepare != "auto":
            return self.prepare
        return choose_preparation(self.trained_on, echo, size, self.image_size, spacing, self.training_spacing)

    def tiles(self, size: tuple[int, int]) -> bool:
        """Whether frames of ``size`` (H, W), not an echo clip and of unknown spacing, are tiled."""
        return self.preparation(size) == "tile"

    @torch.inference_mode()
    def predict(self, frames: np.ndarray, where: str = "image", *, echo: bool = False,
                spacing: tuple[float, float] | None = None,
                region: tuple[int, int, int, int] | None = None) -> Prediction:
        """Labels for frames ``(N, H, W)`` or ``(N, C, H, W)`` at their native size.

        Args:
            frames: raw frames (before intensity normalisation).
            where: the file, for error messages.
            echo: the frames are an echo clip (a video, an ultrasound DICOM).
            spacing: their pixel spacing ``(row mm, column mm)``, when known.
            region: the DICOM ultrasound region ``(x0, y0, x1, y1)``, when present.

        Shape:
            frames ``(N, [C,] H, W)`` -> labels ``(N, H, W)``, uncertainty ``(N, H, W)``.
        """
        if (frames.ndim == 3 and self.in_channels != 1) or (frames.ndim == 4 and frames.shape[1] != self.in_channels):
            have = 1 if frames.ndim == 3 else frames.shape[1]
            raise UserError(f"{where}: wrong channel count: {have} channel(s), the model expects {self.in_channels}")
        x = training_range(frames, self.normalizer.scale, self.intensity, where)
        size = tuple(frames.shape[-2:])
        how = self.preparation(size, echo, spacing)
        sector, to_grid = None, None
        if how == "echo":
            from ..echo.sector import find_sector, prepare_frames, restore_probabilities

            sector = find_sector(frames, region)
            x = prepare_frames(x, sector, self.image_size)

            def to_grid(logp: torch.Tensor, var: torch.Tensor | None):
                # probabilities back on the frame grid, background outside the sector
                return (restore_probabilities(logp.exp(), sector, size),
                        restore_probabilities(var, sector, size) if var is not None else None)

        labels, uncertainty = segment(self.model, x, self.normalizer, self.image_size, batch_size=self.batch_size,
                                      device=self.device, tta=self.tta, tile=how == "tile", overlap=self.overlap,
                                      to_grid=to_grid)
        if self.postprocess and any(self.postprocess.values()):
            from ..evaluate.postprocess import postprocess as clean

            labels = clean(labels, self.num_classes, **self.postprocess)
            if sector is not None:
                labels[:, ~sector.mask] = 0  # never outside the imaging sector
        return Prediction(labels, uncertainty, how, sector)


# --------------------------------------------------------------------------- #
# files in, files out
# --------------------------------------------------------------------------- #
@dataclass
class FileResult:
    """What became of one input: its outputs, or the error (one line naming the file)."""

    path: Path
    kind: str = ""
    frames: int = 0
    shape: tuple[int, ...] = ()
    spacing: tuple[float, float] | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    echo: dict | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    preparation: str = ""
    sector: Sector | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def predict_file(
    predictor: Predictor,
    path: str | os.PathLike,
    out_base: str | os.PathLike,
    *,
    uncertainty: bool | None = None,
    echo: bool = True,
    lv_label: int = 1,
    max_heart_rate_bpm: float | None = None,
    dicom_masks: str = "nifti",
) -> FileResult:
    """Read, predict and write the outputs of one file (``out_base`` + ``_mask.<ext>``, ...).

    Videos and cines also get the echo measurements (``_lv.csv``, ``_beats.csv``,
    ``_lv_area.png``) for the LV label ``lv_label``.

    Raises:
        ValueError: unreadable input or wrong channel count (the message names the file).
    """
    from ..echo.measurements import (
        MAX_HEART_RATE_BPM,
        measure_video,
        plot_area_curve,
        write_beats_csv,
        write_measurement_csv,
    )

    path, out_base = Path(path), Path(out_base)
    study: Study = read_study(path, predictor.in_channels, predictor.axis)
    pred = predictor.predict(study.frames, where=str(path), echo=study.is_echo, spacing=study.spacing,
                             region=study.geometry.get("us_region"))
    res = FileResult(path, study.kind, study.num_frames, tuple(study.frames.shape[-2:]), study.spacing,
                     notes=list(study.notes), preparation=pred.preparation, sector=pred.sector)
    if pred.sector is not None:
        res.notes += [pred.sector.describe(), *pred.sector.notes]
    res.outputs.update(write_mask(study, pred.labels, out_base, predictor.num_classes, dicom_masks))
    overlay = write_overlay(study, pred.labels, out_base, predictor.num_classes)
    if overlay is not None:
        res.outputs["overlay"] = overlay
    if pred.uncertainty is not None and (uncertainty is None or uncertainty):
        res.outputs["uncertainty"] = write_uncertainty(study, pred.uncertainty, out_base)
    if echo and study.is_cine and study.num_frames >= 3:
        if not 0 < lv_label < predictor.num_classes:
            raise UserError(f"LV label {lv_label} is not one of the model's classes 1..{predictor.num_classes - 1}")
        m = measure_video(pred.labels, study.spacing, study.fps, lv_label,
                          max_heart_rate_bpm or MAX_HEART_RATE_BPM)
        res.outputs["lv_csv"] = write_measurement_csv(m, Path(f"{out_base}_lv.csv"))
        res.outputs["beats_csv"] = write_beats_csv(m, Path(f"{out_base}_beats.csv"))
        res.outputs["lv_plot"] = plot_area_curve(m, Path(f"{out_base}_lv_area.png"), title=path.name)
        res.echo = m.summary()
        if res.echo["flag"]:  # kept, and said: the segmentation needs a look
            res.notes.append(f"outside the physiological range: {res.echo['flag']}")
        if not m.fps_known:
            res.notes.append(f"frame rate unknown: {m.fps:g} frames/s assumed")
    return res


def predict_inputs(
    predictor: Predictor,
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    **options,
) -> Iterator[FileResult]:
    """Predict on files and folders; yields one :class:`FileResult` per file, failed ones included.

    A file that fails (unsupported format, corrupt, wrong channel count) yields
    a result with ``error`` set; the others are still processed.  Outputs go to
    ``out_dir`` under the input's name (files found in a folder keep their path
    relative to it); a name already used gets ``-2``, ``-3``, ... appended.
    Files under ``out_dir`` are not taken from a folder given as input.
    ``options`` are passed to :func:`predict_file`.
    """
    out = Path(out_dir)
    used: set[str] = set()
    for path, root, err in expand_inputs(list(inputs), skip=out):  # never its own outputs
        if err is not None:
            yield FileResult(path, error=err)
            continue
        rel = path.parent.relative_to(root) if root is not None else Path()
        name = str(rel / stem(path))
        base, k = name, 1
        while base.lower() in used:
            k += 1
            base = f"{name}-{k}"
        used.add(base.lower())
        try:
            yield predict_file(predictor, path, out / base, **options)
        except ValueError as e:
            msg = str(e)
            yield FileResult(path, error=msg if str(path) in msg else f"{path}: {msg}")
        except (OSError, RuntimeError, MemoryError) as e:  # e.g. a full disk, a tensor the model refuses
            yield FileResult(path, error=f"{path}: {type(e).__name__}: {' '.join(str(e).split())}")
        except Exception as e:  # noqa: BLE001 - one bad file (e.g. a decompression bomb) never stops the others
            yield FileResult(path, error=f"{path}: {type(e).__name__}: {' '.join(str(e).split())}")


#: the columns of ``predictions.csv``, one row per input
PREDICTION_COLUMNS = ("input", "status", "kind", "frames", "height", "width", "spacing_mm", "prepared", "outputs",
                      "notes")


def write_summary(results: list[FileResult], out_dir: str | os.PathLike,
                  known_ef: dict[str, float] | None = None) -> dict:
    """``predictions.csv`` (one row per input) and, for videos, ``echo_summary.csv``.

    With ``known_ef`` (e.g. from EchoNet-Dynamic's ``FileList.csv``, keyed by
    file name without extension) the EF mean absolute error is computed.

    Returns:
        ``{"files", "failed", "videos", "ef_mae", "ef_compared"}``.
    """
    from ..echo.measurements import ef_error

    out = Path(out_dir)
    write_table(out / "predictions.csv", [
        {"input": r.path, "status": "ok" if r.ok else "failed", "kind": r.kind, "frames": r.frames,
         **dict(zip(("height", "width"), r.shape or ("", ""), strict=True)),
         "spacing_mm": " x ".join(f"{s:g}" for s in r.spacing) if r.spacing else "", "prepared": r.preparation,
         "outputs": " ".join(str(p) for p in r.outputs.values()), "notes": r.error or "; ".join(r.notes)}
        for r in results
    ], PREDICTION_COLUMNS)
    videos = [r for r in results if r.ok and r.echo is not None]
    summary = {"files": len(results), "failed": sum(not r.ok for r in results), "videos": len(videos),
               "ef_mae": None, "ef_compared": 0}
    if videos:
        known = known_ef or {}
        rows = []
        for r in videos:
            row = {"file": str(r.path), **r.echo}
            k = known.get(stem(r.path))
            row["known_ef_percent"] = k if k is not None else ""
            row["ef_abs_error"] = abs(r.echo["ef_percent"] - k) if k is not None else ""
            rows.append(row)
        write_table(out / "echo_summary.csv", rows)
        est = {stem(r.path): r.echo["ef_percent"] for r in videos}
        shared = {k: v for k, v in est.items() if k in known and math.isfinite(v)}
        if shared:
            summary["ef_mae"] = ef_error(shared, known)
            summary["ef_compared"] = len(shared)
    return summary
