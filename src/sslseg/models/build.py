"""Model registry: ``build_model(name, in_channels=, num_classes=, **kwargs)``."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

import torch

from ..errors import UserError
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
    # weights stored NHWC like the activations (UNetEncoder), so that no convolution reorders its weights
    # per call; state_dict keys, shapes and values are unchanged, and loading copies into this layout
    return SegmentationModel(encoder, decoder, head).to(memory_format=torch.channels_last)


#: architecture name -> builder ``(in_channels=, num_classes=, **options) -> SegmentationModel``
MODELS: Registry[Callable[..., SegmentationModel]] = Registry("architecture")
MODELS.add("unet", build_unet,
           "UNet (options: base_channels 16, depth 4, norm batch); encoder and decoder pretrainable")
MODELS.add("deeplabv3", build_deeplabv3,
           "DeepLabV3, ResNet-50 dilated (output stride 8, ASPP); loads torchvision-named weights")


#: architecture -> option -> (lowest, highest) integer; wider or deeper networks do not fit any machine
#: (a UNet doubles its width at each of its ``depth`` stages: base_channels 16, depth 12 asks for 65536 channels)
OPTION_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "unet": {"in_channels": (1, 64), "num_classes": (1, 1000), "base_channels": (1, 512), "depth": (1, 8)},
    "deeplabv3": {"in_channels": (1, 64), "num_classes": (1, 1000)},
}


def check_model_options(name: str, options: dict) -> None:
    """Refuse an architecture option of the wrong type or out of range, in one line naming it and what is allowed.

    Options the table does not list are left to the builder (which names them when they are unknown, and
    checks ``output_stride`` and ``norm`` values).

    Raises:
        ValueError: e.g. ``model.options.depth = 12 is not allowed for unet: expected an integer from 1 to 8``.
    """
    for key, value in options.items():
        where = f"model.options.{key} = {value!r} is not allowed for {name}"
        bounds = OPTION_RANGES.get(name, {}).get(key)
        if bounds is not None:
            lo, hi = bounds
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not lo <= value <= hi:
                raise UserError(f"{where}: expected an integer from {lo} to {hi}")
        elif name == "deeplabv3" and key == "atrous_rates" and value is not None and (
                not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) and 1 <= r <= 256 for r in value)):
            raise UserError(f"{where}: expected three integers from 1 to 256, e.g. [12, 24, 36]")
        elif key == "norm" and not isinstance(value, str):
            raise UserError(f"{where}: expected one of batch, instance, group, none")


def build_model(name: str, in_channels: int = 1, num_classes: int = 2, **kwargs) -> SegmentationModel:
    """Build a segmentation model by registry name.

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown keyword, or an option out of
            range (:func:`check_model_options`).
    """
    builder = MODELS.get(name)
    takes = [p for p in inspect.signature(builder).parameters if p not in ("in_channels", "num_classes")]
    unknown = [k for k in kwargs if k not in takes]
    if unknown:
        raise UserError(f"model.options.{unknown[0]}: architecture {name!r} takes no option {unknown[0]!r} "
                        f"(it takes {', '.join(takes)})")
    check_model_options(name, {"in_channels": in_channels, "num_classes": num_classes, **kwargs})
    # the names and ranges were checked above: a TypeError from the builder is a bug, with its traceback
    return builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
