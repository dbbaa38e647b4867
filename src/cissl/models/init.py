"""The initialisation both backbones share (as their reference code: torchvision's and FixMatch's)."""

from __future__ import annotations

import torch.nn as nn


def kaiming_conv_unit_bn(module: nn.Module, nonlinearity: str) -> None:
    """Kaiming-normal (fan_out) weights of every convolution, weight 1 and bias 0 of every batch norm,
    in the order of ``module.modules()`` (the order fixes the random draws)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
