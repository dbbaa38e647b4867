"""Backbones and the classifier wrapper; :func:`build_model` makes one from a config.

``BACKBONES`` maps ``model.name`` to a builder ``(model_config, in_channels) -> backbone``; a backbone
returns the pooled embedding (N, D) and has a ``feature_dim`` attribute. Heads live in
:class:`Classifier`. :func:`register_backbone` adds one (a plugin's: docs/algorithms.md).
"""

from __future__ import annotations

from typing import Callable

import torch

from cissl.models.classifier import Classifier, ModelOutput
from cissl.models.resnet import ResNet50
from cissl.models.wrn import WideResNet
from cissl.schema import add_entry

__all__ = ["BACKBONES", "Classifier", "ModelOutput", "ResNet50", "WideResNet", "build_model", "register_backbone"]

HEAD_STREAM = 7919  # extra heads are initialised from their own seed, after the shared parameters


def _wide_resnet(model_config, in_channels: int) -> WideResNet:
    """Wide ResNet (model.depth, widen, leaky_slope, bn_momentum): WRN-28-2 in the CIFAR / STL-10 settings."""
    return WideResNet(in_channels, model_config.depth, model_config.widen, model_config.leaky_slope,
                      model_config.bn_momentum)


def _resnet50(model_config, in_channels: int) -> ResNet50:
    """ResNet-50 with the CIFAR stem (model.bn_momentum): Small-ImageNet-127."""
    return ResNet50(in_channels, model_config.bn_momentum)


BACKBONES: dict[str, Callable[..., torch.nn.Module]] = {"wrn": _wide_resnet, "resnet50": _resnet50}


def register_backbone(name: str):
    """Decorator: ``@register_backbone("my_net")`` on a builder ``(model_config, in_channels) -> backbone``
    makes ``model.name: my_net`` build it (the model section's other keys reach the builder as they are)."""

    def decorate(builder):
        add_entry(BACKBONES, "backbone", name, builder)
        return builder

    return decorate


def build_model(model_config, in_channels: int, num_classes: int, mean, std, seed: int,
                head_names=("main",)) -> Classifier:
    """Build backbone + heads deterministically from ``seed``.

    The backbone and the ``main`` head are drawn first from ``seed``; every further head from its
    own seed, so the shared parameters are identical whatever heads an algorithm adds (the
    FixMatch / SeMi identity test relies on this). The global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = BACKBONES[model_config.name](model_config, in_channels)
        model = Classifier(backbone, num_classes, mean, std, head_names=("main",))
        for i, name in enumerate(n for n in head_names if n != "main"):
            torch.manual_seed(seed * 1_000_003 + HEAD_STREAM + i)
            model.add_head(name)
    return model
