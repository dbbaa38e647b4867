"""Algorithms by name. Importing this package registers every built-in method."""

from __future__ import annotations

from cissl.algorithms import fixmatch, semi, supervised  # noqa: F401  (registration)
from cissl.algorithms.base import Algorithm, AlgorithmContext, Batch, StepOutput
from cissl.algorithms.registry import algorithm_names, entry

__all__ = ["Algorithm", "AlgorithmContext", "Batch", "StepOutput", "algorithm_names",
           "algorithm_config_class", "algorithm_preset", "build_algorithm"]


def algorithm_config_class(name: str) -> type:
    return entry(name).config_cls


def algorithm_preset(name: str) -> dict:
    return dict(entry(name).preset)


def build_algorithm(config, context: AlgorithmContext) -> Algorithm:
    """The algorithm a validated ``config.algorithm`` section names."""
    return entry(config.name).algorithm_cls(config, context)
