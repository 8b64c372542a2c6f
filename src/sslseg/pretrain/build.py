"""Pretraining method registry: ``build_method(name, model, **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .byol import BYOL
from .global_local import GlobalContrastive, GlobalLocal, LocalContrastive
from .regression import MaskedRegression
from .regression_contrastive import RegressionContrastive
from .simclr import SimCLR

METHODS: dict[str, Callable[..., nn.Module]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "regression": MaskedRegression,
    "global_contrastive": GlobalContrastive,
    "local_contrastive": LocalContrastive,
    "global_local": GlobalLocal,
    "regression_contrastive": RegressionContrastive,
}


def build_method(name: str, model: nn.Module, **kwargs) -> nn.Module:
    """Wrap ``model`` in the named pretext task; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown pretraining method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    try:
        return METHODS[name](model, **kwargs)
    except TypeError as err:
        raise ValueError(f"method {name!r}: {err}") from None
