"""Supervised baseline on the labeled images only, optionally with the logit-adjusted loss (LA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from cissl.algorithms.base import Algorithm, Batch, StepOutput
from cissl.algorithms.components.logit_adjust import class_prior, logit_adjustment
from cissl.algorithms.registry import register
from cissl.config import AlgorithmConfig, option


@dataclass(frozen=True)
class SupervisedConfig(AlgorithmConfig):
    name: str = option("supervised", help="algorithm name")
    logit_adjust: bool = option(False, help="logit-adjusted loss CE(f + tau log pi, y) (Menon et al.)")
    la_tau: float = option(1.0, min=0.0, help="LA temperature tau")


def labeled_loss(logits, targets, adjustment=None):
    """CE(f(x), y), or the LA loss CE(f(x) + A_tau, y) when an adjustment is given (SeMi Eq. 1 / 10)."""
    return F.cross_entropy(logits if adjustment is None else logits + adjustment, targets)


def make_adjustment(config, context):
    """A_tau from the exact labeled counts when the config asks for logit adjustment, else None."""
    if not config.logit_adjust:
        return None
    return logit_adjustment(class_prior(context.labeled_counts), config.la_tau).to(context.device)


@register("supervised", SupervisedConfig, summary="labeled images only")
@register("supervised_la", SupervisedConfig, preset={"logit_adjust": True},
          summary="labeled images only, logit-adjusted loss")
class Supervised(Algorithm):
    uses_unlabeled = False

    def __init__(self, config, context):
        super().__init__(config, context)
        self.adjustment = make_adjustment(config, context)

    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        logits = model(batch.x).logits["main"]
        loss = labeled_loss(logits, batch.y, self.adjustment)
        return StepOutput(loss, {"loss_x": loss.detach()})
