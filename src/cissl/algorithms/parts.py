"""Parts a FixMatch-family method is composed of, chosen by configuration.

The SeMi paper's tables compare rows such as "FixMatch + LA w/ DASO" and "FixMatch + ABC w/ DASO":
a base method, its labeled loss (CE or LA), an auxiliary head and a pseudo-label refiner. In cissl
the base is :class:`~cissl.algorithms.fixmatch.FixMatch`; its config chooses

- ``logit_adjust`` (labeled loss CE or LA) and
- ``refiner``: a :class:`PseudoLabelRefiner` (``REFINERS``; e.g. DARP, DASO, distribution alignment),
- ``aux_head``: an :class:`AuxiliaryHead` (``AUX_HEADS``; e.g. ABC's balanced head),

each by name with its own options (``algorithm.refiner: {name: ..., ...}``). A named preset of the
algorithm registry fixes a combination (a table row). ``none`` is registered for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.base import AlgorithmContext, Batch, Hooks
from cissl.algorithms.components.pseudo_label import PseudoLabels
from cissl.algorithms.components.views import Views
from cissl.algorithms.registry import AUX_HEADS, REFINERS
from cissl.schema import NamedConfig, option


class PseudoLabelRefiner(Hooks):
    """Turns the weak views' class probabilities into the pseudo-label distribution, and may add a
    loss of its own (DASO's semantic alignment). Gets the step's views and batch (pool positions in
    ``batch.u_index``) and keeps its state through the :class:`Hooks` interface.

    ``masks_refined``: the confidence mask is taken on the refined distribution (distribution
    alignment, CReST+); set it False where a method takes the mask on the unrefined one and only
    the labels from the refinement (as USB runs DARP and DASO).
    """

    masks_refined = True

    def __init__(self, config, context: AlgorithmContext):
        self.config = config
        self.context = context
        self.ema_model = None  # the engine's EMA network (set through the method that owns the part)

    def refine(self, probs: torch.Tensor, views: Views, batch: Batch, iteration: int) -> torch.Tensor:
        """(B_u, K) probabilities in, (B_u, K) pseudo-label distribution out (no gradient)."""
        raise NotImplementedError(f"{type(self).__name__} must implement refine()")

    def refine_auxiliary(self, probs: torch.Tensor) -> torch.Tensor:
        """The same refinement for an auxiliary head's weak-view probabilities in this step, for
        heads that ask for it (ABC w/ DASO); called after :meth:`refine`. Default: unchanged."""
        return probs

    def loss(self, model, views: Views, batch: Batch, pseudo: PseudoLabels, iteration: int):
        """An extra loss term and its metrics, or (None, {})."""
        return None, {}


class AuxiliaryHead(Hooks):
    """An extra head trained beside the standard one from the same step (ABC's balanced head).

    ``head`` names the model head it owns (the engine builds it); with ``reported`` true, evaluation
    reports it instead of ``main``."""

    head = "aux"
    reported = False

    def __init__(self, config, context: AlgorithmContext):
        self.config = config
        self.context = context
        self.ema_model = None  # the engine's EMA network (set through the method that owns the part)
        self.refiner: PseudoLabelRefiner | None = None  # the method's refiner, if any (set by the method)

    def loss(self, model, views: Views, batch: Batch, pseudo: PseudoLabels, iteration: int):
        """(loss term, metrics) of this head for the step."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")


@dataclass(frozen=True)
class NoPartConfig(NamedConfig):
    name: str = option("none", help="no part")


REFINERS.register("none", NoPartConfig, summary="the weak view's probabilities as they are")(None)
AUX_HEADS.register("none", NoPartConfig, summary="no auxiliary head")(None)


def build_part(registry, config, context: AlgorithmContext):
    """The part a ``refiner`` / ``aux_head`` section names, or None for ``none``."""
    target = registry.entry(config.name).target
    return None if target is None else target(config, context)
