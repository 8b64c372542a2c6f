"""Use a trained model: read new studies in their own formats, predict, write masks with their geometry.

``Predictor.from_checkpoint(path)`` carries the training preprocessing;
``predict_inputs(predictor, inputs, out_dir)`` handles files and folders and
reports failures per file; :mod:`sslseg.predict.io` reads and writes the formats.
"""

from __future__ import annotations

from ..io.intensity import training_range
from .io import Study, expand_inputs, read_study
from .run import (
    FileResult,
    Prediction,
    Predictor,
    choose_preparation,
    predict_file,
    predict_inputs,
    write_summary,
)

__all__ = [
    "FileResult",
    "Prediction",
    "Predictor",
    "choose_preparation",
    "Study",
    "expand_inputs",
    "predict_file",
    "predict_inputs",
    "read_study",
    "training_range",
    "write_summary",
]
