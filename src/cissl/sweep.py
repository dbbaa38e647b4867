"""Run a grid of settings x algorithms x seeds; skip finished runs, resume interrupted ones."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cissl.config import load_config
from cissl.engine.checkpoint import latest_checkpoint
from cissl.engine.run import resume_run, start_run
from cissl.evaluation.report import write_report
from cissl.rundir import RunDir


def plan(configs: list[str], algorithms: list[str] | None, seeds: list[int], out: Path,
         overrides: list[str] | None = None) -> list[tuple[object, Path]]:
    """(config, run directory) for every cell of the grid, validated before anything runs.

    An algorithm equal to the config's own keeps the config's hyperparameters; any other runs with
    its defaults. Run directories: OUT/<setting name>/<algorithm>/seed<k>.
    """
    jobs = []
    for path in configs:
        base = load_config(path, overrides)
        for algorithm in algorithms or [base.algorithm.name]:
            switch = None if algorithm == base.algorithm.name else algorithm
            for seed in seeds:
                config = load_config(path, [*(overrides or []), f"train.seed={seed}"], switch)
                setting = config.name or Path(path).stem
                jobs.append((config, Path(out) / setting / algorithm / f"seed{seed}"))
    return jobs


def run_sweep(configs, algorithms, seeds, out: Path, overrides=None, quiet: bool = True, stream=None) -> list[dict]:
    stream = stream or sys.stdout
    jobs = plan(configs, algorithms, seeds, out, overrides)
    for i, (config, run_dir) in enumerate(jobs, start=1):
        label = f"[{i}/{len(jobs)}] {run_dir}"
        if RunDir(run_dir).results.is_file():
            print(f"{label}: finished, skipped", file=stream, flush=True)
            continue
        start = time.perf_counter()
        if latest_checkpoint(RunDir(run_dir).checkpoints) is not None:
            print(f"{label}: resuming", file=stream, flush=True)
            results = resume_run(run_dir, quiet=quiet)
        else:
            print(f"{label}: starting", file=stream, flush=True)
            results = start_run(config, run_dir, quiet=quiet)
        print(f"{label}: top-1 {100 * results['top1']:.2f} %, balanced {100 * results['balanced_accuracy']:.2f} % "
              f"({time.perf_counter() - start:.0f} s)", file=stream, flush=True)
    return write_report(out)
