"""Class weights from the effective number of samples (Cui et al., CVPR 2019): SAW's loss weights and
cRT's class-aware sampling."""

from __future__ import annotations

import torch


def inverse_effective_number(counts, beta: float) -> torch.Tensor:
    """Per class (1 - beta) / (1 - beta^{n_k}), the inverse effective number of n_k samples; 1 / n_k for
    beta = 1 (float64, unnormalised)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return 1.0 / counts if beta >= 1.0 else (1.0 - beta) / (1.0 - beta ** counts)


def class_sampling_weights(labels: torch.Tensor, num_classes: int, beta: float) -> torch.Tensor:
    """Per-image sampling weights w_{y_i} = :func:`inverse_effective_number` of the label counts
    (beta = 1: each class equally likely), float64."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return inverse_effective_number(counts, beta)[labels.cpu()]
