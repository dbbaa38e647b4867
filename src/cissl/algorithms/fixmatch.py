"""FixMatch (Sohn et al., NeurIPS 2020), optionally with the logit-adjusted labeled loss (FixMatch + LA).

L = L_s + lambda_u * L_u, with L_u = (1 / (V * B_u)) sum_v sum_i [max p_i >= tau] CE(f(u_s,v,i), argmax p_i)
and p_i = softmax(f(u_w,i) / T) without gradient. ``V`` strong views per unlabeled image (1 in the
original method, 2 in SeMi's layout); both layouts run on the shared engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.base import Algorithm, Batch, StepOutput, forward_views, masked_view_loss
from cissl.algorithms.components.pseudo_label import threshold_pseudo_labels
from cissl.algorithms.registry import register
from cissl.algorithms.supervised import labeled_loss, make_adjustment
from cissl.config import AlgorithmConfig, option


@dataclass(frozen=True)
class FixMatchConfig(AlgorithmConfig):
    name: str = option("fixmatch", help="algorithm name")
    threshold: float = option(0.95, min=0.0, max=1.0, help="confidence threshold tau")
    temperature: float = option(1.0, min=0.0, min_exclusive=True, help="softmax temperature T of p")
    unlabeled_weight: float = option(1.0, min=0.0, help="lambda_u")
    logit_adjust: bool = option(False, help="logit-adjusted labeled loss (FixMatch + LA)")
    la_tau: float = option(1.0, min=0.0, help="LA temperature tau")


@register("fixmatch", FixMatchConfig, summary="FixMatch")
@register("fixmatch_la", FixMatchConfig, preset={"logit_adjust": True},
          summary="FixMatch with the logit-adjusted labeled loss")
class FixMatch(Algorithm):
    def __init__(self, config, context):
        super().__init__(config, context)
        self.adjustment = make_adjustment(config, context)

    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        views = forward_views(model, batch)
        loss_x = labeled_loss(views.labeled_logits["main"], batch.y, self.adjustment)
        with torch.no_grad():
            probs = torch.softmax(views.weak_logits["main"].detach().float() / self.config.temperature, dim=1)
            confidence, pseudo, mask = threshold_pseudo_labels(probs, self.config.threshold)
        loss_u = masked_view_loss([s["main"] for s in views.strong_logits], pseudo, mask.float())
        loss = loss_x + self.config.unlabeled_weight * loss_u
        metrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.float().mean(),
                   "confidence": confidence.mean()}
        return StepOutput(loss, metrics, pseudo_labels=pseudo, mask=mask)
