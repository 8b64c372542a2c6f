"""Small building blocks shared by the encoders and decoders."""

from __future__ import annotations

from torch import nn

from ..errors import UserError

NORMS = ("batch", "instance", "group", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Return a 2D normalisation layer by name (``batch``, ``instance``, ``group``, ``none``)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        # 8 groups where the width allows it; GroupNorm needs channels % groups == 0
        groups = 8 if channels % 8 == 0 else 1
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMS)}")


class DoubleConv(nn.Sequential):
    """(Conv3x3 -> norm -> ReLU) x 2, the UNet stage of Ronneberger et al. 2015."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )
