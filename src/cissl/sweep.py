"""Run a grid of settings x algorithms x hyperparameter values x seeds (or a list of jobs); skip
finished runs, resume interrupted ones, run several side by side, tabulate."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple

from cissl.config import LOCATION_KEYS, flat_keys, load_config, name_differences
from cissl.engine.checkpoint import latest_checkpoint
from cissl.engine.run import check_installed, resume_run, start_run
from cissl.engine.stop import StopSignals, TrainingStopped
from cissl.errors import CisslError, ConfigError
from cissl.evaluation.report import write_report
from cissl.rundir import RunDir, ensure_folder
from cissl.wording import counted


class Job(NamedTuple):
    config: object
    run_dir: Path


def grid_points(grid: list[str] | None) -> list[list[str]]:
    """``["algorithm.tau2=0.5,1,2", "optim.lr=0.01,0.03"]`` -> every combination as a list of overrides
    (no grid: one combination, without overrides)."""
    axes = []
    for item in grid or []:
        key, sep, values = item.partition("=")
        candidates = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(candidates):
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,... (e.g. algorithm.tau2=0.5,1,2)")
        axes.append([f"{key.strip()}={v}" for v in candidates])
    return [list(point) for point in itertools.product(*axes)]


def plan(configs: list[str], algorithms: list[str] | None, seeds: list[int], out: Path,
         overrides: list[str] | None = None, grid: list[str] | None = None, by_seed: bool = False) -> list[Job]:
    """A job for every cell of the grid, validated before anything runs: config by config, algorithm by
    algorithm, seed by seed; ``by_seed`` puts every job of the first seed first, then the next seed's
    (otherwise in the same order), so that a sweep stopped early holds whole seeds of every row.

    An algorithm equal to the config's own keeps the config's hyperparameters; any other runs with
    its defaults (and the config's ``methods`` options for it). Run directories:
    OUT/<setting>/<algorithm>/seed<k>, or OUT/<setting>/<algorithm>/<key=value,...>/seed<k> with a
    grid, whose runs are named ``<setting> [key=value,...]`` so that tables keep the values apart.
    """
    jobs = []
    for path in configs:
        base = load_config(path, overrides)
        for algorithm in algorithms or [base.algorithm.name]:
            switch = None if algorithm == base.algorithm.name else algorithm
            for point in grid_points(grid):
                for seed in seeds:
                    config = load_config(path, [*(overrides or []), *point, f"train.seed={seed}"], switch)
                    setting = config.name or Path(path).stem
                    folder = Path(out) / setting / algorithm
                    if point:
                        label = ",".join(point)
                        config = config.replace({"name": f"{setting} [{label}]"})
                        folder = folder / label
                    jobs.append(Job(config, folder / f"seed{seed}"))
    if by_seed:
        jobs.sort(key=lambda job: seeds.index(job.config.train.seed))  # stable: the order within a seed stays
    return jobs


def read_jobs_file(path: Path, out: Path, overrides: list[str] | None = None) -> list[Job]:
    """Jobs from a file of lines ``name config algorithm [key=value ...]`` ('#' starts a comment), each
    as ``cissl train --config config --algorithm algorithm key=value ...`` would run it, in OUT/<name>;
    ``overrides`` apply to every job first."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CisslError(f"cannot read jobs file {path}: {exc.strerror or exc}") from None
    jobs, names = [], set()
    for number, line in enumerate(lines, start=1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) < 3:
            raise CisslError(f"{path}:{number}: expected 'name config algorithm [key=value ...]', got {line!r}")
        name, config, algorithm, *own = words
        if name in names:
            raise CisslError(f"{path}:{number}: job name {name!r} is used twice")
        names.add(name)
        jobs.append(Job(load_config(config, [*(overrides or []), *own], algorithm), Path(out) / name))
    return jobs


def _differences(first, second, names: tuple[str, str]) -> str | None:
    """The run-defining keys (all but LOCATION_KEYS) whose values differ between two configs, each shown with
    both values under ``names``."""
    first, second = (flat_keys(config.to_dict()) for config in (first, second))
    differ = sorted(key for key in (first.keys() | second.keys()) - LOCATION_KEYS if first.get(key) != second.get(key))
    return name_differences(differ, lambda key: f"{key} ({first.get(key)!r} {names[0]}, {second.get(key)!r} "
                                                f"{names[1]})")


def check_same_run(job: Job) -> None:
    """A run directory that a sweep finds started or finished must hold the run it plans: the same
    resolved config (else a changed override would count an old run as this one)."""
    saved_path = RunDir(job.run_dir).config
    if not saved_path.is_file():
        return
    differ = _differences(load_config(saved_path), job.config, ("there", "planned"))
    if differ:
        raise CisslError(f"{job.run_dir} holds a run with other settings: {differ}; "
                         f"choose another --out or remove that run")


def unique_jobs(jobs: list[Job]) -> list[Job]:
    """Each run directory once. A seed, algorithm or config given twice plans the same run again (run side by
    side, the copy would wait on the first's lock and fail); two different configs planned into one directory
    (two config files with the same ``name``) are refused: the second would have resumed the first's run."""
    kept: dict[Path, Job] = {}
    for job in jobs:
        first = kept.setdefault(Path(job.run_dir), job)
        if first is job:
            continue
        differ = _differences(first.config, job.config, ("first", "then"))
        if differ:
            raise ConfigError(f"two jobs of this sweep would share the run directory {job.run_dir} with other "
                              f"settings: {differ}; give the configs different names (the config key 'name')")
    return list(kept.values())


def _run_job(job: Job, quiet: bool) -> dict:
    """Resume the job's run from its last checkpoint, or start it."""
    if latest_checkpoint(RunDir(job.run_dir).checkpoints) is not None:
        return resume_run(job.run_dir, quiet=quiet)
    return start_run(job.config, job.run_dir, quiet=quiet)


def _unfinished(jobs: list[Job], quiet: bool, stream) -> list[tuple[str, Job]]:
    """The jobs without a ``results.json``, each with its ``[i/n]`` label; the others are said to be skipped.
    A package that one of them needs and this machine lacks fails the sweep here, before anything runs."""
    labels = [f"[{i}/{len(jobs)}] {job.run_dir}" for i, job in enumerate(jobs, start=1)]
    finished = [RunDir(job.run_dir).results.is_file() for job in jobs]
    todo = [(label, job) for label, job, done in zip(labels, jobs, finished) if not done]
    for _, job in todo:
        check_installed(job.config, quiet)
    for label, done in zip(labels, finished):
        if done:
            print(f"{label}: finished, skipped", file=stream, flush=True)
    return todo


def _summary(results: dict, seconds: float) -> str:
    return (f"top-1 {100 * results['top1']:.2f} %, balanced {100 * results['balanced_accuracy']:.2f} % "
            f"({seconds:.0f} s)")


def run_sweep(configs, algorithms, seeds, out: Path, overrides=None, quiet: bool = True, stream=None,
              grid: list[str] | None = None, jobs_file: Path | None = None, workers: int = 1,
              deadline: float | None = None, by_seed: bool = False) -> list[dict]:
    """Run every job (``plan`` of the grid, then the jobs file's), write OUT/results.md and .csv, and
    return the table's rows. ``workers`` > 1 runs that many jobs at once, each in its own process with
    its share of the CPU threads and its console output in ``<run dir>.log``; ``deadline`` (seconds)
    stops the running ones (a later sweep resumes them from their last checkpoint); ``by_seed``: see
    ``plan``."""
    stream = stream or sys.stdout
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if deadline is not None and deadline < 0:
        raise ConfigError(f"--deadline must be 0 or more seconds, got {deadline:g} (a clock time already past?)")
    threads = threads_per_job(workers)
    jobs = plan(configs, algorithms, seeds, out, overrides, grid, by_seed) if configs else []
    if jobs_file is not None:
        jobs += read_jobs_file(jobs_file, out, overrides)
    jobs = unique_jobs(jobs)
    for job in jobs:
        check_same_run(job)
    in_process = workers == 1 and deadline is None
    todo = _unfinished(jobs, quiet if in_process else False, stream)
    ensure_folder(out)  # a file of that name fails here once, not in every job
    if in_process:
        failed = []
        for label, job in todo:  # in this process; a run that fails on its input does not stop the others
            start = time.perf_counter()
            print(f"{label}: {'resuming' if latest_checkpoint(RunDir(job.run_dir).checkpoints) else 'starting'}",
                  file=stream, flush=True)
            try:
                results = _run_job(job, quiet)
            except CisslError as exc:
                failed.append(str(job.run_dir))
                print(f"{label}: FAILED: {exc}", file=stream, flush=True)
                continue
            print(f"{label}: {_summary(results, time.perf_counter() - start)}", file=stream, flush=True)
        where = "the lines above"
    else:
        failed = _run_side_by_side(todo, workers, threads, deadline, stream)
        where = "their logs: <run dir>.log"
    rows = write_report(out)
    if failed:
        in_order = [str(job.run_dir) for _, job in todo if str(job.run_dir) in failed]  # not in the order they ended
        raise CisslError(f"{len(failed)} of {len(todo)} runs did not finish: {', '.join(in_order)} "
                         f"({where}; run the same sweep again to resume them)")
    return rows


def _child(job: Job, log_path: Path, threads: int) -> None:
    """One job in a worker process: its share of threads, its output in its log. In a process group of its
    own, so that a signal reaches it once, from the sweep (:func:`_run_side_by_side`), whether it was sent
    to the terminal's whole group (Ctrl-C) or to the sweep alone (``kill``, a scheduler). It starts with the
    stop signals held (:func:`_signals_held`) and takes them only once it is in that group
    (:func:`_one_line_stop`)."""
    import torch

    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    torch.set_num_threads(threads)
    with open(log_path, "a", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        try:
            with _one_line_stop():
                _run_job(job, quiet=False)
        except CisslError as exc:  # bad input: one line, as the command line gives it
            print(f"cissl: error: {exc}")
            sys.exit(2)
        except TrainingStopped as exc:  # Ctrl-C / SIGTERM: the checkpoint of the last step is written
            print(f"cissl: {exc}")
            sys.exit(128 + exc.signal_number)
        except BaseException:  # the log keeps the whole story; the parent reports the exit status
            traceback.print_exc()
            sys.exit(1)


# SIGHUP only where the system has it; held even when ignored (nohup), where it is then simply dropped
_HELD = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


@contextmanager
def _signals_held():
    """Hold the stop signals (they wait; none is lost) while a worker starts and is registered: arriving in
    between, a signal would stop the sweep without reaching the worker it had just started, which would then
    run on alone. The worker inherits them held through its start-up, so a terminal's Ctrl-C that reaches it
    while it still imports in the sweep's process group waits too (:func:`_one_line_stop`)."""
    if not hasattr(signal, "pthread_sigmask"):  # not on Windows
        yield
        return
    # multiprocessing starts its resource tracker with the first worker and then *unblocks* SIGINT and SIGTERM,
    # which would let them through here and into that worker's start-up: start it before holding them
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:  # a signal that waited is handled here, once the worker is in ``running``
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _one_line_stop():
    """In a worker, now in its own process group, for the whole of its job: a stop signal that waited since
    its start (the sweep's, or a Ctrl-C that reached it while it started) is taken here, and one outside the
    training loop's own handling (:class:`StopSignals`: a checkpoint of the step, then the stop) stops the
    job with one line in its log and exit status 128 + the signal: while it loads its data and builds its
    model, during its final evaluation, or a second signal. Nothing of the run is lost that a checkpoint had
    kept: the same sweep command resumes it. A signal the worker inherited as ignored (SIGHUP under nohup)
    stays ignored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return

    def stop(number, frame):
        raise TrainingStopped(number, f"{signal.Signals(number).name}: stopped between checkpoints; the same "
                                      f"sweep command resumes it from its last one (or starts it again)")

    previous = {sig: signal.signal(sig, stop) for sig in _HELD if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)  # a waiting signal's handler runs within this call
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Signalled(Exception):
    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


@contextmanager
def _stop_signals_raise():
    """SIGINT and SIGTERM raise :class:`_Signalled` here, whatever the sweep inherited (a shell's background
    job starts with SIGINT ignored): the sweep must pass them to its workers and stop with them rather than
    start the next jobs, or die and leave them running. So does SIGHUP (its workers, in groups of their own,
    would not hear a closed terminal), unless the sweep was started ignoring it (nohup)."""
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
        yield
        return

    def handle(number, frame):
        raise _Signalled(number)

    # the stop signals the workers are held from; SIGHUP (a closed terminal) left alone under nohup, which ignores it
    watched = [sig for sig in _HELD if sig in StopSignals.SIGNALS or signal.getsignal(sig) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handle) for sig in watched}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def threads_per_job(workers: int) -> int:
    """The CPU threads of each job that runs beside others: ``OMP_NUM_THREADS`` if set, else cores / workers."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return max(1, (os.cpu_count() or 1) // workers)
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"OMP_NUM_THREADS {value!r} is not a whole number of threads above 0; set it to one "
                          f"or unset it to give each job the cores / --workers")
    return int(value)


def _run_side_by_side(todo, workers: int, threads: int, deadline: float | None, stream) -> list[str]:
    running: dict = {}
    signalled: set = set()  # the workers already sent a signal: a second one would stop them without a checkpoint
    try:
        with _stop_signals_raise():
            return _side_by_side_loop(todo, workers, threads, deadline, stream, running, signalled)
    except _Signalled as exc:  # each worker gets the signal once, writes a checkpoint of its step and stops
        name = signal.Signals(exc.number).name
        alive = [process for process, *_ in running.values() if process.is_alive()]
        print(f"interrupted ({name}): waiting for {counted(len(alive), 'running run')} to checkpoint and stop",
              file=stream, flush=True)
        # a run stops with a checkpoint on the signals StopSignals catches; any other (SIGHUP) goes on as SIGTERM
        _stop_workers(alive, exc.number if exc.number in StopSignals.SIGNALS else signal.SIGTERM, 600, signalled)
        raise TrainingStopped(exc.number, f"sweep stopped on {name}; the same sweep command resumes its runs "
                                          f"from their checkpoints") from None


def _stop_workers(processes, number: int, grace: float, signalled: set) -> None:
    """Send each worker not in ``signalled`` ``number`` (its run checkpoints its step and exits), wait up to
    ``grace`` seconds for them all, then kill what is left."""
    for process in processes:
        if process in signalled:  # e.g. a Ctrl-C while the deadline's SIGTERM is being obeyed
            continue
        signalled.add(process)
        try:
            os.kill(process.pid, number)
        except ProcessLookupError:  # it has just finished
            pass
    end = time.monotonic() + grace
    for process in processes:
        process.join(timeout=max(0.0, end - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _side_by_side_loop(todo, workers: int, threads: int, deadline: float | None, stream, running: dict,
                       signalled: set) -> list[str]:
    context = multiprocessing.get_context("spawn")  # a clean interpreter per run: no inherited torch state
    start, pending, failed = time.monotonic(), list(todo), []
    print(f"{counted(len(todo), 'run')}, {workers} at a time, {counted(threads, 'thread')} each", file=stream,
          flush=True)
    while pending or running:
        while pending and len(running) < workers:
            label, job = pending.pop(0)
            log_path = job.run_dir.with_name(job.run_dir.name + ".log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            process = context.Process(target=_child, args=(job, log_path, threads), daemon=True)
            with _signals_held():
                process.start()
                running[label] = (process, job, log_path, time.monotonic())
            print(f"{label}: started (log {log_path})", file=stream, flush=True)
        time.sleep(0.2)
        late = deadline is not None and time.monotonic() - start > deadline
        if late:  # SIGTERM, as a scheduler's: each run checkpoints its step, so the same sweep resumes it there
            _stop_workers([process for process, *_ in running.values() if process.is_alive()], signal.SIGTERM,
                          120, signalled)
        for label, (process, job, log_path, began) in list(running.items()):
            if process.is_alive():
                continue
            process.join()
            del running[label]
            results = RunDir(job.run_dir).results
            if process.exitcode == 0 and results.is_file():
                summary = _summary(json.loads(results.read_text(encoding="utf-8")), time.monotonic() - began)
                print(f"{label}: {summary}", file=stream, flush=True)
                continue
            failed.append(str(job.run_dir))
            if late:
                print(f"{label}: stopped at the deadline", file=stream, flush=True)
            else:
                tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
                print(f"{label}: FAILED (exit {process.exitcode}) {' '.join(tail)}", file=stream, flush=True)
        if late:
            for label, job in pending:
                failed.append(str(job.run_dir))
                print(f"{label}: not started (deadline)", file=stream, flush=True)
            break
    return failed
