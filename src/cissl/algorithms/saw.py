"""SAW (Lai et al., ICML 2022, "Smoothed Adaptive Weighting for Imbalanced Semi-Supervised Learning") on FixMatch.

Per-class weights on both losses, from effective numbers of samples (Cui et al., CVPR 2019):
w(n)_k = (1 - beta) / (1 - beta^{n_k}), beta = (N - 1) / N with N the mean of the counts n, scaled so
that the weights sum to K.

- L_s = mean_i w(N^lab)_{y_i} * CE(f(x_i), y_i) (the LA loss with ``logit_adjust``), the labeled
  counts fixed for the run;
- L_u = FixMatch's masked consistency loss with each image's mask times w(n^u)_{pseudo-label}; n^u
  starts uniform (all weights 1) and after every epoch becomes the counts of the EMA model's argmax
  predictions on the whole unlabeled pool (each at least 1).

This is USB's ``imb_algorithms/saw`` arithmetic (parity: ``tests/test_saw.py``, fixture from USB
0.3.2), which fixes the effective-number N at the mean count (a hyperparameter in SAW's paper). Zero
labeled counts (possible with one's own data) count as 1, as the unlabeled ones do. The unlabeled
weights are checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms.components.class_weights import inverse_effective_number
from cissl.algorithms.components.consistency import consistency_loss
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
from cissl.schema import option


@dataclass(frozen=True)
class SawConfig(FixMatchConfig):
    name: str = option("fixmatch_saw", help="algorithm name")


def effective_number_weights(counts) -> torch.Tensor:
    """w_k = (1 - beta) / (1 - beta^{n_k}), beta = (N - 1) / N, N = mean n, normalised to sum K (float32;
    computed in float64, counts below 1 taken as 1)."""
    counts = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1.0)
    mean = float(counts.mean())
    weights = inverse_effective_number(counts, (mean - 1) / mean)  # counts >= 1: never 0 / 0 (beta = 0: all ones)
    return (weights / weights.sum() * len(counts)).float()


@register("fixmatch_saw", SawConfig, summary="FixMatch w/ SAW (effective-number class weights on both losses)")
class Saw(FixMatch):
    @classmethod
    def pool_each_epoch(cls, config) -> bool:
        return True

    def __init__(self, config: SawConfig, context):
        super().__init__(config, context)
        self.labeled_weights = effective_number_weights(context.labeled_counts).to(context.device)
        self.unlabeled_weights = torch.ones(context.num_classes, device=context.device)

    def labeled_term(self, logits, labels):
        adjusted = logits if self.adjustment is None else logits + self.adjustment
        return (F.cross_entropy(adjusted, labels, reduction="none") * self.labeled_weights[labels]).mean()

    def unlabeled_term(self, strong_logits, pseudo):
        weights = pseudo.mask.float() * self.unlabeled_weights[pseudo.labels]
        return consistency_loss(strong_logits, pseudo.labels, weights)

    def on_epoch_pool(self, epoch, pool) -> None:
        counts = torch.bincount(pool.logits["main"].argmax(dim=1), minlength=self.context.num_classes)
        self.unlabeled_weights = effective_number_weights(counts).to(self.unlabeled_weights.device)

    def state_dict(self) -> dict:
        return {"parts": super().state_dict(), "unlabeled_weights": self.unlabeled_weights.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state["parts"])
        self.unlabeled_weights = state["unlabeled_weights"].to(self.unlabeled_weights.device)
