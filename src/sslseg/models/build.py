"""Model registry: ``build_model(name, in_channels=, num_classes=, **kwargs)``."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry
from .deeplabv3 import build_deeplabv3
from .heads import SegmentationHead
from .segmentation import SegmentationModel
from .unet import UNetDecoder, UNetEncoder


def build_unet(
    in_channels: int = 1,
    num_classes: int = 2,
    base_channels: int = 16,
    depth: int = 4,
    norm: str = "batch",
) -> SegmentationModel:
    """UNet with a reachable encoder; see :mod:`sslseg.models.unet`."""
    encoder = UNetEncoder(in_channels, base_channels, depth, norm)
    decoder = UNetDecoder(encoder.out_channels, norm)
    head = SegmentationHead(decoder.out_channels[-1], num_classes)
    return SegmentationModel(encoder, decoder, head)


#: architecture name -> builder ``(in_channels=, num_classes=, **options) -> SegmentationModel``
MODELS: Registry[Callable[..., SegmentationModel]] = Registry("architecture")
MODELS.add("unet", build_unet,
           "UNet (options: base_channels 16, depth 4, norm batch); encoder and decoder pretrainable")
MODELS.add("deeplabv3", build_deeplabv3,
           "DeepLabV3, ResNet-50 dilated (output stride 8, ASPP); loads torchvision-named weights")


def build_model(name: str, in_channels: int = 1, num_classes: int = 2, **kwargs) -> SegmentationModel:
    """Build a segmentation model by registry name.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or unknown keyword.
    """
    builder = MODELS.get(name)
    try:
        return builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"architecture {name!r}: {err}") from None
