"""The Python API: what the command line does, as functions (the command line is a thin layer over them).

    import cissl.api as cissl

    config = cissl.load_config("configs/quickstart.yaml", ["train.iterations=300"], algorithm="semi")
    results = cissl.train(config, "runs/semi")           # results.json as a dict
    run = cissl.load_run("runs/semi")                     # the EMA model of its newest checkpoint
    predictions = run.predict(images)                     # uint8 (N, H, W[, C]) array or (N, C, H, W) tensor
    predictions.labels, predictions.probs, run.class_names
"""

from __future__ import annotations

import os
from pathlib import Path

from cissl.config import Config, load_config
from cissl.engine.run import evaluate_run, resume_run, start_run
from cissl.engine.run import load_run as _load_trained
from cissl.errors import ConfigError, DataError
from cissl.evaluation.predict import Predictions, image_files, predict_images, read_image_files

__all__ = ["Config", "Predictions", "Run", "evaluate", "load_config", "load_run", "resume", "train"]


def train(config: Config, out: str | Path, quiet: bool = True) -> dict:
    """Train a new run into the folder ``out``; returns its results (``results.json``)."""
    if not isinstance(config, Config):
        raise ConfigError(f"train needs a Config (cissl.api.load_config(path, overrides)), got {type(config).__name__}")
    return start_run(config, Path(out), quiet=quiet)


def resume(run_dir: str | Path, quiet: bool = True) -> dict:
    """Continue an interrupted run from its newest checkpoint; returns its results."""
    return resume_run(Path(run_dir), quiet=quiet)


def evaluate(run_dir: str | Path, checkpoint: str | Path | None = None) -> dict:
    """Recompute a run's results from a checkpoint (default: its newest) and write ``results.json``."""
    return evaluate_run(Path(run_dir), Path(checkpoint) if checkpoint else None)


class Run:
    """A trained run ready to predict: its config, classes and the reported head of its EMA model."""

    def __init__(self, trained):
        self._trained = trained

    @property
    def config(self) -> Config:
        return self._trained.config

    @property
    def class_names(self) -> list[str]:
        return list(self._trained.data.class_names)

    @property
    def head(self) -> str:
        return self._trained.algorithm.reported_head

    @property
    def checkpoint(self) -> Path:
        return self._trained.checkpoint

    def predict(self, images, batch_size: int | None = None) -> Predictions:
        """Class probabilities of uint8 images (see :mod:`cissl.evaluation.predict` for the layouts)."""
        return predict_images(self._trained, images, batch_size)

    def predict_files(self, paths: str | Path | list[str | Path], stream=None) -> tuple[list[Path], Predictions]:
        """The image files of a folder (recursively, sorted), of one file, or of a list of files and folders
        (in its order), read with Pillow, and their predictions."""
        given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not given:
            raise DataError("predict_files: no files or folders given")
        files = [file for path in given for file in image_files(Path(path))]
        return files, self.predict(read_image_files(files, stream))


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> Run:
    """A run's EMA model and method from a checkpoint (default: its newest), to predict with."""
    return Run(_load_trained(Path(run_dir), Path(checkpoint) if checkpoint else None))
