"""Data: cases, samples, readers, splits."""

from .registry import DATASETS, load_dataset
from .sample import Case

__all__ = ["Case", "DATASETS", "load_dataset"]
