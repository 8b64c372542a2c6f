"""Data: cases, samples, readers, splits."""

from .registry import DATASETS, load_dataset
from .sample import Case, Sample

__all__ = ["Case", "Sample", "DATASETS", "load_dataset"]
