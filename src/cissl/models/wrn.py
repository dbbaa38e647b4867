"""Wide ResNet WRN-d-k as used by FixMatch-family CISSL code (spec section 3.1).

Quirks of that lineage, kept so parameter counts and behaviour match the published numbers:
- pre-activation basic blocks, BN momentum 0.001, LeakyReLU(0.1), no dropout;
- first block of group 1 ("activate before residual"): the input is replaced by BN+LeakyReLU(input),
  which feeds both the conv path and the 1x1 shortcut;
- first block of groups 2 and 3: the block's own BN+LeakyReLU of the input is computed and then
  discarded in the reference code (conv path and shortcut take the raw input). Its output never
  reaches the result, so it is not computed here; its BN parameters exist (and are counted) but
  get no gradient, exactly as in the reference.
- other blocks: conv path takes the activated input, the shortcut the raw input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cissl.models.init import kaiming_conv_unit_bn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, activate_before_residual: bool,
                 slope: float, bn_momentum: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.act = nn.LeakyReLU(slope)
        self.equal_in_out = in_planes == out_planes
        self.activate_before_residual = activate_before_residual
        self.shortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.equal_in_out:
            out = self.conv1(self.act(self.bn1(x)))
            shortcut = x
        else:
            if self.activate_before_residual:
                x = self.act(self.bn1(x))
            out = self.conv1(x)
            shortcut = self.shortcut(x)
        out = self.conv2(self.act(self.bn2(out)))
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-depth-widen returning the pooled embedding e (N, 64 * widen); heads live outside."""

    def __init__(self, in_channels: int = 3, depth: int = 28, widen: int = 2, leaky_slope: float = 0.1,
                 bn_momentum: float = 0.001):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for g, stride in enumerate((1, 2, 2)):
            blocks = [BasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                 stride if i == 0 else 1, activate_before_residual=(g == 0 and i == 0),
                                 slope=leaky_slope, bn_momentum=bn_momentum) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum)
        self.act = nn.LeakyReLU(leaky_slope)
        self.feature_dim = widths[3]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        kaiming_conv_unit_bn(self, "leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.act(self.bn(out))
        return out.mean(dim=(2, 3))
