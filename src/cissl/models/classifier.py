"""A backbone plus named linear heads; normalises [0, 1] images with the data set's mean / std."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class ModelOutput:
    features: torch.Tensor           # pooled embedding e, (N, D)
    logits: dict[str, torch.Tensor]  # head name -> (N, K)


class Classifier(nn.Module):
    """``forward(x)`` with x float in [0, 1], (N, C, H, W) -> :class:`ModelOutput`.

    Heads are ``Linear(D, K)`` with bias, Xavier-normal weights and zero bias (spec 3.1). The
    standard head is called ``main``; algorithms may ask for more (SeMi: ``balanced``).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, mean, std, head_names=("main",)):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_dim = backbone.feature_dim
        self.heads = nn.ModuleDict()
        for name in head_names:
            self.add_head(name)
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1),
                             persistent=False)
        self._compiled_backbone = None  # set by compile_backbone(); not a registered submodule

    def add_head(self, name: str) -> nn.Linear:
        head = nn.Linear(self.feature_dim, self.num_classes)
        nn.init.xavier_normal_(head.weight)
        nn.init.zeros_(head.bias)
        self.heads[name] = head
        return head

    def compile_backbone(self, **kwargs) -> None:
        """Run the backbone through ``torch.compile`` (parameters and state_dict keys unchanged)."""
        object.__setattr__(self, "_compiled_backbone", torch.compile(self.backbone, **kwargs))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        encoder = self.backbone if self._compiled_backbone is None else self._compiled_backbone
        return encoder((x - self.mean) * self.inv_std)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.embed(x)
        return ModelOutput(features, {name: head(features) for name, head in self.heads.items()})
