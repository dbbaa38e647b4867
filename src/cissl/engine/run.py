"""Run directories: start, resume and re-evaluate a training run (layout: :mod:`cissl.rundir`)."""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from cissl import distributed
from cissl.config import Config, load_config, save_config
from cissl.data.protocol import Split
from cissl.data.sources import check_source_installed
from cissl.engine.agreement import run_on_main
from cissl.engine.assemble import build_evaluation, last_generation_start, method_class
from cissl.engine.batches import global_batch_size
from cissl.engine.checkpoint import (
    check_checkpoint_belongs,
    first_line,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_newest_readable,
)
from cissl.engine.data import prepare_data, prepare_rank_data
from cissl.engine.init_from import load_initial_backbone
from cissl.engine.launch import launched, met_by_every_local_rank, torchrun_launch
from cissl.engine.logging import RunLogger, check_logging_packages, truncate_jsonl
from cissl.engine.precision import resolve_device
from cissl.engine.trainer import Trainer
from cissl.errors import CheckpointError, CisslError, ConfigError
from cissl.evaluation.distribution import average_accepted, estimate_class_counts
from cissl.evaluation.evaluate import evaluate_model, predict, predict_with_features
from cissl.evaluation.summary import summarize_run
from cissl.rundir import LOCK, RunDir, atomic_write_json, ensure_folder


def default_run_dir(config: Config) -> Path:
    setting = config.name or config.data.dataset
    return Path("runs") / f"{setting.replace('/', '_')}-{config.algorithm.name}-seed{config.train.seed}"


def _describe(config: Config, data, device) -> str:
    split = data.split
    line = (f"{config.name or config.data.dataset}: {config.algorithm.name}, {data.num_classes} classes, "
            f"{len(data.labeled)} labeled / {len(data.unlabeled)} unlabeled / {len(data.test)} test images, "
            f"labeled counts {split.labeled_counts}, device {device}")
    ranks = distributed.world_size()
    if distributed.active():
        tc = config.train
        total = global_batch_size(tc, ranks)
        line += (f"; DDP over {ranks} ranks ({torch.distributed.get_backend()}), global batch {total} labeled + "
                 f"{total * tc.mu} unlabeled ({total // ranks} + {total * tc.mu // ranks} per rank), batch norm "
                 f"{'over the global batch' if tc.sync_batchnorm else 'per rank'}")
    return line


def _logger(config: Config, run_dir: RunDir, stream, quiet: bool) -> RunLogger:
    tc = config.train
    return RunLogger(run_dir, tc.iterations, tc.tensorboard, stream or sys.stdout, quiet, tc.progress)


def check_installed(config: Config, quiet: bool) -> None:
    """The optional packages a training run of ``config`` imports (its data reader's; its method's; TensorBoard
    and rich in the process that writes the logs), checked before it reads its data or writes anything."""
    check_source_installed(config.data)
    method_class(config).check_installed(config.algorithm)
    launch = torchrun_launch()
    if launch is None or launch.rank == 0:  # rank 0 alone logs
        check_logging_packages(config.train, quiet)


def start_run(config: Config, run_dir: Path, stream=None, quiet: bool = False) -> dict:
    """Train a new run in ``run_dir`` (which must not hold checkpoints already). Under torchrun every
    rank trains; rank 0 alone claims and writes the run directory."""
    run = RunDir(run_dir)
    with met_by_every_local_rank():
        check_installed(config, quiet)
    with launched(config) as device, ExitStack() as held:
        def claim() -> None:
            prepare_run_directory(run)  # before the data load: a bad --out fails at once
            held.enter_context(run.exclusive())
            if latest_checkpoint(run.checkpoints) is not None or run.results.exists():
                raise CheckpointError(f"run directory {run} already holds a run; resume it with "
                                      f"`cissl train --resume {run}` or choose another --out")

        run_on_main(claim)
        return _start_claimed(config, run, device, stream, quiet)


def _start_claimed(config: Config, run: RunDir, device, stream, quiet: bool) -> dict:
    data = prepare_rank_data(config, device)
    logger = None
    if distributed.is_main():
        save_config(config, run.config)
        data.split.save(run.split)
        run.metrics.unlink(missing_ok=True)
        logger = _logger(config, run, stream, quiet)
    try:
        if logger:
            logger.message(_describe(config, data, device))
        trainer = Trainer.from_config(config, data, run, logger, device)
        if config.train.init_from:
            trainer.parent_algorithm, line = load_initial_backbone(trainer.parts, config)
            if logger:
                logger.message(line)
        return trainer.fit()
    finally:
        if logger:
            logger.close()


