"""SGD with coupled weight decay on conv / linear weights only, and the per-iteration LR schedule."""

from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.SGD:
    """SGD(lr, momentum, nesterov); weight decay on tensors with ndim > 1 (conv and linear weights),
    none on biases and normalisation parameters (spec section 4)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           fused=cfg.fused or None)


def lr_factor(iteration: int, total: int, schedule: str, fraction: float) -> float:
    """Multiplier of the base LR at 0-based ``iteration``: max(0, cos(pi * fraction * t / T)) for cosine
    (FixMatch: fraction 7/16, final factor about 0.2), 1 for constant."""
    if schedule == "constant":
        return 1.0
    return max(0.0, math.cos(math.pi * fraction * iteration / total))


def build_scheduler(optimizer, cfg, total_iterations: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, total_iterations, cfg.schedule, cfg.cosine_fraction))
