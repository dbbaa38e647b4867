"""EA: embedding alignment between weak and strong views of ultra-hard examples (SeMi Eq. 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cissl.distributed import gather_rows


class EmbeddingAlignment:
    """L_EA = (1 / (V * B_u)) sum_v sum_i (1 - m_i) * H(t_i, s_v,i)   (Eq. 6; spec 5.6).

    Teacher t_i = softmax((e_w,i - c) / (T_e / 5)) over the D embedding dimensions, no gradient
    (the sharpened softmax of the paper); student s_v,i = softmax(e_sv,i / T_e); m_i = 1 for samples
    above the threshold, so only ultra-hard ones (m_i = 0) are aligned. After each loss the centre
    c moves: ``prob_ema`` c <- 0.9 c + 0.1 mean_i t_i (the authors' code: a centre of teacher
    probabilities subtracted from features), ``logit_ema`` c <- 0.9 c + 0.1 mean_i e_w,i (DINO's
    centring of teacher logits), ``none`` keeps c = 0.
    """

    def __init__(self, dim: int, *, temperature: float, center: str, momentum: float,
                 device: torch.device | str = "cpu"):
        if center not in ("prob_ema", "logit_ema", "none"):
            raise ValueError(f"unknown EA centre {center!r}")
        self.temperature = temperature
        self.center_mode = center
        self.momentum = momentum
        self.center = torch.zeros(dim, device=device)

    def loss(self, weak: torch.Tensor, strong: list[torch.Tensor] | tuple[torch.Tensor, ...],
             mask: torch.Tensor) -> torch.Tensor:
        """EA loss for weak embeddings (B_u, D), V strong embeddings (B_u, D) each, mask (B_u,); updates c."""
        weak = weak.detach().float()
        with torch.no_grad():
            teacher = torch.softmax((weak - self.center) / (self.temperature / 5), dim=1)
        ultra_hard = 1.0 - mask.float()
        total = weak.new_zeros(())
        for view in strong:
            cross_entropy = -(teacher * F.log_softmax(view.float() / self.temperature, dim=1)).sum(dim=1)
            total = total + (ultra_hard * cross_entropy).sum()
        self._update_center(weak, teacher)
        return total / (len(strong) * len(weak))

    @torch.no_grad()
    def _update_center(self, weak: torch.Tensor, teacher: torch.Tensor) -> None:
        if self.center_mode == "none":
            return
        rows = teacher if self.center_mode == "prob_ema" else weak
        batch_center = gather_rows(rows).mean(dim=0)  # the global batch's mean under DDP
        self.center.mul_(self.momentum).add_(batch_center, alpha=1 - self.momentum)

    def state_dict(self) -> dict:
        return {"center": self.center.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.center.copy_(state["center"])
