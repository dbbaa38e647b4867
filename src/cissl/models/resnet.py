"""Bottleneck ResNet-50 for 32 / 64 px images, as the CISSL papers adapt it (spec section 3.3).

He et al.'s ResNet-50 (stages of 3, 4, 6, 3 bottleneck blocks, widths 64-128-256-512 x 4, the
projection shortcut where shape changes, stride on the 3x3 conv as in torchvision) with the
CIFAR-style stem of CoSSL / SeMi's code: one 3x3 convolution, stride 1, no max-pool, so a 32-px image
reaches the last stage at 4 x 4 and a 64-px one at 8 x 8. ReLU, BatchNorm with PyTorch's momentum
(``model.bn_momentum``, 0.1 in the ImageNet-127 configs), global average pooling to the 2048-d
embedding; the heads live in :class:`~cissl.models.classifier.Classifier`. The released model's
rotation head is left out (unused).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cissl.models.init import kaiming_conv_unit_bn

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride of the first)
EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, width: int, stride: int, bn_momentum: float):
        super().__init__()
        out = width * EXPANSION
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out, momentum=bn_momentum))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet50(nn.Module):
    """(N, C, H, W) normalised images -> (N, 2048) embeddings."""

    def __init__(self, in_channels: int = 3, bn_momentum: float = 0.1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(64, momentum=bn_momentum), nn.ReLU(inplace=True))
        blocks, planes = [], 64
        for width, count, stride in STAGES:
            for i in range(count):
                blocks.append(Bottleneck(planes, width, stride if i == 0 else 1, bn_momentum))
                planes = width * EXPANSION
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = planes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation."""
        kaiming_conv_unit_bn(self, "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)
