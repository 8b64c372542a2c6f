"""The data contract: a ``Case`` (one subject, its frames or slices, masks and split).

Batches are cut from a case's frame array as tensors (``data.batches``); there is
no per-image object on the training path.

Splits and label budgets are drawn per ``Case`` so that no subject ever leaks
between training and test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError

SPLITS = ("train", "val", "test")
#: keys ``Case.meta`` refuses: facts that change what the pipeline does are typed fields, and
#: what a reader says of the whole data set is said once (:class:`Cases`)
NOT_META = {"volume": "volume", "slice_spacing": "slice_spacing", "spacing_known": "spacing_known",
            "modality": "modality", "phase": "phases", "scored_masks": "scored_masks",
            "dataset_skipped": "Cases.skipped", "dataset_notes": "Cases.notes"}


@dataclass
class Case:
    """One subject: an echo video, an MRI volume, a patient.

    Attributes:
        case_id: unique identifier inside its data set.
        frames: ``(T, H, W)`` or ``(T, C, H, W)`` array-like of every frame or
            slice (all usable for pretraining), ``uint8`` (0..255) or ``float32``:
            an ``np.ndarray`` or a lazily memory-mapped array from the decode cache
            (``shape``, ``dtype``, ``ndim``, indexing).
        masks: labelled frames, a ``Mapping[int, (H, W) int64 label map]``: a dict,
            or a read-only mapping that draws masks on demand (large data sets).
        spacing: pixel size in mm as ``(row, column)``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (assigned later).
        meta: descriptive metadata for people and reports (EF, label names,
            source files, views ...). Nothing in sslseg decides anything from
            it: every fact that changes what the pipeline does is a field below.
        volume: the frames are slices of one volume (MRI, CT, a DICOM series),
            not instants of a cine. Decides the evaluation convention (3D scores)
            and which pretraining methods apply (partitions share anatomy only
            across slices, :func:`sslseg.pretrain.build.frame_axis`).
        slice_spacing: mm between slices of a volume (3D HD95); None: unknown
            or not a volume (1 mm is then assumed).
        spacing_known: ``spacing`` was read from the files (False: a reader fell
            back to 1 pixel = 1 mm); only known spacings go into the checkpoint.
        modality: acquisition modality in the DICOM sense (``"US"``, ``"MR"``,
            ``"CT"``), upper case, ``""`` when unknown. Echo readers set ``US``.
        channels: the names of the frames' channels where the data set gives
            them (Decathlon's ``"T2"``, ``"ADC"``), in channel order.
        phases: ``{frame index: phase name}`` of labelled frames of a cine
            (``"ED"``, ``"ES"``); scores are reported per phase.
        scored_masks: the masks validation and test score, when a reader option
            narrowed ``masks`` for training (Decathlon's ``empty_slices``); None:
            ``masks`` themselves (:func:`sslseg.evaluate.inference.scored_masks`).
    """

    case_id: str
    frames: np.ndarray
    masks: Mapping[int, np.ndarray] = field(default_factory=dict)
    spacing: tuple[float, float] = (1.0, 1.0)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    volume: bool = False
    slice_spacing: float | None = None
    spacing_known: bool = True
    modality: str = ""
    channels: tuple[str, ...] = ()
    phases: dict[int, str] = field(default_factory=dict)
    scored_masks: Mapping[int, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim not in (3, 4):
            raise UserError(
                f"case {self.case_id!r}: frames must be (T, H, W) or (T, C, H, W), "
                f"got shape {tuple(self.frames.shape)}"
            )
        h, w = self.frames.shape[-2:]
        for idx, mask in self.masks.items():
            if not 0 <= idx < self.frames.shape[0]:
                raise UserError(
                    f"case {self.case_id!r}: labelled frame {idx} is outside the "
                    f"{self.frames.shape[0]} frames"
                )
            if mask.shape != (h, w):
                raise UserError(
                    f"case {self.case_id!r}: mask of frame {idx} has shape {mask.shape}, "
                    f"image has {(h, w)}"
                )
        if self.split is not None and self.split not in SPLITS:
            raise UserError(f"case {self.case_id!r}: split must be one of {SPLITS}, got {self.split!r}")
        misplaced = sorted(k for k in self.meta if k in NOT_META)
        if misplaced:  # a caller's mistake, not the user's: a TypeError with its traceback
            k = misplaced[0]
            raise TypeError(f"case {self.case_id!r}: meta[{k!r}] would be ignored; it is {NOT_META[k]} "
                            "(sslseg.data.sample.Case)")
        self.modality = str(self.modality).upper()
        self.phases = {int(k): str(v) for k, v in self.phases.items()}
        if self.slice_spacing is not None:
            self.slice_spacing = float(self.slice_spacing)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def labelled_indices(self) -> list[int]:
        return sorted(self.masks)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.frames.shape[-2:])  # type: ignore[return-value]


def common_dtype(cases: list[Case], notes: list[str]) -> list[Case]:
    """One frame dtype for a data set: when 8-bit and other cases mix, the 8-bit ones are divided by 255.

    Appends a note for the user to ``notes`` when it converts.
    """
    dtypes = {np.dtype(c.frames.dtype) for c in cases}
    if len(dtypes) == 1:
        return cases
    notes.append("8-bit and other images mixed: 8-bit images divided by 255, all frames float32")
    out = []
    for c in cases:
        if c.frames.dtype == np.uint8:
            frames = np.asarray(c.frames).astype(np.float32) / 255.0
            c = dataclasses.replace(c, frames=frames)
        out.append(c)
    return out


class Cases(list):
    """The cases of one data set, and what its reader has to say about the set once.

    A ``list`` of :class:`Case` (filter, sort and index it as one) carrying

    * ``skipped``: one line per file or item the reader left out and why
      (unreadable, wrong shape, NaN), shown by ``sslseg data`` and warned about
      by every run (:func:`sslseg.experiments.pipeline.load_cases`);
    * ``notes``: facts about the whole set a user should read (spacing assumed,
      8-bit images rescaled, views placed on one canvas).

    Slicing or filtering returns a plain ``list``: the notes belong to what was read.
    """

    def __init__(self, cases: Iterable[Case] = (), skipped: Iterable[str] = (), notes: Iterable[str] = ()) -> None:
        super().__init__(cases)
        self.skipped = list(skipped)
        self.notes = list(notes)
