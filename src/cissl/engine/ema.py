"""Exponential moving average of the parameters, used for evaluation (spec section 3.2)."""

from __future__ import annotations

import copy

import torch


class EMA:
    """ema <- decay * ema + (1 - decay) * live after every optimizer step, from step 0, no bias
    correction; buffers (BN statistics) are copied from the live model, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self._ema_params = list(self.model.parameters())
        self._ema_buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        live = list(model.parameters())  # under no_grad: no detach needed
        if self.decay == 0.0:
            torch._foreach_copy_(self._ema_params, live)
        else:
            torch._foreach_mul_(self._ema_params, self.decay)
            torch._foreach_add_(self._ema_params, live, alpha=1.0 - self.decay)
        if self._ema_buffers:
            torch._foreach_copy_(self._ema_buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
