"""ADSH (Guo & Li, ICML 2022, "Class-Imbalanced Semi-Supervised Learning with Adaptive Thresholding") on FixMatch.

Per-class confidence thresholds, re-fitted after every epoch so that each class passes the same share
of its pool predictions as the majority class (the class with the most labeled images) passes at
tau_1 (``threshold``):

- the EMA model predicts the whole unlabeled pool; C_k = the confidences of the images predicted as
  class k, in descending order; rho = the share of the majority class's list at or above tau_1;
- each class's threshold is the confidence at position rho * |C_k| of its list; a class never
  predicted keeps its threshold;
- the step's mask is [max p >= t_{argmax p}] instead of FixMatch's single threshold.

``rule`` chooses the arithmetic of the re-fit:

- ``usb`` (default; USB 0.3.2 ``imb_algorithms/adsh``, parity in ``tests/test_adsh.py``): scores
  s_k with t_k = exp(-s_k), all starting at s_k = tau_1 (a first-epoch threshold exp(-tau_1), 0.39 at
  0.95); rho = (m - 1) / |C_maj| with m >= 1 the count at or above tau_1, and rho = 1 when no
  majority prediction reaches tau_1; s_k = -log C_k[floor(rho |C_k|) - 1], where index -1 is the
  least confident entry (as USB's Python indexing does); every class is re-fitted;
- ``authors`` (the ADSH authors' ``update_s``): thresholds t_k starting at tau_1; rho = m / |C_maj|
  (1 when m = 0); t_k = min(tau_1, C_k[max(0, round(rho |C_k|) - 1)]) (round half to even) for every
  class but the majority one, which keeps tau_1. The authors re-fit from the third epoch on, with the
  training network on weakly augmented images; here, as USB, from the first epoch's end with the EMA
  model on the images as they are.

The thresholds are checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
from cissl.schema import option


@dataclass(frozen=True)
class AdshConfig(FixMatchConfig):
    name: str = option("fixmatch_adsh", help="algorithm name")
    rule: str = option("usb", choices=("usb", "authors"), help="the re-fit's arithmetic: USB's or the ADSH authors'")


def sorted_confidences(probs: torch.Tensor) -> list[torch.Tensor]:
    """C_k: the confidences of the pool images predicted as class k, in descending order (float64)."""
    confidence, predicted = probs.double().max(dim=1)
    return [torch.sort(confidence[predicted == k], descending=True).values for k in range(probs.shape[1])]


def usb_scores(lists: list[torch.Tensor], scores: torch.Tensor, tau: float, majority: int) -> torch.Tensor:
    """USB's re-fit of the scores s (thresholds exp(-s)); see the module docstring."""
    head = lists[majority]
    above = int((head >= tau).sum())  # the list is sorted: these are its first entries
    rho = (above - 1) / len(head) if above else 1.0
    updated = scores.clone()
    for k, values in enumerate(lists):
        if len(values):
            updated[k] = -math.log(float(values[int(len(values) * rho) - 1]))
    return updated


def authors_thresholds(lists: list[torch.Tensor], thresholds: torch.Tensor, tau: float, majority: int) -> torch.Tensor:
    """The ADSH authors' re-fit of the thresholds; see the module docstring."""
    head = lists[majority]
    above = int((head >= tau).sum())
    rho = above / len(head) if above else 1.0
    updated = thresholds.clone()
    for k, values in enumerate(lists):
        if k != majority and len(values):
            updated[k] = min(tau, float(values[max(0, round(len(values) * rho - 1))]))
    return updated


@register("fixmatch_adsh", AdshConfig, summary="FixMatch w/ ADSH (per-class thresholds re-fitted every epoch)")
class Adsh(FixMatch):
    @classmethod
    def pool_each_epoch(cls, config) -> bool:
        return True

    def __init__(self, config: AdshConfig, context):
        super().__init__(config, context)
        self.majority = max(range(context.num_classes), key=lambda k: (context.labeled_counts[k], -k))
        start = config.threshold if config.rule == "authors" else math.exp(-config.threshold)
        self.thresholds = torch.full((context.num_classes,), start, dtype=torch.float64)
        self._device_thresholds()

    def _device_thresholds(self) -> None:
        self.class_thresholds = self.thresholds.float().to(self.context.device)

    def confidence_mask(self, confidence, labels):
        return confidence >= self.class_thresholds[labels]

    @torch.no_grad()
    def on_epoch_pool(self, epoch, pool) -> None:
        lists = sorted_confidences(torch.softmax(pool.logits["main"].double() / self.config.temperature, dim=1))
        tau = self.config.threshold
        if self.config.rule == "authors":
            self.thresholds = authors_thresholds(lists, self.thresholds, tau, self.majority)
        else:
            self.thresholds = torch.exp(-usb_scores(lists, -torch.log(self.thresholds), tau, self.majority))
        self._device_thresholds()

    def state_dict(self) -> dict:
        return {"parts": super().state_dict(), "thresholds": self.thresholds.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state["parts"])
        self.thresholds = state["thresholds"].clone().to(torch.float64)
        self._device_thresholds()
