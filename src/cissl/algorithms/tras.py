"""TRAS (Wei et al., Machine Learning 2022, "Transfer and Share: Semi-Supervised Learning from
Long-Tailed Data") on FixMatch: a teacher and a student classifier sharing one network.

With the labeled log-prior a_k = log(pi_k^tau + 1e-12) (``la_tau``) and per-class factors
t_k = A * softmax(-a)_k + B (``transfer_a``, ``transfer_b``; larger for rarer classes):

- teacher ``main``: FixMatch with CE on labeled images and pseudo-labels from the logit-adjusted weak
  prediction softmax((f(u_w) - a) / T), thresholded at tau;
- student ``tras`` (reported), after ``warmup_epochs`` epochs: the LA loss CE(g(x) + a, y) on labeled
  images, and on every strong view the transfer loss -sum_k q_k log softmax(g(u_s))_k, masked where the
  student's own weak prediction is confident (max softmax(g(u_w)) >= tau), with the teacher's strong-view
  logits as target, adjusted by the factor of the student's pseudo-label y_s:
  q = softmax((f(u_s) - t_{y_s} * a) / 2) (no gradient through q), averaged over V * B_u rows.
  Its gradients reach the shared network ("share").

The arithmetic of the TRAS authors' ``train.py`` (parity: ``tests/test_tras.py``; the fixture executes
their step). Their warm-up is ``epoch > 10`` over 0-based epochs: 11 epochs. They forward the labeled,
weak and strong images separately (BN statistics per batch); here one joint forward, as FixMatch. USB
0.3.2's TRAS departs from the authors: its prior is N_min / N_k (log-prior of the opposite sign), the
student's target comes from its own weak-view logits, and it takes one strong view; it also reports the
teacher during the warm-up, where this reports the student throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms.components.logit_adjust import class_prior, labeled_loss, logit_adjustment
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
from cissl.schema import option

STUDENT = "tras"


@dataclass(frozen=True)
class TrasConfig(FixMatchConfig):
    name: str = option("fixmatch_tras", help="algorithm name")
    la_tau: float = option(1.0, min=0.0, help="tau of the log-prior a = log(pi^tau) (the authors' tro_train)")
    transfer_a: float = option(2.0, min=0.0, help="A of the per-class transfer factors A * softmax(-a) + B")
    transfer_b: float = option(2.0, min=0.0, help="B of the per-class transfer factors")
    warmup_epochs: int = option(11, min=0, help="epochs before the student learns (the authors' epoch > 10)")


def transfer_factors(adjustment: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """t_k = A * softmax(-a)_k + B."""
    return a * torch.softmax(-adjustment, dim=0) + b


def transfer_loss(student_strong, teacher_strong, offsets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 / (V * B)) sum_v sum_i mask_i * -sum_k q_vik log softmax(g_vi)_k, q_vi = softmax((f_vi - o_i) / 2)."""
    total = student_strong[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_strong, teacher_strong):
        targets = torch.softmax((teacher.detach().float() - offsets) / 2.0, dim=1)
        total = total + (-(targets * F.log_softmax(student.float(), dim=1)).sum(dim=1) * mask).sum()
    return total / (len(student_strong) * len(mask))


@register("fixmatch_tras", TrasConfig, summary="FixMatch w/ TRAS (teacher with LA pseudo-labels, student "
                                               "trained by transfer; reports the student)")
class Tras(FixMatch):
    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        return (*super().required_heads(config), STUDENT)

    @property
    def reported_head(self) -> str:
        return STUDENT

    def __init__(self, config: TrasConfig, context):
        super().__init__(config, context)
        self.log_prior = logit_adjustment(class_prior(context.labeled_counts), config.la_tau).to(context.device)
        self.factors = transfer_factors(self.log_prior, config.transfer_a, config.transfer_b)

    def weak_probabilities(self, weak_logits):
        """The teacher's pseudo-labels: softmax((f(u_w) - a) / T)."""
        return torch.softmax((weak_logits.detach().float() - self.log_prior) / self.config.temperature, dim=1)

    def loss(self, model, views, batch, pseudo, iteration: int):
        if iteration // self.context.epoch_length < self.config.warmup_epochs:
            return None, {}
        loss_x = labeled_loss(views.labeled_logits[STUDENT], batch.y, self.log_prior)
        with torch.no_grad():
            confidence, labels = torch.softmax(views.weak_logits[STUDENT].detach().float(), dim=1).max(dim=1)
            mask = (confidence >= self.config.threshold).float()
            offsets = self.log_prior.unsqueeze(0) * self.factors[labels].unsqueeze(1)
        loss_u = transfer_loss([s[STUDENT] for s in views.strong_logits], [s["main"] for s in views.strong_logits],
                               offsets, mask)
        return loss_x + loss_u, {"loss_x_student": loss_x.detach(), "loss_u_student": loss_u.detach(),
                                 "mask_rate_student": mask.mean()}
