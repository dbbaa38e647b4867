"""Time SEVAL's fit (offsets, then thresholds) on validation logits of a given size, without a network.

    python benchmarks/seval_fit_time.py --classes 10 --per-class 500 [--threshold-groups 0] [--fits 3]

The logits mimic a trained but head-biased model: a class signal that grows fit after fit, a bias
falling from the first class to the last, Gaussian noise (seeded). scipy's solvers stop when their
tolerance is met, so the time depends on the logits; random images through an untrained network (as
``benchmarks/pool_pass_time.py`` uses) give an easier problem. Prints the seconds of each fit and of its
offset part.
"""

from __future__ import annotations

import argparse
import time

import torch

from cissl.algorithms import AlgorithmContext, ValidationPredictions
from cissl.algorithms.seval import Seval
from cissl.config import algorithm_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--threshold-groups", type=int, default=0)
    parser.add_argument("--fits", type=int, default=3)
    args = parser.parse_args()
    k = args.classes
    config = algorithm_defaults("fixmatch_seval")
    config = type(config)(**{**config.__dict__, "threshold_groups": args.threshold_groups})
    context = AlgorithmContext(num_classes=k, labeled_counts=tuple(range(k, 0, -1)), feature_dim=4,
                               iterations=500 * (args.fits + 1), epoch_length=500)
    method = Seval(config, context)
    labels = torch.arange(k).repeat_interleave(args.per_class)
    gen = torch.Generator().manual_seed(0)
    bias = torch.linspace(2.0, -2.0, k)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; validation {len(labels)} images, "
          f"{k} classes, threshold groups {args.threshold_groups or k}")
    for fit in range(args.fits):
        logits = torch.randn(len(labels), k, generator=gen) * 1.2 + bias
        logits += torch.nn.functional.one_hot(labels, k) * (1.5 + 0.8 * fit)
        predictions = ValidationPredictions({"main": logits}, labels)
        start = time.perf_counter()
        method.config = type(config)(**{**config.__dict__, "fit_thresholds": False})
        method.on_validation(500 * (fit + 1) - 1, predictions)
        offsets = time.perf_counter() - start
        method.config = type(config)(**{**config.__dict__, "fit_offsets": False})
        method.on_validation(500 * (fit + 1) - 1, predictions)
        total = time.perf_counter() - start
        print(f"fit {fit}: {total:.2f} s (offsets {offsets:.2f} s, thresholds {total - offsets:.2f} s)")


if __name__ == "__main__":
    main()
