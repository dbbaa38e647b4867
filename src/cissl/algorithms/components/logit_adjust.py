"""Logit adjustment (Menon et al., ICLR 2021), as SeMi's Eqs. 1 and 10 and FixMatch + LA use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prior(counts) -> torch.Tensor:
    """pi_k = N_k / sum N from exact counts (float64 -> float32)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.sum() <= 0:
        raise ValueError("class prior needs at least one counted sample")
    return (counts / counts.sum()).float()


def logit_adjustment(prior: torch.Tensor, tau: float) -> torch.Tensor:
    """A_tau[k] = log(pi_k^tau + 1e-12) (spec symbols table; SeMi Eq. 10 with tau2 = 2).

    The logit-adjusted loss is CE(logits + A_tau, y); at test time the raw logits are used.
    """
    return torch.log(prior.double() ** tau + 1e-12).float()


def labeled_loss(logits: torch.Tensor, targets: torch.Tensor, adjustment: torch.Tensor | None = None):
    """CE(f(x), y), or the LA loss CE(f(x) + A_tau, y) when an adjustment is given (SeMi Eqs. 1, 10)."""
    return F.cross_entropy(logits if adjustment is None else logits + adjustment, targets)


def labeled_adjustment(logit_adjust: bool, tau: float, context, counts=None) -> torch.Tensor | None:
    """A_tau from the run's exact labeled counts (or ``counts``, when the labeled set grows: CReST) when
    ``logit_adjust`` is on, else None (plain CE)."""
    if not logit_adjust:
        return None
    return logit_adjustment(class_prior(context.labeled_counts if counts is None else counts), tau).to(context.device)
