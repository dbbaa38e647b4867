"""Estimating the class distribution of an unlabeled pool (black-box shift estimation, Lipton et al.
2018), as DARP (Kim et al. 2020, Sec. 3.3) does for unknown or mismatched unlabeled distributions.

With C[j, k] = mean over validation images of class k of the model's probability of class j, and
q_j the sum over the pool of the model's probability of class j, the pool's class counts n solve
C n = q. As the DASO framework's ``darp_estim``: soft predictions, an exact inverse, and an estimate
accepted only if no count is negative and C's condition number is below a limit (100 there). The
framework estimates at every evaluation of a run and uses the mean of the accepted estimates
(``average_accepted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class DistributionEstimate:
    counts: torch.Tensor      # (K,) float64, estimated images per class in the pool (may be negative)
    condition: float          # condition number of the confusion matrix
    accepted: bool            # no negative count and condition below the limit

    def as_dict(self) -> dict:
        return {"counts": self.counts.tolist(), "condition_number": self.condition, "accepted": self.accepted}


def soft_confusion(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C[j, k] = mean of p_j over the images of class k (columns sum to 1), float64."""
    probs = probs.double()
    totals = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(1, labels.long(), probs.T)
    counts = torch.bincount(labels.long(), minlength=num_classes).double()
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"the validation images hold no image of classes {missing}: set data.val_per_class >= 1")
    return totals / counts


def estimate_class_counts(val_probs: torch.Tensor, val_labels: torch.Tensor, pool_probs: torch.Tensor,
                          max_condition: float = 100.0) -> DistributionEstimate:
    """n = C^-1 q (see the module docstring)."""
    k = val_probs.shape[1]
    confusion = soft_confusion(val_probs, val_labels, k)
    condition = float(torch.linalg.cond(confusion))
    counts = torch.linalg.inv(confusion) @ pool_probs.double().sum(0)
    return DistributionEstimate(counts, condition, bool((counts >= 0).all()) and condition < max_condition)


def average_accepted(estimates: Sequence[DistributionEstimate]) -> torch.Tensor | None:
    """The mean counts of the accepted estimates (None if none was accepted): the DASO framework's
    ``darp_estim`` adds each evaluation's accepted estimate to a sum and divides by their number."""
    accepted = [estimate.counts for estimate in estimates if estimate.accepted]
    return torch.stack(accepted).mean(0) if accepted else None
