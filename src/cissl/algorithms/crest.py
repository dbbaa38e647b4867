"""CReST (Wei et al., CVPR 2021): class-rebalancing self-training over generations, on FixMatch.

The run is cut into ``generations`` equal parts. After each but the last, the EMA model labels the
whole unlabeled pool (no augmentation); of the images predicted as class k, the most confident
floor(mu_k * n_k) join the labeled set for the next generation with label k (replacing the previous
generation's additions), where mu_k = (N_{(K+1-r_k)} / N_max)^(1 / alpha) for the class of frequency
rank r_k (1 = most frequent labeled class; N_{(j)} the j-th largest labeled count): the rarest class
keeps all its predictions, the most frequent the fewest (CReST Eq. 3, its alpha; the paper writes the
exponent as alpha with alpha < 1, the code as 1 / alpha with alpha = 3). The network, its EMA and the
optimizer restart from fresh weights and the LR schedule restarts (as CReST's code and the DASO
framework do). With ``logit_adjust`` the LA offsets follow the current labeled set, additions included
(DASO framework's "FixMatch + LA w/ CReST+").

CReST+ adds progressive distribution alignment: ``refiner: {name: dist_align, t_min: 0.5}``
(:mod:`cissl.algorithms.dist_align`). Ranks from the labeled counts (ties: lower class index first);
for classes sorted by frequency this is the DASO framework's arithmetic, and USB's on an exactly
exponential profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.base import GenerationUpdate
from cissl.algorithms.components.logit_adjust import labeled_adjustment
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.schema import option


@dataclass(frozen=True)
class CrestConfig(FixMatchConfig):
    name: str = option("fixmatch_crest", help="algorithm name")
    generations: int = option(5, min=1, help="generations of self-training (train.iterations split evenly)")
    alpha: float = option(3.0, min=0.0, min_exclusive=True, help="CReST's alpha: selection rate exponent 1 / alpha")


def selection_rates(labeled_counts, alpha: float) -> torch.Tensor:
    """mu_k = (N_{(K+1-r_k)} / N_max)^(1 / alpha), float64 (see the module docstring)."""
    counts = torch.as_tensor(labeled_counts, dtype=torch.float64)
    order = torch.sort(-counts, stable=True).indices  # classes from the most to the least frequent
    rates = torch.empty_like(counts)
    rates[order] = (counts[order.flip(0)] / counts.max()) ** (1.0 / alpha)
    return rates


@torch.no_grad()
def select_pseudo_labeled(probs: torch.Tensor, rates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool positions, labels) of the images that join the labeled set: per predicted class k, the
    floor(mu_k * n_k) most confident (ties: lower pool position first), classes in index order."""
    confidence, predicted = probs.max(1)
    indices, labels = [], []
    for k in range(probs.shape[1]):
        members = torch.nonzero(predicted == k).flatten()
        take = int(float(rates[k]) * len(members))
        if take < 1:
            continue
        order = torch.sort(confidence[members], descending=True, stable=True).indices
        indices.append(members[order[:take]])
        labels.append(torch.full((take,), k, dtype=torch.long))
    if not indices:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(indices), torch.cat(labels)


class Crest(FixMatch):
    """FixMatch with CReST's generations (registered as the ``fixmatch_crest*`` rows in ``table_rows``)."""

    @classmethod
    def generations(cls, config) -> int:
        return config.generations

    def __init__(self, config: CrestConfig, context):
        super().__init__(config, context)
        self.rates = selection_rates(context.labeled_counts, config.alpha)
        self.added_counts = torch.zeros(context.num_classes, dtype=torch.long)

    def on_generation_end(self, generation, pool):
        indices, labels = select_pseudo_labeled(torch.softmax(pool.logits["main"].float(), 1), self.rates)
        self.added_counts = torch.bincount(labels, minlength=self.context.num_classes)
        self._follow_labeled_set()
        return GenerationUpdate(indices, labels, reinitialize_model=True)

    def _follow_labeled_set(self) -> None:
        counts = torch.tensor(self.context.labeled_counts) + self.added_counts
        self.adjustment = labeled_adjustment(self.config.logit_adjust, self.config.la_tau, self.context, counts)

    def state_dict(self) -> dict:
        return {"parts": super().state_dict(), "added_counts": self.added_counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state["parts"])
        self.added_counts = state["added_counts"].clone()
        self._follow_labeled_set()