def prepare_run_directory(run: RunDir) -> None:
    """Create a new run's directory, or accept an empty one or one a run started in (it holds
    split.json); anything else (a file, a path under a file, a read-only or foreign folder) is one line."""
    ensure_folder(run.path)
    if not os.access(run.path, os.W_OK | os.X_OK):
        raise CisslError(f"--out {run}: the folder is not writable")
    if any(p.name != LOCK for p in run.path.iterdir()) and not run.split.is_file():
        raise CisslError(f"--out {run}: the folder holds files and is not a run directory (no split.json); "
                         f"choose an empty or new folder so that nothing of yours is overwritten")


def read_run_config(run_dir: Path) -> Config:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config(path)


def resume_run(run_dir: Path, stream=None, quiet: bool = False) -> dict:
    """Continue the run in ``run_dir`` from its newest checkpoint (or from scratch if it has none). Under
    torchrun rank 0 reads the checkpoint and hands it to every rank (at any number of ranks: the streams
    and the method's state are the same on all of them)."""
    run = RunDir(run_dir)
    with met_by_every_local_rank():
        config = read_run_config(run.path)
        check_installed(config, quiet)
    with launched(config) as device, ExitStack() as held:
        def claim():
            held.enter_context(run.exclusive())
            checkpoint, state, skipped = load_newest_readable(run.checkpoints)
            if state is not None:
                check_checkpoint_belongs(state, config, checkpoint)  # before the data load
            return checkpoint, state, skipped

        checkpoint, state, skipped = run_on_main(claim)
        return _resume_claimed(config, run, device, checkpoint, state, skipped, stream, quiet)


def _resume_claimed(config: Config, run: RunDir, device, checkpoint, state, skipped, stream, quiet: bool) -> dict:
    data = prepare_rank_data(config, device, Split.load(run.split))
    logger = None
    if distributed.is_main():
        truncate_jsonl(run.metrics, state["iteration"] if state else 0)
        logger = _logger(config, run, stream, quiet)
    try:
        trainer = Trainer.from_config(config, data, run, logger, device)
        for reason in skipped if logger else ():
            logger.message(f"warning: skipped the newer {reason}")
        if state is not None:
            trainer.load_state_dict(state)
            if logger:
                logger.message(f"resumed {run} from {checkpoint.name} at iteration {trainer.iteration}")
                written_by, ranks = int(state.get("world_size", 1)), distributed.world_size()
                if written_by != ranks:
                    logger.message(f"note: the checkpoint was written by {written_by} process(es), {ranks} continue "
                                   f"it: same streams and state; batch norm statistics over each rank's rows change "
                                   f"with the number of ranks unless train.sync_batchnorm is on")
        return trainer.fit()
    finally:
        if logger:
            logger.close()


@dataclass
class TrainedRun:
    """A run's network with the EMA weights of one checkpoint, its method with that checkpoint's state,
    its data and precision policy (no optimizer or streams)."""

    config: Config
    checkpoint: Path
    state: dict
    data: object
    model: object
    algorithm: object
    policy: object
    device: object


def load_trained_run(run: RunDir, config: Config, checkpoint: Path | None, purpose: str) -> TrainedRun:
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run.checkpoints)
    if checkpoint is None:
        raise CheckpointError(f"{run} has no checkpoint to {purpose}")
    state = load_checkpoint(checkpoint)
    check_checkpoint_belongs(state, config, checkpoint)
    device = resolve_device(config.train.device)
    data = prepare_data(config, device, Split.load(run.split))
    model, algorithm, policy = build_evaluation(config, data, device)
    _load_evaluation_state(model, algorithm, state, checkpoint)
    return TrainedRun(config, checkpoint, state, data, model, algorithm, policy, device)


