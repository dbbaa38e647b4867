"""Time DARP's refinement of a whole pool (removal of small entries + the dual solver), the work DARP
adds every `period` steps after its warm-up, at the pool sizes of the paper's settings.

    python benchmarks/darp_solve_time.py [--device cpu|cuda] [--repeats 3]

Predictions are random softmax rows biased toward the first classes (a long-tailed model); the
solver's cost depends on the pool size, the classes and how many root-finder steps converge, not on
the pixel values. Prints one line per setting: pool size, classes, median seconds per solve.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cissl.algorithms.darp import darp_solve, truncate_small_entries

# (setting, pool size, classes): DASO-protocol pools (unlabeled disjoint from labeled)
SETTINGS = [("CIFAR-10-LT consistent N1 1500 / M1 3000", 7443, 10),
            ("CIFAR-10-LT uniform N1 500 / M1 4000", 40000, 10),
            ("CIFAR-100-LT consistent N1 150 / M1 300", 11720, 100),
            ("STL-10-LT (all 100k unlabeled)", 100000, 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    for name, n, k in SETTINGS:
        bias = torch.linspace(2.0, -2.0, k)
        predictions = torch.softmax(torch.randn(n, k, generator=gen) * 2 + bias, dim=1).to(device)
        counts = torch.softmax(bias, 0).double() * n  # labeled-like target, scaled to the pool
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            darp_solve(truncate_small_entries(predictions, counts, 2.0), counts, iterations=10)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"{name}: pool {n} x {k} classes: {statistics.median(times):.3f} s per refinement "
              f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
