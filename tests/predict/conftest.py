"""Tiny checkpoints and a pointwise model whose masks are known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslseg.data.batches import Normalizer
from sslseg.engine.checkpoint import save_checkpoint
from sslseg.models.build import build_model
from sslseg.predict.run import Predictor

NORMALIZER = {"mean": 0.2, "std": 0.2, "scale": 255.0}


def make_checkpoint(path, in_channels: int = 1, num_classes: int = 2, stage: str = "finetune", seed: int = 0):
    torch.manual_seed(seed)
    kwargs = {"base_channels": 4, "depth": 2, "in_channels": in_channels, "num_classes": num_classes}
    model = build_model("unet", **kwargs)
    save_checkpoint(path, model, "unet", kwargs, {}, stage=stage,
                    preprocess={"normalizer": dict(NORMALIZER), "image_size": 32})
    return path


class Threshold(nn.Module):
    """Class 1 where the normalised first channel exceeds ``t``: a pointwise 'segmentation' model.

    With the test normaliser, ``(x / 255 - 0.2) / 0.2 > 0.01`` means grey value ``x >= 52``.
    """

    def __init__(self, t: float = 0.01) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 10.0 * (x[:, :1] - self.t)
        return torch.cat([-f, f], dim=1)


def threshold_predictor(image_size: int = 32, **options) -> Predictor:
    return Predictor(Threshold(), Normalizer.from_dict(NORMALIZER), image_size, **options)


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "ckpt.pt")


@pytest.fixture
def make_ckpt():
    """``make_ckpt(path, in_channels=1, num_classes=2, stage="finetune")``."""
    return make_checkpoint


@pytest.fixture
def threshold():
    """``threshold(**predictor_options)``: a Predictor around the pointwise :class:`Threshold` model."""
    return threshold_predictor
