"""UNet (Ronneberger et al., MICCAI 2015) split into a reachable encoder and a decoder.

"The contracting path follows the typical architecture of a convolutional network
... Every step in the expansive path consists of an upsampling of the feature map
followed by ... a concatenation with the correspondingly cropped feature map from
the contracting path, and two 3x3 convolutions" [0].

Deviations: padded convolutions (output size = input size), normalisation after
each convolution (batch by default), bilinear upsampling and a 1x1 conv
instead of transposed convolutions, and a configurable base width and depth.
contrastive-echo used the same shape (milesial Pytorch-UNet, bilinear=True).

Speed (``benchmarks/unet_vs_monai.py``): the 1x1 conv runs *before* the bilinear
upsampling, at the coarse resolution. Both are linear and each upsampled pixel is
a convex combination of input pixels, so the order does not change the function
(only rounding), but the 1x1 conv sees a quarter of the pixels and the upsampling
half the channels. Activations are kept ``channels_last`` (NHWC): oneDNN's
convolutions and batch norm run much faster in it on a CPU than in NCHW for
the narrow full-resolution stages, and cuDNN prefers it for bf16 on a GPU.

[0] https://arxiv.org/abs/1505.04597
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .blocks import DoubleConv


class UNetEncoder(nn.Module):
    """Contracting path. ``forward(x)`` returns the stage features, finest first.

    Args:
        in_channels: image channels (1 for grayscale echo / MRI).
        base_channels: width of the first stage; each deeper stage doubles it.
        depth: number of downsamplings; there are ``depth + 1`` stages.
        norm: ``batch``, ``instance``, ``group`` or ``none``.

    Shape:
        input ``(B, C, H, W)`` with H and W divisible by ``2**depth``;
        output list of ``depth + 1`` tensors ``(B, out_channels[i], H / 2**i, W / 2**i)``,
        in the ``channels_last`` memory format (same shapes and values; ``.contiguous()`` gives NCHW).
    """

    def __init__(
        self, in_channels: int = 1, base_channels: int = 16, depth: int = 4, norm: str = "batch"
    ) -> None:
        super().__init__()
        if depth < 1:
            raise UserError(f"UNet depth must be at least 1, got {depth}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.out_channels: list[int] = widths
        self.reduction = 2**depth
        self.stages = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.stages.append(DoubleConv(prev, w, norm))
            prev = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            if i == 0:
                # NHWC from here on (a no-op when the weights are channels_last already: see build_unet);
                # the input itself is left alone, a one-channel image is the same in both layouts
                x = x.contiguous(memory_format=torch.channels_last)
            feats.append(x)
        return feats


def upsample2x_bilinear(x: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling by exactly 2 (``align_corners=False``), written as a depthwise transposed conv.

    The same values as ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`` (up to
    rounding): output pixel ``2k`` is ``x[k-1]/4 + 3 x[k]/4`` and ``2k+1`` is ``3 x[k]/4 + x[k+1]/4`` along
    each axis, the edge replicated; that is a stride-2 transposed conv with the separable kernel
    ``[1, 3, 3, 1]/4`` over an edge-replicated input, cropped. On a CPU its backward pass is several times
    faster than that of ``upsample_bilinear2d`` (``benchmarks/unet_vs_monai.py``).

    Shape: ``(B, C, H, W) -> (B, C, 2H, 2W)``.
    """
    c = x.shape[1]
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=x.dtype, device=x.device)
    # one (1, 4, 4) kernel per channel: (C, 1, 4, 4); NHWC like the activations
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 4, 4).contiguous(memory_format=torch.channels_last)
    # the padded (H+2) input gives 2(H+2)+2 rows; rows 3 .. 2H+2 are the upsampled ones, and the
    # transposed conv's ``padding=3`` drops the other three on each side (cheaper than slicing afterwards)
    return F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, stride=2, padding=3, groups=c)


def _eager_on_cpu(x: torch.Tensor) -> bool:
    """Whether :func:`upsample2x_bilinear` pays: measured faster on a CPU only (on a GPU the library's kernel
    is kept), and never while tracing or compiling, where exporters and compilers know ``interpolate`` and
    a kernel built at run time would be an unknown."""
    return x.device.type == "cpu" and not (torch.jit.is_tracing() or torch.compiler.is_compiling())


class UNetDecoder(nn.Module):
    """Expansive path, sized from ``encoder_channels`` (finest first).

    ``forward(features, num_blocks=None)`` runs the first ``num_blocks`` up-steps
    (all by default) and returns the last feature map; local contrastive
    pretraining uses a partial decoder.
    """

    def __init__(self, encoder_channels: list[int], norm: str = "batch") -> None:
        super().__init__()
        chans = list(encoder_channels)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.out_channels: list[int] = []
        prev = chans[-1]
        for skip in reversed(chans[:-1]):
            # 1x1 conv halves the width before upsampling and concatenation
            self.ups.append(nn.Conv2d(prev, skip, 1))
            self.blocks.append(DoubleConv(2 * skip, skip, norm))
            self.out_channels.append(skip)
            prev = skip

    def forward(self, features: list[torch.Tensor], num_blocks: int | None = None) -> torch.Tensor:
        x = features[-1]
        skips = features[-2::-1]
        n = len(self.blocks) if num_blocks is None else num_blocks
        for up, block, skip in list(zip(self.ups, self.blocks, skips, strict=True))[:n]:
            # conv then upsample: the same function as upsample then conv (both linear, bilinear weights
            # sum to one), at a quarter of the 1x1 conv's cost and half the upsampling's
            x = up(x)
            if _eager_on_cpu(x) and tuple(skip.shape[-2:]) == (2 * x.shape[-2], 2 * x.shape[-1]):
                x = upsample2x_bilinear(x)
            else:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x
