"""ACR (Wei & Gan, CVPR 2023): adaptive consistency regularizer, the code base SeMi's released script forks.

Two linear heads on one embedding: the standard head f and a balanced head g (reported).

- L = CE(f(x), y) + L_u + CE(g(x) + A_tau2, y) + L_u,b, with A_t = log(pi^t + 1e-12) of the labeled
  prior pi (as SeMi's Eq. 10).
- Standard branch: targets argmax p, p = softmax((f(u_w) - A_tau1) / T); mask [max p >= tau] OR
  [max softmax(f(u_w) / T) >= tau]; L_u = masked CE of f on every strong view.
- Balanced branch: targets argmax h, h = softmax((f(u_w) - A_tau12) / T); mask [max h >= tau] OR
  [max softmax(g(u_w) / T) >= tau]; L_u,b = masked CE of g on every strong view.
- Adaptive tau1 (the "adaptive consistency"): after ``est_epoch`` epochs the unlabeled class
  distribution is estimated from the balanced head's confident pseudo-labels,
  u <- m u + (1 - m) n / sum n per step (m = ``ema_u``), and its symmetric KL divergences to the
  consistent (pi), uniform and reversed (pi flipped) distributions are averaged over each epoch;
  at the next epoch's start tau1 = tau_max * softmax(KL_con, KL_uni, KL_rev)[con] (tau_min = 0,
  tau_max = ``tau1``), the formula of ACR's code.

As ACR's code (``Gank0078/ACR`` train.py), including what it does at the edges:
- the per-step class vector n is written with ``n[labels] += mask``, an indexed assignment in which
  rows of the same class overwrite each other: n_k is the mask value of one row predicted k (the
  last, on the CPU), not a count. ``estimate: indicator`` (default) reproduces that on every device;
  ``estimate: counts`` counts confident pseudo-labels per class instead (what the text describes);
- the first update (the start of epoch est_epoch + 1) averages an epoch without estimation: KL
  sums of zero give tau1 = tau_max / 3;
- a step whose n sums to zero changes neither u nor the KL sums; the epoch average divides by all
  of its steps; a tau1 that comes out NaN keeps the previous one.
State (u, the KL sums, tau1) is checkpointed; nothing synchronises the host on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms.base import Algorithm, Batch, StepOutput
from cissl.algorithms.components.consistency import consistency_loss
from cissl.algorithms.components.logit_adjust import class_prior, labeled_loss, logit_adjustment
from cissl.algorithms.components.pseudo_label import class_probabilities, threshold_pseudo_labels
from cissl.algorithms.components.views import forward_views
from cissl.algorithms.registry import register
from cissl.distributed import gather_rows
from cissl.schema import AlgorithmConfig, option


@dataclass(frozen=True)
class AcrConfig(AlgorithmConfig):
    name: str = option("acr", help="algorithm name")
    threshold: float = option(0.95, min=0.0, max=1.0, help="confidence threshold tau")
    temperature: float = option(1.0, min=0.0, min_exclusive=True, help="softmax temperature T")
    tau1: float = option(2.0, min=0.0, help="LA strength of the standard pseudo-labels (tau_max when adaptive)")
    tau12: float = option(2.0, min=0.0, help="LA strength of the balanced branch's pseudo-labels")
    tau2: float = option(2.0, min=0.0, help="LA strength of the balanced head's labeled loss")
    adaptive: bool = option(True, help="adapt tau1 to the estimated unlabeled distribution")
    est_epoch: int = option(5, min=0, help="epochs before the estimation starts (it runs when epoch > est_epoch)")
    ema_u: float = option(0.99, min=0.0, max=1.0, help="momentum of the unlabeled distribution estimate "
                                                       "(ACR's README runs; its script's default is 0.9)")
    estimate: str = option("indicator", choices=("indicator", "counts"),
                           help="per-step class vector: as ACR's code writes it, or per-class counts")


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """0.5 KL(p || q) + 0.5 KL(q || p) (ACR's KLDivLoss(reduction='sum') pair)."""
    return 0.5 * F.kl_div(q.log(), p, reduction="sum") + 0.5 * F.kl_div(p.log(), q, reduction="sum")


def class_vector(labels: torch.Tensor, mask: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor:
    """n: ``counts`` sums the mask per predicted class; ``indicator`` gives each predicted class the
    mask of its last row (ACR's ``n[labels] += mask``, whose duplicate writes keep one row)."""
    mask = mask.to(torch.float32)
    if mode == "counts":
        return torch.zeros(num_classes, device=labels.device).index_add_(0, labels, mask)
    rows = torch.arange(len(labels), device=labels.device)
    last = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device).scatter_reduce_(
        0, labels, rows, reduce="amax")
    return torch.where(last >= 0, mask[last.clamp(min=0)], 0.0)


def adaptive_tau(kl_sums: torch.Tensor, steps: int, tau_max: float) -> torch.Tensor:
    """tau_max * exp(c_con) / (exp(c_con) + exp(c_uni) + exp(c_rev)), c = KL sums / steps of the epoch."""
    return tau_max * torch.softmax(kl_sums / steps, dim=0)[0]


@register("acr", AcrConfig, summary="ACR: dual branch with adaptive logit adjustment (reports the balanced head)")
class Acr(Algorithm):
    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        return ("main", "balanced")

    @property
    def reported_head(self) -> str:
        return "balanced"

    def __init__(self, config: AcrConfig, context):
        super().__init__(config, context)
        device = context.device
        self.prior = class_prior(context.labeled_counts).to(device).double()  # ACR's py_con (float64)
        self.references = torch.stack([self.prior, torch.full_like(self.prior, 1.0 / len(self.prior)),
                                       self.prior.flip(0)])
        self.estimate = torch.full_like(self.prior, 1.0 / len(self.prior))  # u
        self.kl_sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.adjust_labeled = self.adjustment(config.tau2)    # fixed for the run
        self.adjust_balanced = self.adjustment(config.tau12)  # fixed for the run
        self._set_tau1(torch.tensor(float(config.tau1), dtype=torch.float64, device=device))

    def adjustment(self, tau) -> torch.Tensor:
        """A_tau = log(pi^tau + 1e-12) of the labeled prior (tau a number or a 0-d tensor)."""
        return logit_adjustment(self.prior, tau)

    def _set_tau1(self, tau: torch.Tensor) -> None:
        self.tau1 = tau
        self.adjust_standard = self.adjustment(tau)  # changes only at epoch ends

    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        cfg = self.config
        views = forward_views(model, batch)
        loss_x = labeled_loss(views.labeled_logits["main"], batch.y)
        loss_x_bal = labeled_loss(views.labeled_logits["balanced"], batch.y, self.adjust_labeled)
        with torch.no_grad():
            weak = views.weak_logits["main"].detach().float()
            p = torch.softmax((weak - self.adjust_standard) / cfg.temperature, dim=1)
            h = torch.softmax((weak - self.adjust_balanced) / cfg.temperature, dim=1)
            raw_conf = class_probabilities(weak, cfg.temperature).max(1).values
            bal_conf, bal_labels, bal_mask = threshold_pseudo_labels(
                class_probabilities(views.weak_logits["balanced"], cfg.temperature), cfg.threshold)
            confidence, labels, mask = threshold_pseudo_labels(p, cfg.threshold)
            mask = mask | (raw_conf >= cfg.threshold)
            _, labels_h, mask_h = threshold_pseudo_labels(h, cfg.threshold)
            mask_h = mask_h | bal_mask
            if cfg.adaptive and iteration // self.context.epoch_length > cfg.est_epoch:
                self._update_estimate(class_vector(gather_rows(bal_labels), gather_rows(bal_mask),
                                                   self.context.num_classes, cfg.estimate))
        loss_u = consistency_loss([s["main"] for s in views.strong_logits], labels, mask.float())
        loss_u_bal = consistency_loss([s["balanced"] for s in views.strong_logits], labels_h, mask_h.float())
        loss = loss_x + loss_u + loss_x_bal + loss_u_bal
        metrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "loss_x_bal": loss_x_bal.detach(),
                   "loss_u_bal": loss_u_bal.detach(), "mask_rate": mask.float().mean(),
                   "mask_rate_bal": mask_h.float().mean(), "confidence": confidence.mean(), "tau1": self.tau1}
        return StepOutput(loss, metrics, pseudo_labels=labels, mask=mask)

    def _update_estimate(self, vector: torch.Tensor) -> None:
        total = vector.sum()
        seen = total > 0
        normalised = vector.double() / total.clamp(min=1e-12)
        updated = self.config.ema_u * self.estimate + (1 - self.config.ema_u) * normalised
        self.estimate = torch.where(seen, updated, self.estimate)
        kl = torch.stack([symmetric_kl(self.estimate, ref) for ref in self.references])
        self.kl_sums = self.kl_sums + torch.where(seen, kl, torch.zeros_like(kl))

    def on_epoch_end(self, epoch: int) -> None:
        """At the start of epoch e = epoch + 1: tau1 from the KL averages of epoch e - 1 (if e > est_epoch)."""
        if self.config.adaptive and epoch + 1 > self.config.est_epoch:
            tau = adaptive_tau(self.kl_sums, self.context.epoch_length, self.config.tau1)
            self._set_tau1(torch.where(torch.isnan(tau), self.tau1, tau))
        self.kl_sums = torch.zeros_like(self.kl_sums)

    def state_dict(self) -> dict:
        return {"tau1": self.tau1.clone(), "estimate": self.estimate.clone(), "kl_sums": self.kl_sums.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.estimate = state["estimate"].to(self.prior.device)
        self.kl_sums = state["kl_sums"].to(self.prior.device)
        self._set_tau1(state["tau1"].to(self.prior.device))