def _load_evaluation_state(model, algorithm, state: dict, checkpoint: Path) -> None:
    """A checkpoint's EMA weights into the network and its method state into the method."""
    try:
        model.load_state_dict(state["ema"])
        algorithm.load_state_dict(state["algorithm"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint} does not match this run's config: {first_line(exc)}") from None


def load_run(run_dir: Path, checkpoint: Path | None = None) -> TrainedRun:
    """A finished or interrupted run's EMA model and method from a checkpoint (default: its newest)."""
    run = RunDir(run_dir)
    return load_trained_run(run, read_run_config(run.path), checkpoint, "load")


def features_on_test_set(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The features of a run's test images under its final EMA model (newest checkpoint) and their labels,
    on the CPU (``cissl report --tsne``)."""
    trained = load_run(run_dir)
    _, features = predict_with_features(trained.model, trained.data.test.images,
                                        trained.config.train.eval_batch_size, trained.policy)
    return features.cpu(), trained.data.test.labels.cpu()


def estimate_run_distribution(run_dir: Path, checkpoints: list[Path] | None = None, max_condition: float = 100.0,
                              every_checkpoint: bool = False) -> dict:
    """The unlabeled pool's class distribution estimated with a run's EMA model (its validation images
    give the confusion matrix; ``cissl.evaluation.distribution``), written to the run directory.

    One estimate per checkpoint (default: the newest; ``every_checkpoint``: each one the run keeps); the
    result's ``counts`` are the mean of the accepted ones, as the DASO framework combines the estimates
    of a run's evaluations, or None when none was accepted."""
    if not max_condition >= 1:  # a confusion matrix's condition number is at least 1 (and nan compares false)
        raise CisslError(f"the condition number limit must be 1 or more, got {max_condition}")
    run = RunDir(run_dir)
    config = read_run_config(run.path)
    if config.data.val_per_class < 1:
        raise ConfigError(f"{run} holds out no validation images (data.val_per_class = 0): the estimate needs them")
    if every_checkpoint:
        if checkpoints:
            raise CisslError("name checkpoints or ask for every checkpoint of the run, not both")
        checkpoints = list_checkpoints(run.checkpoints)
    first, *others = [Path(c) for c in checkpoints or []] or [None]
    trained = load_trained_run(run, config, first, "estimate with")  # network, method and data, built once
    used, estimates = [trained.checkpoint], [_estimate_with(run, trained, max_condition)]
    for checkpoint in others:
        state = load_checkpoint(checkpoint)
        check_checkpoint_belongs(state, config, checkpoint)
        _load_evaluation_state(trained.model, trained.algorithm, state, checkpoint)
        used.append(checkpoint)
        estimates.append(_estimate_with(run, trained, max_condition))
    mean = average_accepted(estimates)
    result = {"counts": None if mean is None else mean.tolist(), "accepted": mean is not None,
              "accepted_estimates": sum(e.accepted for e in estimates),
              "estimates": [{"checkpoint": str(c), **e.as_dict()} for c, e in zip(used, estimates)],
              "head": trained.algorithm.reported_head, "pool_size": len(trained.data.unlabeled),
              "max_condition": max_condition}
    atomic_write_json(run.unlabeled_distribution, result)
    return result


def _estimate_with(run: RunDir, trained: TrainedRun, max_condition: float):
    """The estimate of the weights loaded in ``trained`` now."""
    data, algorithm, head = trained.data, trained.algorithm, trained.algorithm.reported_head
    probs = {name: torch.softmax(algorithm.evaluation_logits(
        predict(trained.model, pool.images, trained.config.train.eval_batch_size, trained.policy))[head], dim=1)
        for name, pool in (("val", data.val), ("unlabeled", data.unlabeled))}
    try:
        return estimate_class_counts(probs["val"], data.val.labels.cpu(), probs["unlabeled"], max_condition)
    except ValueError as exc:
        raise ConfigError(f"{run}: {exc}") from None


def evaluate_run(run_dir: Path, checkpoint: Path | None = None, stream=None) -> dict:
    """Recompute ``results.json`` of a run from a checkpoint (default: its newest): the EMA weights and
    the method's state are loaded into the network and method alone (no optimizer or streams)."""
    run = RunDir(run_dir)
    config = read_run_config(run.path)
    with run.exclusive():
        trained = load_trained_run(run, config, checkpoint, "evaluate")
        return _evaluate_locked(run, config, trained)


def _evaluate_locked(run: RunDir, config: Config, trained: TrainedRun) -> dict:
    state, data, device, checkpoint = trained.state, trained.data, trained.device, trained.checkpoint
    model, algorithm, policy = trained.model, trained.algorithm, trained.policy
    try:
        history = json.loads(state["history"])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {checkpoint} does not match this run's config: {exc}") from None
    final = evaluate_model(model, algorithm, data, policy, config.train.eval_batch_size, full=True)
    results = summarize_run(config, history, final, algorithm.reported_head, data.split.labeled_counts,
                            int(state["iteration"]), float(state["elapsed"]), str(device),
                            state.get("parent_algorithm"), state.get("environments"),
                            last_generation_start=last_generation_start(config))
    results["checkpoint"] = str(checkpoint)
    atomic_write_json(run.results, results)
    return results
