"""How far one process's training moves with its CPU thread count, and that it does not move with a
call of ``torch.set_num_threads`` alone (the reason bit-exact resume holds at one thread count only).

    python benchmarks/thread_drift.py [--algorithm fixmatch_abc] [--steps 5] [key=value ...]

Trains the same few steps three times, each in a fresh process started with OMP_NUM_THREADS=1: without a
thread call, with ``torch.set_num_threads(1)`` after the imports, and with ``torch.set_num_threads(2)``.
Default run: digits-LT (configs/quickstart.yaml), a WRN-10-1, batch 16, threshold 0 (every unlabeled row
takes part, so no mask can flip) and ABC's head on from the first step. Prints, against the run without
a call, the largest difference of the logits of the first forward and of the weights after each step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
SETTINGS = ["model.depth=10", "model.widen=1", "train.batch_size=16", "train.device=cpu", "train.iterations=20",
            "train.report_last=1", "train.epoch_length=1", "algorithm.threshold=0.0"]
ABC = ["algorithm.aux_head.threshold=0.0"]
VARIANTS = [("no thread call", 0), ("torch.set_num_threads(1)", 1), ("torch.set_num_threads(2)", 2)]


def train(threads: int, algorithm: str, steps: int, overrides: list[str], out: Path) -> None:
    """The child: ``steps`` steps of a fresh run; saves the first forward's logits and the weights."""
    from cissl.config import load_config
    from cissl.engine.data import prepare_data
    from cissl.engine.trainer import Trainer

    if threads:
        torch.set_num_threads(threads)
    config = load_config(CONFIG, SETTINGS + (ABC if "abc" in algorithm else []) + overrides, algorithm)
    device = torch.device("cpu")
    trainer = Trainer.from_config(config, prepare_data(config, device), None, None, device)
    first = []
    forward = trainer.model.forward

    def noted(*args, **kwargs):
        output = forward(*args, **kwargs)
        if not first:
            first.append({name: logits.detach().clone() for name, logits in output.logits.items()})
        return output

    trainer.model.forward = noted
    weights = []
    for _ in range(steps):
        trainer.train_step()
        weights.append({name: value.clone() for name, value in trainer.model.state_dict().items()})
    torch.save({"threads": torch.get_num_threads(), "first": first[0], "weights": weights}, out)


def largest_difference(a: dict, b: dict) -> float:
    return max((a[name].double() - b[name].double()).abs().max().item() for name in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="fixmatch_abc")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.child is not None:
        train(args.child, args.algorithm, args.steps, overrides, args.out)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as folder:
        saved = []
        for name, threads in VARIANTS:
            out = Path(folder) / f"{threads}.pt"
            subprocess.run([sys.executable, __file__, "--child", str(threads), "--out", str(out), "--algorithm",
                            args.algorithm, "--steps", str(args.steps), *overrides], env=env, check=True)
            saved.append(torch.load(out, weights_only=True))
    base = saved[0]
    print(f"{args.algorithm}, {args.steps} steps, against one process without a thread call "
          f"({base['threads']} thread; OMP_NUM_THREADS=1):")
    for (name, _), run in zip(VARIANTS[1:], saved[1:]):
        steps = ", ".join(f"{largest_difference(w, v):.1e}" for w, v in zip(run["weights"], base["weights"]))
        first = largest_difference(run["first"], base["first"])
        print(f"  {name} ({run['threads']} thread(s)): first logits {first:.1e}; weights after each step {steps}")


if __name__ == "__main__":
    main()
