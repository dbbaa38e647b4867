"""cRT, classifier re-training (Kang et al., ICLR 2020, "Decoupling Representation and Classifier for
Long-Tailed Recognition"), as the stage after an SSL run ("DARP + cRT" in the SeMi paper's Table 4).

The network of a finished run (``train.init_from``, its EMA weights by default) is frozen, backbone
and BN statistics; the classifier ``main`` starts afresh and is trained alone with plain CE on the
labeled set, drawn with class-aware sampling: each labeled image with probability proportional to
its class's weight, (1 - beta) / (1 - beta^N_k) for beta < 1 (the DASO framework's
``ClassAwareSampler``, its default beta 0.999) or 1 / N_k for beta = 1 (Kang et al.'s class-balanced
sampling: every class equally likely). The stage is a run of its own, resumed and evaluated like any
other; its results name the parent (``fixmatch_darp+crt``).

Where the DASO framework's cRT differs: it takes the parent's training network (here
``train.init_weights=model``) and keeps its BN layers in train mode, so their statistics drift to the
class-aware batches; here the whole backbone is frozen. It evaluates the re-trained network itself:
``train.ema_decay=0`` does that here (the EMA then equals the network).
"""

from __future__ import annotations

from dataclasses import dataclass

from cissl.algorithms.base import Algorithm, Batch, StepOutput, ViewSpec
from cissl.algorithms.components.logit_adjust import labeled_loss
from cissl.algorithms.registry import register
from cissl.schema import AlgorithmConfig, option


@dataclass(frozen=True)
class CrtConfig(AlgorithmConfig):
    name: str = option("crt", help="algorithm name")
    sampler_beta: float = option(0.999, min=0.0, max=1.0, min_exclusive=True,
                                 help="class-aware sampling: effective-number beta (< 1), or 1 for 1 / N_k")


@register("crt", CrtConfig, summary="cRT: re-train the classifier of a finished run (train.init_from) with "
                                    "class-aware sampling, network frozen")
class Crt(Algorithm):
    @classmethod
    def views(cls, config) -> ViewSpec:
        return ViewSpec(unlabeled=False, labeled_sampling="class_balanced", sampling_beta=config.sampler_beta)

    @classmethod
    def trains_backbone(cls, config) -> bool:
        return False

    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        loss = labeled_loss(model(batch.x).logits["main"], batch.y)
        return StepOutput(loss, {"loss_x": loss.detach()})
