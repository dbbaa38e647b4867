"""Run directories: start, resume and re-evaluate a training run.

A run directory holds ``config.yaml`` (resolved), ``split.json``, ``metrics.jsonl``,
``checkpoints/`` and, when finished, ``results.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cissl.config import Config, load_config, save_config
from cissl.data.protocol import Split
from cissl.engine.checkpoint import latest_checkpoint, load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.logging import RunLogger, truncate_jsonl
from cissl.engine.trainer import Trainer, atomic_write_json, resolve_device
from cissl.errors import CheckpointError


def default_run_dir(config: Config) -> Path:
    setting = config.name or config.data.dataset
    return Path("runs") / f"{setting.replace('/', '_')}-{config.algorithm.name}-seed{config.train.seed}"


def _describe(config: Config, data, device) -> str:
    split = data.split
    return (f"{config.name or config.data.dataset}: {config.algorithm.name}, {data.num_classes} classes, "
            f"{len(data.labeled)} labeled / {len(data.unlabeled)} unlabeled / {len(data.test)} test images, "
            f"labeled counts {split.labeled_counts}, device {device}")


def _logger(config: Config, run_dir: Path, stream, quiet: bool) -> RunLogger:
    tc = config.train
    return RunLogger(run_dir, tc.iterations, tc.tensorboard, stream or sys.stdout, quiet, tc.progress)


def start_run(config: Config, run_dir: Path, stream=None, quiet: bool = False) -> dict:
    """Train a new run in ``run_dir`` (which must not hold checkpoints already)."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir / "checkpoints") is not None or (run_dir / "results.json").exists():
        raise CheckpointError(f"run directory {run_dir} already holds a run; resume it with "
                              f"`cissl train --resume {run_dir}` or choose another --out")
    device = resolve_device(config.train.device)
    data = prepare_data(config, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    data.split.save(run_dir / "split.json")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    logger = _logger(config, run_dir, stream, quiet)
    try:
        logger.message(_describe(config, data, device))
        return Trainer(config, data, run_dir, logger, device).fit()
    finally:
        logger.close()


def read_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config(path)


def resume_run(run_dir: Path, stream=None, quiet: bool = False) -> dict:
    """Continue the run in ``run_dir`` from its newest checkpoint (or from scratch if it has none)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    device = resolve_device(config.train.device)
    data = prepare_data(config, device, Split.load(run_dir / "split.json"))
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    truncate_jsonl(run_dir / "metrics.jsonl", state["iteration"] if state else 0)
    logger = _logger(config, run_dir, stream, quiet)
    try:
        trainer = Trainer(config, data, run_dir, logger, device)
        if state is not None:
            trainer.load_state_dict(state)
            logger.message(f"resumed {run_dir} from {checkpoint.name} at iteration {trainer.iteration}")
        return trainer.fit()
    finally:
        logger.close()


def evaluate_run(run_dir: Path, checkpoint: Path | None = None, stream=None) -> dict:
    """Recompute ``results.json`` of a run from a checkpoint (default: its newest)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} has no checkpoint to evaluate")
    state = load_checkpoint(checkpoint)
    device = resolve_device(config.train.device)
    data = prepare_data(config, device, Split.load(run_dir / "split.json"))
    trainer = Trainer(config, data, run_dir, None, device)
    trainer.load_state_dict(state)
    results = trainer.results()
    results["checkpoint"] = str(checkpoint)
    atomic_write_json(run_dir / "results.json", results)
    return results
