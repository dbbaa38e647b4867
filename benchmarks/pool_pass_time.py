"""Time the passes a method makes between steps against the training steps they come between, on a
setting's network and split sizes: the per-epoch pool pass of SAW and ADSH (the EMA model predicts every
unlabeled image once an epoch), or SEVAL's fit (the EMA model predicts the validation split, then the
offsets and thresholds are fitted on it, every ``algorithm.fit_every`` steps), or CoSSL's stage (the EMA
model predicts the labeled images and the pool, then the teacher head is warmed up; once a run).

    python benchmarks/pool_pass_time.py --config CONFIG [--algorithm fixmatch_saw] [--steps 4] [key=value ...]

Synthetic images with the setting's shape and split sizes (as ``cissl bench throughput --synthetic``);
the pass's cost depends on the pool size and the network, not on the pixels (SEVAL's fit does depend on
the logits: random images give a model that predicts one class, so its fit here is a rough guide).
Prints the pool (or validation split) size, the seconds of one pass (the engine's own
``pool_predictions`` / ``validation_predictions``, and for SEVAL the fit), the median seconds of a
training step (``--steps`` after one warm-up step) and the pass as a share of the steps between two
passes (``train.epoch_length``, the method's ``validation_every``, or for a stage the whole run).
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
    step = statistics.median(steps)
    every = trainer.validation_every
    stages = sorted(trainer.stage_iterations)
    if stages:  # CoSSL: the EMA network on the labeled images and the pool, then the classifier warm-up
        start = time.perf_counter()
        trainer.start_stage(stages[0])
        seconds = time.perf_counter() - start
        every = config.train.iterations
        what = f"stage (labeled + pool pass, classifier warm-up) {seconds:.1f} s, once"
    elif every:  # SEVAL: the validation pass, then the fit on it
        start = time.perf_counter()
        predictions = trainer.validation_predictions()
        predict_s = time.perf_counter() - start
        trainer.algorithm.on_validation(every - 1, predictions)
        seconds = time.perf_counter() - start
        what = (f"validation split {len(predictions.labels)} images, pass + fit {seconds:.1f} s "
                f"(fit {seconds - predict_s:.1f} s)")
    else:
        start = time.perf_counter()
        pool = trainer.pool_predictions()
        seconds = time.perf_counter() - start
        every = config.train.epoch_length
        what = f"pool {len(pool.features)} images, one pass {seconds:.1f} s"
    between = every * step
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    print(f"{config.name or config.data.dataset}, {args.algorithm}: {what}; step {step:.2f} s (median of "
          f"{args.steps}); {every} steps {between:.0f} s: the pass adds {100 * seconds / between:.1f} % to them")


if __name__ == "__main__":
    main()
