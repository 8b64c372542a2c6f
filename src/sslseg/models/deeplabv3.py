"""DeepLabV3 (Chen et al. 2017) on a dilated ResNet-50, in torchvision's parameter naming.

"ASPP ... consists of (a) one 1x1 convolution and three 3x3 convolutions with
rates = (6, 12, 18) when output stride = 16 (all with 256 filters and batch
normalization), and (b) the image-level features ... The resulting features
from all the branches are then concatenated and pass through another 1x1
convolution (also with 256 filters and batch normalization) before the final
1x1 convolution which generates the final logits" [0]; "the rates are doubled
when output stride = 8" [0].

EchoNet-Dynamic and contrastive-echo segment the left ventricle with
torchvision's ``deeplabv3_resnet50`` (output stride 8, ASPP rates 12, 24, 36,
then a 3x3 conv + BN + ReLU and the 1x1 classifier) [1, 2]. This module builds
the same network without torchvision and with the same module tree, so
``model.state_dict()`` has exactly torchvision's keys and shapes when
``in_channels=3`` (``backbone.conv1.weight``, ``backbone.layer1.0.conv1.weight``,
``classifier.0.convs.0.0.weight``, ..., ``classifier.4.weight``) and their
published weights load with ``strict=True``.

How that fits the ``SegmentationModel(encoder, decoder, head)`` contract: the
registered submodules are ``backbone`` and ``classifier`` (torchvision's names,
so the state_dict keys need no remapping), and ``encoder``, ``decoder`` and
``head`` are read-only *views* on them, never registered a second time:

- ``encoder`` is ``backbone`` (a :class:`ResNetEncoder`; SimCLR and BYOL
  pretrain it, as contrastive-echo did);
- ``decoder`` is ``classifier[0:4]`` (ASPP, 3x3 conv, BN, ReLU) applied to the
  deepest encoder feature;
- ``head`` is ``classifier[4]``, the 1x1 convolution to the K logits.

``part_of(key)`` tells which part a state_dict key belongs to, so transfer
reports and filters by part without knowing the naming.

Deviations: ``output_stride=16`` is an option (torchvision has only 8); its ASPP
rates default to the paper's (6, 12, 18). No auxiliary FCN head (torchvision's
``aux_loss=False``, which EchoNet-Dynamic used). Like torchvision, the ASPP
pooling branch needs more than one image per batch in training mode.

[0] https://arxiv.org/abs/1706.05587
[1] EchoNet-Dynamic, Ouyang et al., Nature 2020, echonet/utils/segmentation.py
[2] contrastive-echo, Saeed et al., MIUA 2022, https://github.com/BioMedIA-MBZUAI/contrastive-echo
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .resnet import ResNetEncoder
from .segmentation import SegmentationModel

#: ASPP rates per output stride: torchvision's (12, 24, 36) at 8, the paper's (6, 12, 18) at 16.
ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}

#: Index of the 1x1 logits convolution inside ``classifier`` (torchvision's ``DeepLabHead``).
HEAD_INDEX = 4


class ASPPConv(nn.Sequential):
    """3x3 atrous convolution -> BN -> ReLU (one ASPP branch)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool -> 1x1 conv -> BN -> ReLU -> upsample back.

    "we apply global average pooling on the last feature map of the model, feed
    the resulting image-level features to a 1x1 convolution with 256 filters
    (and batch normalization), and then bilinearly upsample the feature to the
    desired spatial dimension" [0].
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        # (B, C, 1, 1) -> (B, C, H, W): the same vector at every position
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling; concat; 1x1 project.

    Shape: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())
        ]
        branches += [ASPPConv(in_channels, out_channels, int(rate)) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 5 * 256, H, W) -> (B, 256, H, W)
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """torchvision's ``DeepLabHead``: ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 conv to K logits.

    Items 0-3 are the decoder, item 4 (:data:`HEAD_INDEX`) the segmentation head.
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36)) -> None:
        super().__init__(
            ASPP(in_channels, atrous_rates),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, num_classes, 1),
        )


class DeepLabDecoder(nn.Module):
    """The decoder part of a :class:`DeepLabHead`: items 0-3 applied to the deepest feature.

    A view: it holds the classifier's own modules, so it adds no parameters and
    its training mode follows theirs.

    Shape: ``features[-1]`` ``(B, 2048, h, w)`` -> ``(B, 256, h, w)``.
    """

    def __init__(self, classifier: DeepLabHead) -> None:
        super().__init__()
        self.layers = nn.Sequential(*list(classifier)[:HEAD_INDEX])
        self.out_channels: list[int] = [classifier[HEAD_INDEX].in_channels]
        # the flag only, not .train(): that would reset the shared modules' own modes
        self.training = classifier.training

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(features[-1])


class DeepLabV3(SegmentationModel):
    """DeepLabV3 whose state_dict keys are torchvision's; ``encoder``/``decoder``/``head`` are views.

    Args:
        backbone: the :class:`ResNetEncoder` (registered as ``backbone``).
        classifier: the :class:`DeepLabHead` (registered as ``classifier``).

    Shape: ``(B, C, H, W)`` -> logits ``(B, K, H, W)``, any H and W: the logits
    at 1/output_stride are upsampled bilinearly to the input size, exactly as
    torchvision does (no padding, unlike the UNet).
    """

    def __init__(self, backbone: ResNetEncoder, classifier: DeepLabHead) -> None:
        # not SegmentationModel.__init__: it would register encoder/decoder/head a second time
        nn.Module.__init__(self)
        self.backbone = backbone
        self.classifier = classifier

    @property
    def encoder(self) -> ResNetEncoder:  # type: ignore[override]
        return self.backbone

    @property
    def decoder(self) -> DeepLabDecoder:  # type: ignore[override]
        # built on each access (cheap) so that it never goes stale or gets registered
        return DeepLabDecoder(self.classifier)

    @property
    def head(self) -> nn.Conv2d:  # type: ignore[override]
        return self.classifier[HEAD_INDEX]

    def part_of(self, key: str) -> str | None:
        """``encoder``, ``decoder`` or ``head`` for a state_dict key in torchvision naming; None otherwise."""
        if key.startswith("backbone."):
            return "encoder"
        if key.startswith(f"classifier.{HEAD_INDEX}."):
            return "head"
        if key.startswith("classifier."):
            return "decoder"
        return None

    def forward(self, x: torch.Tensor, perturb=None) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.encoder(x)
        if perturb is not None:  # see SegmentationModel.forward
            features = perturb(features)
        logits = self.head(self.decoder(features))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_deeplabv3(
    in_channels: int = 1,
    num_classes: int = 2,
    output_stride: int = 8,
    atrous_rates: Sequence[int] | None = None,
) -> DeepLabV3:
    """DeepLabV3-ResNet50; with ``in_channels=3`` its state_dict matches torchvision's ``deeplabv3_resnet50``.

    Args:
        in_channels: image channels; 1 for grayscale (3-channel weights load
            with the first convolution summed over its input channels, see
            :func:`sslseg.finetune.transfer.match_input_channels`).
        num_classes: K output logits (torchvision's ``num_classes``).
        output_stride: 8 (torchvision, EchoNet-Dynamic) or 16 (cheaper).
        atrous_rates: ASPP rates; default (12, 24, 36) at stride 8, (6, 12, 18) at 16.
    """
    if num_classes < 1:
        raise UserError(f"DeepLabV3 num_classes must be at least 1, got {num_classes}")
    backbone = ResNetEncoder(in_channels, output_stride)
    rates = tuple(atrous_rates) if atrous_rates is not None else ASPP_RATES[output_stride]
    if len(rates) != 3 or any(int(r) < 1 for r in rates):
        raise UserError(f"DeepLabV3 atrous_rates must be three positive integers, got {list(rates)}")
    classifier = DeepLabHead(backbone.out_channels[-1], num_classes, rates)
    return DeepLabV3(backbone, classifier)
