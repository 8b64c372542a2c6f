"""ResNet-50 (He et al., CVPR 2016) as a segmentation encoder, optionally dilated.

"For each residual function F, we use a stack of 3 layers instead of 2. The
three layers are 1x1, 3x3, and 1x1 convolutions, where the 1x1 layers are
responsible for reducing and then increasing (restoring) dimensions, leaving the
3x3 layer a bottleneck with smaller input/output dimensions" [0].

For dense prediction DeepLabV3 removes the last downsamplings and dilates the
convolutions after them instead: "we apply atrous convolution with rates
determined by the desired output stride value" [1], so layer3 and layer4 keep
1/8 of the input resolution (output stride 8) while their receptive fields grow
as if they had been strided.

The module tree and its parameter names are those of torchvision's ``resnet50``
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...) without
``avgpool`` and ``fc``, so a torchvision backbone state_dict loads as it is.
Like torchvision (ResNet "v1.5"), the stride of a downsampling block sits on
its 3x3 convolution, not on the first 1x1 as in [0]; the first block of a
dilated stage keeps the previous stage's dilation, as torchvision does.

[0] https://arxiv.org/abs/1512.03385
[1] DeepLabV3, Chen et al. 2017, https://arxiv.org/abs/1706.05587
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

#: ResNet-50: bottleneck blocks per stage ("3, 4, 6, 3" in Table 1 of [0]).
RESNET50_LAYERS = (3, 4, 6, 3)

#: Which of layer2, layer3, layer4 trade their stride 2 for dilation, per output stride.
DILATE_FOR_OUTPUT_STRIDE = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), plus the shortcut.

    Shape: ``(B, inplanes, H, W)`` -> ``(B, 4 * planes, H / stride, W / stride)``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # registration order = torchvision's, so state_dict keys come out in the same order
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-50 stages as an encoder. ``forward(x)`` returns the stage features, finest first.

    Args:
        in_channels: image channels (1 for grayscale echo / MRI, 3 for RGB).
        output_stride: 8 (DeepLabV3 and torchvision's ``deeplabv3_resnet50``),
            16, or 32 (the plain classification network).
        layers: bottleneck blocks per stage; (3, 4, 6, 3) is ResNet-50.

    Attributes:
        out_channels: channels of each returned feature, ``[64, 256, 512, 1024, 2048]``.
        reductions: downsampling factor of each returned feature, e.g. ``[2, 4, 8, 8, 8]``.
        reduction: the deepest one, equal to ``output_stride``.

    Shape:
        input ``(B, C, H, W)``, any H and W (each strided step rounds up);
        output ``[stem, layer1, layer2, layer3, layer4]`` with stem the ReLU output
        before max-pooling ``(B, 64, ~H/2, ~W/2)`` and layer4 ``(B, 2048, ~H/os, ~W/os)``.
    """

    def __init__(
        self, in_channels: int = 3, output_stride: int = 8, layers: tuple[int, ...] = RESNET50_LAYERS
    ) -> None:
        super().__init__()
        if output_stride not in DILATE_FOR_OUTPUT_STRIDE:
            raise UserError(
                f"ResNet output_stride must be one of {sorted(DILATE_FOR_OUTPUT_STRIDE)}, got {output_stride!r}"
            )
        if in_channels < 1:
            raise UserError(f"ResNet in_channels must be at least 1, got {in_channels}")
        self.in_channels = in_channels
        self.output_stride = output_stride
        self._inplanes = 64
        self._dilation = 1
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = DILATE_FOR_OUTPUT_STRIDE[output_stride]
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=dilate[2])
        self.out_channels: list[int] = [64, 64 * 4, 128 * 4, 256 * 4, 512 * 4]
        self.reductions: list[int] = [2, 4]
        for d in dilate:
            self.reductions.append(self.reductions[-1] * (1 if d else 2))
        self.reduction = self.reductions[-1]
        self.reset_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            # keep the resolution; dilate the following 3x3 convolutions by the stride given up
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        blocks_ = [Bottleneck(self._inplanes, planes, stride, previous_dilation, downsample)]
        self._inplanes = planes * Bottleneck.expansion
        blocks_ += [Bottleneck(self._inplanes, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def reset_parameters(self) -> None:
        """He initialisation (fan-out) for convolutions, BatchNorm at identity; torchvision's scheme."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]
