"""Time the per-epoch pool pass of SAW and ADSH (the EMA model predicts every unlabeled image once an
epoch) against the epoch's training steps, on a setting's network and pool size.

    python benchmarks/pool_pass_time.py --config CONFIG [--algorithm fixmatch_saw] [--steps 4] [key=value ...]

Synthetic images with the setting's shape and split sizes (as ``cissl bench throughput --synthetic``);
the pass's cost depends on the pool size and the network, not on the pixels. Prints the pool size, the
seconds of one pass (the engine's own ``pool_predictions``), the median seconds of a training step
(``--steps`` after one warm-up step) and the pass as a share of one epoch (``train.epoch_length`` steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cissl.bench.throughput import synthetic_data
from cissl.config import load_config
from cissl.engine.precision import resolve_device
from cissl.engine.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--algorithm", default="fixmatch_saw")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides, args.algorithm)
    device = resolve_device(config.train.device)
    trainer = Trainer.from_config(config, synthetic_data(config, device), device=device)
    trainer.train_step()  # warm-up
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step()
        steps.append(time.perf_counter() - start)
    start = time.perf_counter()
    pool = trainer.pool_predictions()
    seconds = time.perf_counter() - start
    step = statistics.median(steps)
    epoch = config.train.epoch_length * step
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    print(f"{config.name or config.data.dataset}, {args.algorithm}: pool {len(pool.features)} images, one pass "
          f"{seconds:.1f} s; step {step:.2f} s (median of {args.steps}); epoch of {config.train.epoch_length} steps "
          f"{epoch:.0f} s: the pass adds {100 * seconds / epoch:.1f} % to it")


if __name__ == "__main__":
    main()
