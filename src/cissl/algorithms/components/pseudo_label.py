"""Confidence-thresholded pseudo-labels (FixMatch, Sohn et al. 2020, Eq. 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PseudoLabels:
    """One step's pseudo-labels: the distribution that was thresholded, its top class and confidence,
    and the mask of the images whose pseudo-label the loss uses."""

    probs: torch.Tensor       # (B_u, K)
    confidence: torch.Tensor  # (B_u,)
    labels: torch.Tensor      # (B_u,) int64
    mask: torch.Tensor        # (B_u,) bool


@torch.no_grad()
def class_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p = softmax(logits / T) in float32, without gradient (the weak view's prediction)."""
    return torch.softmax(logits.detach().float() / temperature, dim=1)


@torch.no_grad()
def threshold_pseudo_labels(probs: torch.Tensor, threshold: float):
    """(confidence, argmax label, mask = confidence >= threshold) of class probabilities (B, K)."""
    confidence, labels = probs.max(dim=1)
    return confidence, labels, confidence >= threshold
