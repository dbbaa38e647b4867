"""ABC (Lee et al., NeurIPS 2021): an auxiliary balanced classifier beside FixMatch's head.

A second linear head (``abc``) on the shared embedding, trained so that every class counts about
equally, and reported at evaluation:

- labeled: mean_i M_i CE(g(x_i), y_i) with M_i ~ Bernoulli(N_min / N_{y_i}) (undersampling the
  majority classes by masks instead of by data);
- unlabeled: for each strong view, mean_i M_i H(q_i, softmax(g(u_s,i))), q_i = softmax(g(u_w,i)) (no
  gradient), M_i = [max q_i >= tau] * Bernoulli(1 - (e / E)(1 - N_min / N_{c_i})), c_i = argmax q_i,
  e / E the fraction of the run's epochs done (the masks relax towards the labeled rates).

As the ABC authors' code (and the DASO framework that ran the SeMi paper's "FixMatch + ABC" rows):
the unlabeled targets q are soft (USB uses the hard label c_i: ``soft_targets: false``); the
unlabeled terms of the strong views are summed; with a pseudo-label refiner that offers it (DASO),
q is the refiner's blend of the head's own prediction (``refined_targets``; DASO's "ABC w/ DASO").
The Bernoulli masks come from the method's own generator (checkpointed), seeded by the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms.parts import AuxiliaryHead
from cissl.algorithms.registry import AUX_HEADS
from cissl.distributed import gather_rows, local_rows
from cissl.schema import NamedConfig, option


@dataclass(frozen=True)
class AbcConfig(NamedConfig):
    name: str = option("abc", help="ABC's auxiliary balanced classifier")
    threshold: float = option(0.95, min=0.0, max=1.0, help="confidence threshold of the head's pseudo-labels")
    loss_weight: float = option(1.0, min=0.0, help="weight of the head's loss")
    soft_targets: bool = option(True, help="soft pseudo-label targets (ABC's code); false: hard labels (USB)")
    refined_targets: bool = option(True, help="targets refined by the method's refiner where it offers it (DASO)")


def balanced_keep_rates(counts) -> torch.Tensor:
    """N_min / N_k: the probability that a labeled image of class k is kept in the head's loss."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return (counts.min() / counts).float()


def unlabeled_keep_rates(keep: torch.Tensor, progress: float) -> torch.Tensor:
    """1 - progress (1 - N_min / N_k), progress = epochs done / epochs of the run."""
    return 1.0 - progress * (1.0 - keep)


def abc_loss(labeled_logits, labels, labeled_mask, weak_probs, strong_logits, unlabeled_mask,
             soft_targets: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(labeled term, unlabeled term) of ABC's loss for given masks (see the module docstring)."""
    labeled = (F.cross_entropy(labeled_logits, labels, reduction="none") * labeled_mask).mean()
    unlabeled = labeled_logits.new_zeros(())
    for logits in strong_logits:
        if soft_targets:
            per_image = -(weak_probs * F.log_softmax(logits, dim=1)).sum(1)
        else:
            per_image = F.cross_entropy(logits, weak_probs.argmax(1), reduction="none")
        unlabeled = unlabeled + (per_image * unlabeled_mask).mean()
    return labeled, unlabeled


@AUX_HEADS.register("abc", AbcConfig, summary="ABC: auxiliary balanced classifier (reported)")
class AbcHead(AuxiliaryHead):
    head = "abc"
    reported = True

    def __init__(self, config: AbcConfig, context):
        super().__init__(config, context)
        self.keep = balanced_keep_rates(context.labeled_counts).to(context.device)
        self.epochs = max(1, context.iterations // context.epoch_length)
        self.generator = torch.Generator(device=context.device).manual_seed(context.seed)

    def loss(self, model, views, batch, pseudo, iteration):
        cfg = self.config
        with torch.no_grad():
            # the draws of the global batch, this rank's rows (under DDP; as one process draws them)
            labeled_mask = local_rows(torch.bernoulli(self.keep[gather_rows(batch.y)], generator=self.generator))
            probs = torch.softmax(views.weak_logits[self.head].detach().float(), dim=1)
            if cfg.refined_targets and self.refiner is not None:
                probs = self.refiner.refine_auxiliary(probs)
            confidence, labels = probs.max(1)
            progress = (iteration // self.context.epoch_length) / self.epochs
            rates = unlabeled_keep_rates(self.keep, progress)[gather_rows(labels)]
            kept = local_rows(torch.bernoulli(rates, generator=self.generator))
            unlabeled_mask = (confidence >= cfg.threshold).float() * kept
        labeled, unlabeled = abc_loss(views.labeled_logits[self.head], batch.y, labeled_mask, probs,
                                      [s[self.head] for s in views.strong_logits], unlabeled_mask, cfg.soft_targets)
        return cfg.loss_weight * (labeled + unlabeled), {
            "loss_abc": (labeled + unlabeled).detach(), "abc_mask_rate": unlabeled_mask.mean()}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
