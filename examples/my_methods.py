"""An example of a method and a backbone kept outside cissl (a plugin: README, docs/algorithms.md "A method
in your own module"). It shows the mechanism; neither is from the literature, and no result of either is
claimed.

``fixmatch_class_threshold``: FixMatch whose confidence threshold depends on the pseudo-label's class,
lower for classes with fewer labeled images:

    tau_k = tau * (N_k / max_j N_j) ** power

(N_k: labeled images of class k; power 0 is FixMatch). Only :meth:`confidence_mask` changes; the views,
losses, refiners and auxiliary heads are FixMatch's, so every FixMatch key still applies.

``example_cnn`` (``model.name``): three 3x3 convolutions (32, 64, 128 channels) with BatchNorm and ReLU,
max-pooling after the first two, global average pooling: a 128-d embedding.

Run them with ``cissl train --config examples/plugin_setting.yaml [model.name=example_cnn]``, which names
this file in ``plugins``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
from cissl.models import register_backbone
from cissl.schema import option


@dataclass(frozen=True)
class ClassThresholdConfig(FixMatchConfig):
    name: str = option("fixmatch_class_threshold", help="algorithm name")
    power: float = option(0.5, min=0.0, help="tau_k = tau * (N_k / max N) ** power; 0 is FixMatch's tau")


def class_thresholds(tau: float, labeled_counts, power: float) -> torch.Tensor:
    """tau_k = tau * (N_k / max_j N_j) ** power, float32."""
    counts = torch.tensor(labeled_counts, dtype=torch.float64)
    return (tau * (counts / counts.max()) ** power).float()


@register("fixmatch_class_threshold", ClassThresholdConfig,
          summary="example plugin: FixMatch with lower thresholds for classes with fewer labels")
class ClassThresholdFixMatch(FixMatch):
    def __init__(self, config, context):
        super().__init__(config, context)
        self.thresholds = class_thresholds(config.threshold, context.labeled_counts, config.power).to(context.device)

    def confidence_mask(self, confidence, labels):
        """[max p >= tau_k] with k the pseudo-label."""
        return confidence >= self.thresholds[labels]


class ExampleCNN(nn.Module):
    """(N, C, H, W) in [normalised units] -> (N, 128); ``feature_dim`` is what the heads are built on."""

    feature_dim = 128

    def __init__(self, in_channels: int, bn_momentum: float):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=bn_momentum),
                    nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(*block(in_channels, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
                                    *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@register_backbone("example_cnn")
def example_cnn(model_config, in_channels: int) -> ExampleCNN:
    """Example plugin backbone: three 3x3 conv blocks (32, 64, 128 channels), a 128-d embedding.

    cissl calls the builder with the config's model section (here only model.bn_momentum is used) and the
    images' channels."""
    return ExampleCNN(in_channels, model_config.bn_momentum)
