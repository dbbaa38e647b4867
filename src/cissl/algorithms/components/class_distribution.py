"""Running estimate of the unlabeled class distribution from confident pseudo-labels (spec section 7)."""

from __future__ import annotations

import torch


class PseudoLabelCounter:
    """n_k += confident pseudo-labels of class k every step, never reset; w = n / sum n is refreshed
    once per epoch (uniform while nothing was counted). w weighs PLCE's mixing (Eq. 8)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.weights = torch.full((num_classes,), 1.0 / num_classes, device=device)

    @torch.no_grad()
    def update(self, labels: torch.Tensor, mask: torch.Tensor) -> None:
        self.counts.scatter_add_(0, labels, mask.double())  # no host synchronisation

    @torch.no_grad()
    def refresh(self) -> None:
        total = self.counts.sum()
        uniform = torch.full_like(self.weights, 1.0 / len(self.weights))
        self.weights = torch.where(total > 0, (self.counts / total.clamp(min=1)).float(), uniform)

    def state_dict(self) -> dict:
        return {"counts": self.counts.cpu().clone(), "weights": self.weights.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.counts.copy_(state["counts"])
        self.weights.copy_(state["weights"])
