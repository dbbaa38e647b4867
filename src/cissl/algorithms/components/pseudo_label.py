"""Confidence-thresholded pseudo-labels (FixMatch, Sohn et al. 2020, Eq. 2 mask)."""

from __future__ import annotations

import torch


@torch.no_grad()
def threshold_pseudo_labels(probs: torch.Tensor, threshold: float):
    """(confidence, argmax label, mask = confidence >= threshold) of class probabilities (B, K)."""
    confidence, labels = probs.max(dim=1)
    return confidence, labels, confidence >= threshold
