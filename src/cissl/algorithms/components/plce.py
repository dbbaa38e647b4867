"""PLCE: pseudo-label certainty enhancement by prototype-based semantic labels (SeMi Eq. 8)."""

from __future__ import annotations

import torch


@torch.no_grad()
def semantic_pseudo_labels(query: torch.Tensor, prototypes: torch.Tensor, has_prototype: torch.Tensor,
                           temperature: float) -> torch.Tensor:
    """q_i,k = softmax over classes with a prototype of (-||e_i - C_k||_2 / T_p); 0 for the others.

    Euclidean (not squared) distance between unnormalised embeddings (Eq. 8 with the sign the OCR
    lost restored; spec 5.3). ``query``: (B, D) strong-1 embeddings; ``prototypes``: (K, D).
    """
    distance = torch.cdist(query.float(), prototypes.float(), compute_mode="donot_use_mm_for_euclid_dist")
    logits = (-distance / temperature).masked_fill(~has_prototype.view(1, -1), float("-inf"))
    # an empty bank gives all -inf rows (NaN after softmax): q = 0 there, as for any class without a prototype
    return torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)


def mixing_weights(class_weights: torch.Tensor, has_prototype: torch.Tensor, epoch: int, total_epochs: float,
                   alpha: float) -> torch.Tensor:
    """c_k = v * w_k with v = alpha * ep / E_total (Eq. 8's dynamic weight), 0 where class k has no
    prototype. Head classes (large estimated w_k) mix most; c_k < alpha."""
    v = alpha * epoch / total_epochs
    return torch.where(has_prototype, v * class_weights, torch.zeros_like(class_weights))


@torch.no_grad()
def mix_pseudo_labels(probs: torch.Tensor, semantic: torch.Tensor, weights: torch.Tensor,
                      renormalize: bool = False) -> torch.Tensor:
    """p_mix_i,k = (1 - c_k) p_i,k + c_k q_i,k per class column (Eq. 8); not renormalised by default."""
    mixed = (1.0 - weights) * probs + weights * semantic
    if renormalize:
        mixed = mixed / mixed.sum(dim=1, keepdim=True)
    return mixed
