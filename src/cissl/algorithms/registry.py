"""The registries of methods and of the parts FixMatch-family methods are composed of.

- ``ALGORITHMS``: ``algorithm.name`` -> the method's class and config class (and a preset, for
  variants that share a class: ``fixmatch_la`` is ``fixmatch`` with ``logit_adjust: true``).
- ``REFINERS``: ``algorithm.refiner.name`` -> a :class:`~cissl.algorithms.parts.PseudoLabelRefiner`.
- ``AUX_HEADS``: ``algorithm.aux_head.name`` -> an :class:`~cissl.algorithms.parts.AuxiliaryHead`.

A module registers its entries with a class decorator, e.g. ``@register("fixmatch", FixMatchConfig)``.
"""

from __future__ import annotations

from cissl.schema import Entry, Registry

ALGORITHMS = Registry("algorithm", "algorithm.name")
REFINERS = Registry("pseudo-label refiner", "algorithm.refiner.name")
AUX_HEADS = Registry("auxiliary head", "algorithm.aux_head.name")

register = ALGORITHMS.register


def entry(name: str) -> Entry:
    return ALGORITHMS.entry(name)


def algorithm_names() -> list[str]:
    return ALGORITHMS.names()
