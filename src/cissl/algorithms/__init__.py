"""Methods by name. Importing this package imports every module in it, which registers its methods:
adding a method is adding a module (``docs/algorithms.md``)."""

from __future__ import annotations

import importlib
import pkgutil

from cissl.algorithms.base import (
    Algorithm,
    AlgorithmContext,
    Batch,
    GenerationUpdate,
    HeadWeights,
    Hooks,
    LabeledPredictions,
    Periodic,
    PoolPredictions,
    StepOutput,
    ValidationPredictions,
    ViewSpec,
)
from cissl.algorithms.registry import ALGORITHMS, AUX_HEADS, REFINERS, algorithm_names, entry

__all__ = ["ALGORITHMS", "AUX_HEADS", "REFINERS", "Algorithm", "AlgorithmContext", "Batch", "GenerationUpdate",
           "HeadWeights", "Hooks", "LabeledPredictions", "Periodic", "PoolPredictions", "StepOutput",
           "ValidationPredictions", "ViewSpec", "algorithm_class", "algorithm_names", "build_algorithm"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def algorithm_class(name: str) -> type:
    return entry(name).target


def build_algorithm(config, context: AlgorithmContext) -> Algorithm:
    """The method a validated ``config.algorithm`` section names."""
    return entry(config.name).target(config, context)
