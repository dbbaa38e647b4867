"""The consistency loss of the FixMatch family: CE of every strong view against its image's pseudo-label."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def consistency_loss(strong_logits: list[torch.Tensor] | tuple[torch.Tensor, ...], targets: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """(1 / (V * B_u)) * sum_v sum_i w_i * CE(logits_v,i, target_i)  (FixMatch Eq. 2; SeMi Eqs. 5, 9, 11).

    ``weights`` already include the mask (0 for unused samples); every strong view of an image
    shares its target and weight.
    """
    total = strong_logits[0].new_zeros(())
    for logits in strong_logits:
        total = total + (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
    return total / (len(strong_logits) * len(targets))
