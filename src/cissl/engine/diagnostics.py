"""Pseudo-label diagnostics scored against the unlabeled ground truth (never seen by the algorithm)."""

from __future__ import annotations

import torch


class PseudoLabelStats:
    """Per true class: images seen, pseudo-labels used (mask), used and correct; predicted class counts."""

    KEYS = ("seen", "used", "correct", "predicted")

    def __init__(self, num_classes: int, device: torch.device):
        self.counts = {k: torch.zeros(num_classes, dtype=torch.long, device=device) for k in self.KEYS}

    def update(self, truth: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor) -> None:
        # scatter_add, not bincount / boolean indexing: no host synchronisation on accelerators
        used = mask.long()
        self.counts["seen"].scatter_add_(0, truth, torch.ones_like(truth))
        self.counts["used"].scatter_add_(0, truth, used)
        self.counts["correct"].scatter_add_(0, truth, used * (pseudo == truth).long())
        self.counts["predicted"].scatter_add_(0, pseudo, used)

    def summary(self) -> dict:
        c = {k: v.double().cpu() for k, v in self.counts.items()}
        seen_total, used_total = c["seen"].sum().item(), c["used"].sum().item()

        def ratio(a, b):
            return torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a)).tolist()

        return {
            "mask_rate": c["used"].sum().item() / seen_total if seen_total else 0.0,
            "used_accuracy": c["correct"].sum().item() / used_total if used_total else 0.0,
            "per_class_mask_rate": ratio(c["used"], c["seen"]),
            "per_class_used_accuracy": ratio(c["correct"], c["used"]),
            "pseudo_label_distribution": (c["predicted"] / max(used_total, 1)).tolist(),
            "true_distribution": (c["seen"] / max(seen_total, 1)).tolist(),
        }

    def reset(self) -> None:
        for value in self.counts.values():
            value.zero_()

    def state_dict(self) -> dict:
        return {k: v.cpu().clone() for k, v in self.counts.items()}

    def load_state_dict(self, state: dict) -> None:
        for k in self.KEYS:
            self.counts[k].copy_(state[k])
