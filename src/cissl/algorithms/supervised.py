"""Supervised baseline on the labeled images only, optionally with the logit-adjusted loss (LA)."""

from __future__ import annotations

from dataclasses import dataclass

from cissl.algorithms.base import Algorithm, Batch, StepOutput, ViewSpec
from cissl.algorithms.components.logit_adjust import labeled_adjustment, labeled_loss
from cissl.algorithms.registry import register
from cissl.schema import AlgorithmConfig, option


@dataclass(frozen=True)
class SupervisedConfig(AlgorithmConfig):
    name: str = option("supervised", help="algorithm name")
    logit_adjust: bool = option(False, help="logit-adjusted loss CE(f + tau log pi, y) (Menon et al.)")
    la_tau: float = option(1.0, min=0.0, help="LA temperature tau")


@register("supervised", SupervisedConfig, summary="labeled images only")
@register("supervised_la", SupervisedConfig, preset={"logit_adjust": True},
          summary="labeled images only, logit-adjusted loss")
class Supervised(Algorithm):
    @classmethod
    def views(cls, config) -> ViewSpec:
        return ViewSpec(unlabeled=False)

    def __init__(self, config, context):
        super().__init__(config, context)
        self.adjustment = labeled_adjustment(config.logit_adjust, config.la_tau, context)

    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        logits = model(batch.x).logits["main"]
        loss = labeled_loss(logits, batch.y, self.adjustment)
        return StepOutput(loss, {"loss_x": loss.detach()})
