"""FixMatch (Sohn et al., NeurIPS 2020), and the FixMatch-family rows of the CISSL tables by composition.

L = L_s + lambda_u * L_u, with L_u = (1 / (V * B_u)) sum_v sum_i [max p_i >= tau] CE(f(u_s,v,i), argmax p_i)
and p_i = softmax(f(u_w,i) / T) without gradient. ``V`` strong views per unlabeled image (1 in the
original method, 2 in SeMi's layout); both layouts run on the shared engine.

Composition (:mod:`cissl.algorithms.parts`): the labeled loss is CE or LA (``logit_adjust``); a
pseudo-label refiner (``refiner``) turns p into the pseudo-label distribution (thresholded too,
unless the refiner takes the mask on p) and may add a loss; an auxiliary head (``aux_head``) adds
its own loss and may be the reported head. With both ``none`` this is plain FixMatch (FixMatch + LA
with ``logit_adjust``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cissl.algorithms.base import Algorithm, Batch, StepOutput, hooks_state, load_hooks_state
from cissl.algorithms.components.consistency import consistency_loss
from cissl.algorithms.components.logit_adjust import labeled_adjustment, labeled_loss
from cissl.algorithms.components.pseudo_label import PseudoLabels, class_probabilities
from cissl.algorithms.components.views import forward_views
from cissl.algorithms.parts import build_part
from cissl.algorithms.registry import AUX_HEADS, REFINERS, register
from cissl.schema import AlgorithmConfig, NamedConfig, choice, option


@dataclass(frozen=True)
class FixMatchConfig(AlgorithmConfig):
    name: str = option("fixmatch", help="algorithm name")
    threshold: float = option(0.95, min=0.0, max=1.0, help="confidence threshold tau")
    temperature: float = option(1.0, min=0.0, min_exclusive=True, help="softmax temperature T of p")
    unlabeled_weight: float = option(1.0, min=0.0, help="lambda_u")
    logit_adjust: bool = option(False, help="logit-adjusted labeled loss (FixMatch + LA)")
    la_tau: float = option(1.0, min=0.0, help="LA temperature tau")
    refiner: NamedConfig = choice(REFINERS, "none", help="pseudo-label refiner")
    aux_head: NamedConfig = choice(AUX_HEADS, "none", help="auxiliary head")


@register("fixmatch", FixMatchConfig, summary="FixMatch")
@register("fixmatch_la", FixMatchConfig, preset={"logit_adjust": True},
          summary="FixMatch with the logit-adjusted labeled loss")
class FixMatch(Algorithm):
    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        aux = AUX_HEADS.entry(config.aux_head.name).target
        return ("main",) if aux is None else ("main", aux.head)

    def __init__(self, config, context):
        super().__init__(config, context)
        self.adjustment = labeled_adjustment(config.logit_adjust, config.la_tau, context)
        self.refiner = build_part(REFINERS, config.refiner, context)
        self.aux_head = build_part(AUX_HEADS, config.aux_head, context)
        self.parts = {name: part for name, part in (("refiner", self.refiner), ("aux_head", self.aux_head))
                      if part is not None}
        if self.aux_head is not None:
            self.aux_head.refiner = self.refiner

    @property
    def ema_model(self):
        return self._ema_model

    @ema_model.setter
    def ema_model(self, model) -> None:
        """The engine's EMA network, passed on to the parts (DASO's queue extracts features with it)."""
        self._ema_model = model
        for part in getattr(self, "parts", {}).values():
            part.ema_model = model

    @property
    def reported_head(self) -> str:
        return self.aux_head.head if self.aux_head is not None and self.aux_head.reported else "main"

    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        cfg = self.config
        views = forward_views(model, batch)
        loss_x = self.labeled_term(views.labeled_logits["main"], batch.y)
        probs = self.weak_probabilities(views.weak_logits["main"])
        pseudo = self.pseudo_labels(probs, views, batch, iteration)
        loss_u = self.unlabeled_term([s["main"] for s in views.strong_logits], pseudo)
        loss = loss_x + cfg.unlabeled_weight * loss_u
        metrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": pseudo.mask.float().mean(),
                   "confidence": pseudo.confidence.mean()}
        for part in [*self.parts.values(), self]:
            extra, part_metrics = part.loss(model, views, batch, pseudo, iteration)
            if extra is not None:
                loss = loss + extra
            metrics.update(part_metrics)
        return StepOutput(loss, metrics, pseudo_labels=pseudo.labels, mask=pseudo.mask)

    def loss(self, model, views, batch, pseudo: PseudoLabels, iteration: int):
        """A variant's own extra term and its metrics, or (None, {}) (TRAS's student), after the parts'."""
        return None, {}

    # ------------------------------------------------------------------ the pieces a variant overrides
    def labeled_term(self, logits, labels):
        """L_s: CE, or the LA loss with ``logit_adjust`` (SAW weights it per class)."""
        return labeled_loss(logits, labels, self.adjustment)

    def weak_probabilities(self, weak_logits):
        """p = softmax(f(u_w) / T) without gradient (DebiasPL debiases it)."""
        return class_probabilities(weak_logits, self.config.temperature)

    def pseudo_labels(self, probs, views, batch, iteration) -> PseudoLabels:
        """The refiner's distribution (or p), its argmax as the pseudo-labels, and the confidence mask
        (:meth:`confidence_mask`) taken on the refined distribution, or on p where the refiner says so."""
        refined = probs if self.refiner is None else self.refiner.refine(probs, views, batch, iteration)
        confidence, labels = refined.max(dim=1)
        if self.refiner is not None and not self.refiner.masks_refined:  # mask on the unrefined confidence
            confidence, masked_labels = probs.max(dim=1)
        else:
            masked_labels = labels
        return PseudoLabels(refined, confidence, labels, self.confidence_mask(confidence, masked_labels))

    def confidence_mask(self, confidence, labels):
        """[max p >= tau] (FixMatch Eq. 2; ADSH thresholds per class)."""
        return confidence >= self.config.threshold

    def unlabeled_term(self, strong_logits, pseudo: PseudoLabels):
        """L_u: the masked CE of every strong view against the pseudo-labels (SAW weights it, DebiasPL
        offsets the logits)."""
        return consistency_loss(strong_logits, pseudo.labels, pseudo.mask.float())

    # ------------------------------------------------------------------ the parts' hooks and state
    def after_step(self, iteration: int) -> None:
        for part in self.parts.values():
            part.after_step(iteration)

    def periodic(self):
        return [hook for part in self.parts.values() for hook in part.periodic()]

    def on_epoch_end(self, epoch: int) -> None:
        for part in self.parts.values():
            part.on_epoch_end(epoch)

    def state_dict(self) -> dict:
        return hooks_state(self.parts)

    def load_state_dict(self, state: dict) -> None:
        load_hooks_state(self.parts, state)
