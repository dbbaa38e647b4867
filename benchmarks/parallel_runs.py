"""Run a list of `cissl train` jobs, several at once, until a deadline; summarise each finished run.

Meant for exploring settings on a machine with many cores (or one GPU shared by several
processes): each line of JOBS is ``name config algorithm [key=value ...]`` ('#' starts a comment).
Runs go to OUT/runs/<name>; after each one finishes, one line is appended to OUT/summary.jsonl
(top-1, thirds, mean of last k, wall time, mask rate, the test accuracy at every evaluation).
Jobs start in file order; at the deadline the running ones are stopped and reported with the
evaluations they reached.

    PYTHONPATH=src python benchmarks/parallel_runs.py JOBS [key=value ...] --out OUT --workers 12 --deadline 480

key=value overrides right after JOBS apply to every job (e.g. train.device=cuda). Several processes
on one GPU pay off while each is bound by its host (small nets); big nets contend for the GPU (see
benchmarks/RESULTS.md, section 2: thirteen 9000-iteration runs of WRN-16/28 side by side on an
H200 mostly did not finish in 330 s, where one took 125-154 s beside a few small ones).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cissl.evaluation.plots import read_evaluations  # no matplotlib needed for this one
from cissl.rundir import RunDir


def read_jobs(path: Path) -> list[tuple[str, list[str]]]:
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) < 3:
            sys.exit(f"{path}:{number}: expected 'name config algorithm [key=value ...]', got {line!r}")
        name, config, algorithm, *overrides = words
        jobs.append((name, ["--config", config, "--algorithm", algorithm, *overrides]))
    names = [name for name, _ in jobs]
    if len(set(names)) != len(names):
        sys.exit(f"{path}: job names must be unique")
    return jobs


def eval_curve(run_dir: Path, head: str = "main") -> tuple[list[tuple[int, float]], float | None]:
    """(iteration, test top-1) of every evaluation so far, and the last pseudo-label mask rate."""
    if not RunDir(run_dir).metrics.is_file():  # a job that failed before training
        return [], None
    records = [r for r in read_evaluations(run_dir) if head in r["test"]]
    mask = (records[-1].get("pseudo_labels") or {}).get("mask_rate") if records else None
    return [(r["iteration"], r["test"][head]["top1"]) for r in records], mask


def summarise(name: str, run_dir: Path) -> dict:
    results = json.loads(RunDir(run_dir).results.read_text())
    curve, mask = eval_curve(run_dir, results["reported_head"])
    keep = ("setting", "algorithm", "seed", "iterations", "top1", "many_accuracy", "medium_accuracy",
            "few_accuracy", "mean_last_top1", "wall_time_s", "device")
    return {"name": name, **{k: results[k] for k in keep}, "per_class": results["per_class_accuracy"],
            "last_mask_rate": mask, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds from start")
    parser.add_argument("overrides", nargs="*", help="key=value for every job (before the options)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    jobs = read_jobs(args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "summary.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start, pending, running = time.monotonic(), list(jobs), {}
    while pending or running:
        while pending and len(running) < args.workers:
            name, command = pending.pop(0)
            run_dir = args.out / "runs" / name
            log = open(args.out / f"{name}.log", "w")
            process = subprocess.Popen([sys.executable, "-m", "cissl", "train", *command, *args.overrides,
                                        "--out", str(run_dir), "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                                       env=env)
            running[name] = (process, run_dir, log)
            print(f"{time.monotonic() - start:6.0f} s  start {name}", flush=True)
        time.sleep(1.0)
        late = time.monotonic() - start > args.deadline
        for name, (process, run_dir, log) in list(running.items()):
            if process.poll() is None and not late:
                continue
            stopped = process.poll() is None
            if stopped:
                process.kill()
                process.wait()
            log.close()
            del running[name]
            if process.returncode == 0:
                record = summarise(name, run_dir)
                print(f"{time.monotonic() - start:6.0f} s  done  {name}: top-1 {100 * record['top1']:.2f} "
                      f"(last-k {100 * record['mean_last_top1']:.2f}, {record['wall_time_s']:.0f} s)", flush=True)
            else:
                reason = "stopped at the deadline" if stopped else f"exit {process.returncode}"
                tail = (args.out / f"{name}.log").read_text().strip().splitlines()[-1:]
                curves = {head: eval_curve(run_dir, head)[0] for head in ("main", "balanced")}  # how far it got
                record = {"name": name, "failed": reason, "log_tail": tail,
                          "curves": {head: curve for head, curve in curves.items() if curve}}
                print(f"{time.monotonic() - start:6.0f} s  FAIL  {name}: {reason} {tail}", flush=True)
            with summary.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if late:
            for name, _ in pending:
                print(f"not started: {name}", flush=True)
            break


if __name__ == "__main__":
    main()
