"""OHEML: entropy-based weights of unlabeled examples (SeMi Eqs. 3-4)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def entropy_weights(probs: torch.Tensor, scale: float) -> torch.Tensor:
    """omega_i = s * H(p_i) / log K + (1 - s)   (Eqs. 3-4; spec 5.5).

    H is the entropy of the clamped distribution (clamp to [1e-8, 1 - 1e-8]); omega lies in
    [1 - s, 1]: 0.25 for a one-hot p, 1 for a uniform one (s = 0.75), larger for harder examples.
    No gradient, no batch normalisation.
    """
    num_classes = probs.shape[1]
    clamped = probs.clamp(1e-8, 1 - 1e-8)
    entropy = -(clamped * clamped.log()).sum(dim=1)
    return scale * entropy / math.log(num_classes) + (1.0 - scale)
