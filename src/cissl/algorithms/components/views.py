"""One forward of a step's views, cut into aligned blocks (FixMatch's and SeMi's forward, spec 5.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.models import Classifier


@dataclass
class Views:
    """Features and logits of the labeled, weak and strong blocks; row i of every unlabeled block
    belongs to the same image."""

    labeled: torch.Tensor
    weak: torch.Tensor | None
    strong: tuple[torch.Tensor, ...]
    labeled_logits: dict[str, torch.Tensor]
    weak_logits: dict[str, torch.Tensor]
    strong_logits: tuple[dict[str, torch.Tensor], ...]


def forward_views(model: Classifier, batch, weak_pass: str = "joint") -> Views:
    """``joint``: one forward of [x; u_w; u_s1; ...; u_sV] (BN sees the whole batch, spec 5.1).
    ``no_grad``: the weak block first in a forward of its own without gradients (train-mode BN),
    then one forward of [x; u_s1; ...; u_sV].

    Features and logits are cut with the same row ranges, so row i of every block belongs to the
    same image - the alignment the authors' released SeMi code breaks (spec 5.1).
    """
    if weak_pass not in ("joint", "no_grad"):
        raise ValueError(f"weak_pass must be 'joint' or 'no_grad', got {weak_pass!r}")
    if batch.u_weak is None:
        out = model(batch.x)
        return Views(out.features, None, (), out.logits, {}, ())
    blocks = [batch.x, batch.u_weak, *batch.u_strong]
    separate = weak_pass == "no_grad"
    if separate:
        with torch.no_grad():
            weak = model(batch.u_weak)
        blocks.pop(1)
    sizes = [len(b) for b in blocks]
    out = model(torch.cat(blocks))
    feats = list(out.features.split(sizes))
    logits = {name: value.split(sizes) for name, value in out.logits.items()}
    per_block = [{name: parts[i] for name, parts in logits.items()} for i in range(len(sizes))]
    if separate:
        feats.insert(1, weak.features)
        per_block.insert(1, weak.logits)
    return Views(feats[0], feats[1], tuple(feats[2:]), per_block[0], per_block[1], tuple(per_block[2:]))
