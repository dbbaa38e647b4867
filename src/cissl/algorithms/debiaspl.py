"""DebiasPL (Wang et al., CVPR 2022, "Debiased Learning from Naturally Imbalanced Pseudo-Labels") on FixMatch.

The model's own class bias is estimated from its weak-view predictions and removed from the
pseudo-labels, and the consistency loss is offset by the same amount (the paper's "adaptive marginal
loss"); lambda = ``debias_strength``, m = ``momentum``:

- p_hat <- m * p_hat + (1 - m) * mean_i softmax(f(u_w,i)), every step, from 1/K (the running
  class-frequency estimate; the plain softmax, without T);
- pseudo-label distribution softmax((f(u_w) - lambda * log p_hat) / T) (debiasing), thresholded as in
  FixMatch;
- L_u = masked CE(f(u_s) + lambda * log p_hat, argmax) (the marginal loss's logit offset).

As USB's ``imb_algorithms/debiaspl`` (parity: ``tests/test_debiaspl.py``, fixture from USB 0.3.2),
except that USB's loss takes the p_hat of before the step's update (its hook sets it before
``compute_prob`` updates it) while the pseudo-labels use the updated one; here, as in the authors'
code, one p_hat (the updated one) serves both, a (1 - m) share apart. USB also multiplies the old p_hat
by the model's EMA momentum instead of m (equal at the default 0.999). p_hat is checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.components.consistency import consistency_loss
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
from cissl.distributed import gather_rows
from cissl.schema import option


@dataclass(frozen=True)
class DebiasPLConfig(FixMatchConfig):
    name: str = option("fixmatch_debiaspl", help="algorithm name")
    debias_strength: float = option(0.4, min=0.0, help="lambda: strength of the debiasing and of the loss's "
                                                       "logit offset (USB's debiaspl_tau)")
    momentum: float = option(0.999, min=0.0, max=1.0, help="momentum m of the class-frequency estimate p_hat")


@torch.no_grad()
def update_frequency_estimate(p_hat: torch.Tensor, weak_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """m * p_hat + (1 - m) * mean_i softmax(f(u_w,i)) (float32), i over the global batch under DDP."""
    probs = torch.softmax(gather_rows(weak_logits.detach().float()), dim=1)
    return momentum * p_hat + (1 - momentum) * probs.mean(dim=0)


@register("fixmatch_debiaspl", DebiasPLConfig, summary="FixMatch w/ DebiasPL (debiased pseudo-labels, marginal loss)")
class DebiasPL(FixMatch):
    def __init__(self, config: DebiasPLConfig, context):
        super().__init__(config, context)
        self.p_hat = torch.full((context.num_classes,), 1.0 / context.num_classes, device=context.device)

    def offset(self) -> torch.Tensor:
        """lambda * log p_hat."""
        return self.config.debias_strength * torch.log(self.p_hat)

    @torch.no_grad()
    def weak_probabilities(self, weak_logits):
        self.p_hat = update_frequency_estimate(self.p_hat, weak_logits, self.config.momentum)
        return torch.softmax((weak_logits.detach().float() - self.offset()) / self.config.temperature, dim=1)

    def unlabeled_term(self, strong_logits, pseudo):
        offset = self.offset()
        return consistency_loss([logits + offset for logits in strong_logits], pseudo.labels, pseudo.mask.float())

    def state_dict(self) -> dict:
        return {"parts": super().state_dict(), "p_hat": self.p_hat.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state["parts"])
        self.p_hat = state["p_hat"].to(self.p_hat.device)
