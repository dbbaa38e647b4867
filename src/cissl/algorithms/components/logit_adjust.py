"""Logit adjustment (Menon et al., ICLR 2021), as SeMi's Eqs. 1 and 10 use it."""

from __future__ import annotations

import torch


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
