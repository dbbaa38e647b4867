"""An example of a method kept outside cissl (a plugin: README, docs/algorithms.md "A method in your own
module"). It shows the mechanism; it is not a method of the literature, and no result of it is claimed.

``fixmatch_class_threshold``: FixMatch whose confidence threshold depends on the pseudo-label's class,
lower for classes with fewer labeled images:

    tau_k = tau * (N_k / max_j N_j) ** power

(N_k: labeled images of class k; power 0 is FixMatch). Only :meth:`confidence_mask` changes; the views,
losses, refiners and auxiliary heads are FixMatch's, so every FixMatch key still applies.

Run it with ``cissl train --config examples/plugin_setting.yaml``, which names this file in ``plugins``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
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
