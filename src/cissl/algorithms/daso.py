"""DASO (Oh et al., CVPR 2022): distribution-aware semantics-oriented pseudo-labels, a FixMatch refiner.

- A class-balanced queue keeps the latest ``queue_size`` embeddings of every class, computed by the
  EMA network on each step's labeled images; its class means are the prototypes c_k.
- Semantic pseudo-labels: q_sem = softmax(cos(z_w, c) / T_proto) for a weak view's embedding z_w.
- Distribution-aware blending: with p-hat the class distribution of the pseudo-labels of the last
  ``dist_update_period`` steps, v = p-hat^(1 / T_dist) normalised to sum 1 and then divided by its
  maximum; the pseudo-label distribution is (1 - v_c) p + v_c q_sem, c = argmax p (a fixed
  ``interp_alpha`` instead of v_c with ``dist_aware: false``).
- Semantic alignment loss: CE(softmax(cos(z_s, c) / T_proto), q_sem) for the strong views, weighted
  by ``alignment_weight``.
Blending and the alignment loss start after ``pretrain_fraction`` of the run (DASO's pretraining).

As the DASO authors' code (the protocol of the SeMi paper's Tables 1-3): the confidence mask is taken
on the blended distribution (USB takes it on the unblended prediction); the queue's embeddings come
from the EMA network with batch statistics (train-mode BN; the EMA's BN buffers are overwritten
from the live network at the next EMA update, so nothing of that pass persists); the pseudo-label
distribution counts every unlabeled image's final pseudo-label, masked or not. With several strong
views per image the alignment loss is their mean (DASO has one). With an ABC head that asks for it
(``refined_targets``), the head's own weak-view probabilities are blended the same way (DASO's
"FixMatch + ABC w/ DASO").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms.base import Periodic
from cissl.algorithms.parts import PseudoLabelRefiner
from cissl.algorithms.registry import REFINERS
from cissl.distributed import gather_rows
from cissl.schema import NamedConfig, option


@dataclass(frozen=True)
class DasoConfig(NamedConfig):
    name: str = option("daso", help="DASO pseudo-labels")
    queue_size: int = option(256, min=1, help="embeddings kept per class")
    proto_temperature: float = option(0.05, min=0.0, min_exclusive=True, help="T_proto of the similarities")
    dist_temperature: float = option(1.5, min=0.0, min_exclusive=True,
                                     help="T_dist of the blending weights (DASO: 1.5; 0.3 for mismatched CIFAR-10)")
    dist_aware: bool = option(True, help="blend by the pseudo-label distribution (else by interp_alpha)")
    interp_alpha: float = option(0.5, min=0.0, max=1.0, help="fixed blending weight when dist_aware is off")
    alignment_weight: float = option(1.0, min=0.0, help="weight of the semantic alignment loss")
    pretrain_fraction: float = option(0.02, min=0.0, max=1.0,
                                      help="fraction of train.iterations before blending and alignment start")
    dist_update_period: int = option(100, min=1, help="steps per refresh of the pseudo-label distribution")


class ClassQueue:
    """The latest ``size`` embeddings of every class (first in, first out) and their means; pushes
    are vectorised (no host-device synchronisation)."""

    def __init__(self, num_classes: int, size: int, dim: int, device):
        self.size = size
        # one extra slot per class takes the rows a push drops (more than `size` of a class in one push)
        self.features = torch.zeros(num_classes, size + 1, dim, device=device)
        self.filled = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.position = torch.zeros(num_classes, dtype=torch.long, device=device)

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        onehot = torch.zeros(len(labels), len(self.filled), dtype=torch.long, device=labels.device)
        onehot.scatter_(1, labels[:, None], 1)  # (F.one_hot checks the label range on the host)
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # order of each row among its class's rows here
        count = onehot.sum(0)
        kept = rank >= count[labels] - self.size
        slot = torch.where(kept, (self.position[labels] + rank) % self.size, self.size)
        self.features[labels, slot] = features.detach().float()
        self.position = (self.position + count) % self.size
        self.filled = torch.clamp(self.filled + count, max=self.size)

    def prototypes(self) -> torch.Tensor:
        """(K, D) class means; zeros for a class not seen yet."""
        return self.features[:, :self.size].sum(1) / self.filled.clamp(min=1)[:, None]

    def state_dict(self) -> dict:
        return {"features": self.features.clone(), "filled": self.filled.clone(), "position": self.position.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["features"].shape) != tuple(self.features.shape):
            raise ValueError(f"DASO queue has shape {tuple(state['features'].shape)} in the checkpoint, "
                             f"this run needs {tuple(self.features.shape)}")
        for key in ("features", "filled", "position"):
            setattr(self, key, state[key].to(self.features.device))


def similarity_logits(embeddings: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """cos(z_i, c_k) / T_proto, (B, K)."""
    return F.cosine_similarity(embeddings.float().unsqueeze(1), prototypes.unsqueeze(0), dim=2) / temperature


def blending_weights(distribution_counts: torch.Tensor, temperature: float) -> torch.Tensor:
    """v = p-hat^(1 / T_dist), normalised to sum 1, then divided by its maximum (K,)."""
    v = (distribution_counts / distribution_counts.sum()) ** (1.0 / temperature)
    v = v / v.sum()
    return v / v.max()


def semantic_alignment_loss(strong_similarity: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_k q_sem,ik log softmax(cos(z_s,i, c) / T_proto)_k."""
    return -(semantic * F.log_softmax(strong_similarity, dim=1)).sum(1).mean()


