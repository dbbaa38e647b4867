"""Where the time of one training step goes: torch.profiler over a few steps of a configured run.

    python benchmarks/profile_step.py --config FILE [--algorithm NAME] [--device cpu|cuda] [--steps N] [key=value ...]

Prints the number of operator calls and device kernels per step (launch overhead dominates a small
network on a GPU), the host<->device synchronisations with the source line of each (a step that
waits for the device cannot queue the next step's work while the device computes), and the
operators that take the most time.
Uses random images of the configured data set's shape (as ``cissl bench throughput --synthetic``).
"""

from __future__ import annotations

import argparse
import collections
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from cissl.bench.throughput import synthetic_data
from cissl.config import load_config
from cissl.engine.precision import resolve_device
from cissl.engine.trainer import Trainer


def sync_sources(step, steps: int) -> collections.Counter:
    """Host<->device synchronisations PyTorch reports (``torch.cuda.set_sync_debug_mode``) while
    ``step`` runs ``steps`` times, counted by the innermost frame of this repository that caused them."""
    counts: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        # torch's text for a sync (c10 warn_or_error_on_sync); skips the mode's own "prototype" notice
        if "called a synchronizing CUDA operation" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "/cissl/" in f.filename or "benchmarks" in f.filename]
        where = f"{frames[-1].filename.split('/src/')[-1]}:{frames[-1].lineno} {frames[-1].line}" if frames else (
            f"{filename}:{lineno}")
        counts[where] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--algorithm")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, list(args.overrides) + [f"train.device={args.device}"], args.algorithm)
    device = resolve_device(config.train.device)
    trainer = Trainer.from_config(config, synthetic_data(config, device), device=device)
    for _ in range(args.warmup):
        trainer.train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    ops = [e for e in events if e.device_type.name == "CPU" and e.name.startswith("aten::")]
    kernels = [e for e in events if e.device_type.name == "CUDA"]
    syncs = collections.Counter(e.name for e in events
                                if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item",
                                              "aten::_local_scalar_dense", "aten::nonzero"))
    print(f"{config.algorithm.name}, {config.train.precision}, compile={config.train.compile}, device {device}")
    print(f"per step: {len(ops) / args.steps:.0f} aten operator calls (nested included), "
          f"{len(kernels) / args.steps:.0f} device kernels/copies")
    print("per step, sync points: " + (", ".join(f"{k} {v / args.steps:.1f}" for k, v in syncs.items()) or "none"))
    if device.type == "cuda":
        sources = sync_sources(trainer.train_step, args.steps)
        print("per step, synchronising calls by source (torch.cuda.set_sync_debug_mode): "
              + ("; ".join(f"{where} x{n / args.steps:.1f}" for where, n in sources.most_common()) or "none"))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