@REFINERS.register("daso", DasoConfig, summary="DASO: semantic pseudo-labels blended by the class distribution")
class Daso(PseudoLabelRefiner):
    def __init__(self, config: DasoConfig, context):
        super().__init__(config, context)
        self.pretrain = int(context.iterations * config.pretrain_fraction)
        if config.dist_aware and self.pretrain < config.dist_update_period:
            raise ValueError(
                f"config keys 'algorithm.refiner.pretrain_fraction' / 'dist_update_period': DASO blends by the "
                f"pseudo-label distribution of a full period, so its pretraining ({self.pretrain} steps) must last "
                f"at least one period ({config.dist_update_period} steps)")
        k = context.num_classes
        self.queue = ClassQueue(k, config.queue_size, context.feature_dim, context.device)
        self.counts = torch.zeros(k, device=context.device)        # pseudo-labels of the running period
        self.distribution = torch.zeros(k, device=context.device)  # counts of the last full period
        self.weights = torch.ones(k, device=context.device)  # v of `distribution` (set with it; unused before)
        self._prototypes = None
        self._semantic = None

    def _push_labeled(self, batch) -> None:
        if self.ema_model is None:
            raise RuntimeError("DASO embeds the labeled images with the EMA network: none is attached")
        with torch.no_grad():
            self.ema_model.train()
            try:
                features = self.ema_model(batch.x).features
            finally:
                self.ema_model.eval()
        self.queue.push(gather_rows(features), gather_rows(batch.y))  # the global batch's rows under DDP

    def _blend(self, probs: torch.Tensor) -> torch.Tensor:
        """(1 - v_c) p + v_c q_sem with c = argmax p (or the fixed interp_alpha)."""
        weight = self.weights[probs.argmax(1)].unsqueeze(1) if self.config.dist_aware else self.config.interp_alpha
        return (1.0 - weight) * probs + weight * self._semantic

    @torch.no_grad()
    def refine(self, probs, views, batch, iteration):
        self._push_labeled(batch)
        if iteration < self.pretrain:
            self._prototypes = self._semantic = None
            refined = probs
        else:
            self._prototypes = self.queue.prototypes()
            similarity = similarity_logits(views.weak, self._prototypes, self.config.proto_temperature)
            self._semantic = torch.softmax(similarity, dim=1)
            refined = self._blend(probs)
        predicted = gather_rows(refined.argmax(1))
        self.counts.index_add_(0, predicted, torch.ones(len(predicted), device=self.counts.device))
        return refined

    @torch.no_grad()
    def refine_auxiliary(self, probs):
        return probs if self._semantic is None else self._blend(probs)

    def loss(self, model, views, batch, pseudo, iteration):
        if self._semantic is None or self.config.alignment_weight == 0:
            return None, {}
        losses = [semantic_alignment_loss(similarity_logits(strong, self._prototypes, self.config.proto_temperature),
                                          self._semantic) for strong in views.strong]
        loss = torch.stack(losses).mean()
        return self.config.alignment_weight * loss, {"loss_align": loss.detach()}

    def periodic(self):
        return [Periodic(self.config.dist_update_period, self._refresh_distribution)]

    def _refresh_distribution(self, iteration: int) -> None:
        self._set_distribution(self.counts.clone())
        self.counts.zero_()

    def _set_distribution(self, counts: torch.Tensor) -> None:
        self.distribution = counts
        self.weights = blending_weights(counts, self.config.dist_temperature)

    def state_dict(self) -> dict:
        return {"queue": self.queue.state_dict(), "counts": self.counts.clone(),
                "distribution": self.distribution.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.queue.load_state_dict(state["queue"])
        self.counts = state["counts"].to(self.counts.device)
        self._set_distribution(state["distribution"].to(self.distribution.device))
