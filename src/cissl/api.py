"""The Python API: what the command line does, as functions (the command line is a thin layer over them).

    import cissl.api as cissl

    config = cissl.load_config("configs/quickstart.yaml", ["train.iterations=300"], algorithm="semi")
    results = cissl.train(config, "runs/semi")           # results.json as a dict
    run = cissl.load_run("runs/semi")                     # the EMA model of its newest checkpoint
    predictions = run.predict(images)                     # uint8 (N, H, W[, C]) array or (N, C, H, W) tensor
    predictions.labels, predictions.probs, run.class_names
    rows = cissl.sweep(["configs/quickstart.yaml"], "runs/grid", algorithms=["fixmatch", "semi"], seeds=[0, 1])
    rows = cissl.report("runs/grid", pair="semi")        # the mean +- std table's rows (results.md, paired.md)

Each command's function: ``cissl train`` train / resume, ``evaluate`` evaluate, ``predict`` load_run, ``split``
split / split_counts, ``sweep`` sweep, ``report`` report / report_pages, ``estimate-distribution``
estimate_distribution, ``plot`` plot, ``bench throughput`` throughput, ``data build-imagenet127``
build_imagenet127, ``list`` registered / config_keys. Under torchrun, a rank whose error another rank prints
(:class:`cissl.errors.PrintedByAnotherRank`) calls wait_for_the_printing_rank before it exits.
"""

from __future__ import annotations

import os
from pathlib import Path

from cissl.config import Config, load_config
from cissl.engine.launch import wait_for_the_printing_rank
from cissl.engine.run import estimate_run_distribution, evaluate_run, features_on_test_set, resume_run, start_run
from cissl.engine.run import load_run as _load_trained
from cissl.errors import CisslError, ConfigError, DataError
from cissl.evaluation.predict import Predictions, image_files, predict_images, read_image_files
from cissl.plugins import import_plugins
from cissl.rundir import RESULTS

__all__ = ["Config", "Predictions", "Run", "build_imagenet127", "config_keys", "estimate_distribution", "evaluate",
           "load_config", "load_run", "plot", "registered", "report", "report_pages", "resume", "split", "split_counts",
           "sweep", "throughput", "train", "wait_for_the_printing_rank"]


def train(config: Config, out: str | Path, quiet: bool = True) -> dict:
    """Train a new run into the folder ``out``; returns its results (``results.json``)."""
    _check_config(config, "train")
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


def _listed(value) -> list | None:
    """A list of the values given: one path, name or number stands for a list of one (a string is not a list of
    its letters); None stays None."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike, int)):
        return [value]
    return list(value)


def _check_config(config, function: str) -> None:
    if not isinstance(config, Config):
        raise ConfigError(f"{function} needs a Config (cissl.api.load_config(path, overrides)), "
                          f"got {type(config).__name__}")


def split_counts(config: Config) -> dict:
    """The per-class labeled and unlabeled counts of a benchmark setting, from the protocol alone (no data
    read): ``{"labeled": [...], "unlabeled": [...]}``."""
    from cissl.data.protocol import split_counts as protocol_counts
    from cissl.data.sources import SOURCES

    _check_config(config, "split_counts")
    if SOURCES[config.data.dataset].given_split:
        raise CisslError(f"data.dataset={config.data.dataset}: the counts come from the data; drop --counts-only "
                         f"(in Python: cissl.api.split(config))")
    labeled, unlabeled = protocol_counts(config.data, SOURCES[config.data.dataset].num_classes)
    return {"labeled": labeled, "unlabeled": unlabeled}


def split(config: Config, save: str | Path | None = None) -> dict:
    """The split a run of ``config`` trains on (the data is read): class names, per-class labeled and
    unlabeled counts, the totals and the seed; ``save`` also writes it as a ``split.json``."""
    from cissl.engine.data import load_run_source, new_split

    _check_config(config, "split")
    source, order = load_run_source(config.data)
    made = new_split(config, source, order)
    summary = {"classes": source.class_names, "labeled": made.labeled_counts, "unlabeled": made.unlabeled_counts,
               "labeled_total": len(made.labeled_indices), "unlabeled_total": len(made.unlabeled_indices),
               "val_total": len(made.val_indices), "seed": made.seed}
    if save:
        made.save(Path(save))
        summary["saved"] = str(save)
    return summary


def sweep(configs: str | Path | list[str | Path] | None, out: str | Path, algorithms: str | list[str] | None = None,
          seeds: int | list[int] = (0,), overrides: list[str] | None = None, grid: str | list[str] | None = None,
          jobs_file: str | Path | None = None, workers: int = 1, deadline: float | None = None,
          by_seed: bool = False, quiet: bool = True) -> list[dict]:
    """Run settings x algorithms x seeds (and a jobs file's runs) into ``out``, skipping finished runs and
    resuming interrupted ones, and write ``out/results.md`` / ``.csv``; returns the table's rows (``cissl
    sweep``: every option as there, e.g. ``grid=["optim.lr=0.01,0.03"]``, ``workers=2``; one config,
    algorithm, seed or grid axis may be given alone)."""
    from cissl.sweep import run_sweep

    configs = [str(c) for c in _listed(configs) or []]
    if not configs and not jobs_file:
        raise CisslError("sweep needs --configs FILE ... or --jobs FILE")
    return run_sweep(configs, _listed(algorithms), _listed(seeds), Path(out), overrides, quiet=quiet,
                     grid=_listed(grid), jobs_file=Path(jobs_file) if jobs_file else None, workers=workers,
                     deadline=deadline, by_seed=by_seed)


def report(root: str | Path, pair: str | None = None, per_seed: bool = False) -> list[dict]:
    """The mean +- std table of every run below ``root`` (written to ``results.md`` / ``.csv``); ``pair``
    (an algorithm, or SETTING:ALGORITHM) also writes ``paired.md``, ``per_seed`` ``per_seed.md``."""
    from cissl.evaluation.report import write_report

    rows = write_report(Path(root), pair)
    if not rows:
        raise CisslError(f"no {RESULTS} below {root}")
    if per_seed:
        from cissl.evaluation.per_seed import write_per_seed

        write_per_seed(Path(root), pair)
    return rows


def report_pages(roots: str | Path | list[str | Path], out: str | Path, tsne: bool = False) -> list[Path]:
    """``out/report.md``, ``out/report.html`` and the figures of every run below ``roots`` (one folder or
    several; ``tsne``: a t-SNE of each method's test features too); returns the files written, the two
    pages first."""
    from cissl.evaluation.report_pages import write_report_pages

    return write_report_pages([Path(r) for r in _listed(roots)], Path(out),
                              features_on_test_set=features_on_test_set if tsne else None)


def estimate_distribution(run_dir: str | Path, checkpoints: str | Path | list[str | Path] | None = None,
                          max_condition: float = 100.0, every_checkpoint: bool = False) -> dict:
    """The unlabeled pool's class counts estimated with a run's model from its validation confusion matrix
    (written to the run as ``unlabeled_distribution.json``); ``result["counts"]`` is None when no estimate
    was accepted."""
    return estimate_run_distribution(Path(run_dir), [Path(c) for c in _listed(checkpoints) or []] or None,
                                     max_condition, every_checkpoint)


def plot(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """A run's figures as PNG files in ``out`` (default RUN_DIR/plots); returns their paths."""
    from cissl.evaluation.plots import plot_run

    return plot_run(Path(run_dir), Path(out) if out else None)


def throughput(config: Config, steps: int = 9, warmup: int = 3, rounds: int = 3, synthetic: bool = False) -> dict:
    """Time a training step of ``config`` against its floor (``cissl bench throughput``); returns the summary.
    Under torchrun, one DDP rank's step."""
    from cissl.bench.throughput import measure
    from cissl.engine.launch import launched

    _check_config(config, "throughput")
    with launched(config) as device:
        return measure(config, steps=steps, warmup=warmup, rounds=rounds, synthetic=synthetic, device=device)


def build_imagenet127(source: str | Path, size: int, out: str | Path, partial: bool = False) -> dict:
    """Build Small-ImageNet-127 at ``size`` px from the downsampled ImageNet pickles in ``source`` into
    ``out``; returns its meta data."""
    from cissl.data.sources.imagenet127 import build_imagenet127 as build

    return build(Path(source), size, Path(out), partial=partial)


def registered(plugins: str | list[str] | None = None) -> dict[str, dict[str, str]]:
    """What can be named in a config: ``{"algorithms": {name: summary}, "refiners": {...}, "aux_heads":
    {...}, "backbones": {...}, "datasets": {...}}`` (``algorithm.name``, ``algorithm.refiner``,
    ``algorithm.aux_head``, ``model.name``, ``data.dataset``), with what ``plugins`` (.py files, relative to
    the working directory, or module names) register."""
    from cissl.algorithms import ALGORITHMS, AUX_HEADS, REFINERS
    from cissl.data.sources import SOURCES
    from cissl.models import BACKBONES
    from cissl.schema import first_doc_line

    import_plugins(plugins)  # a relative file from the working directory

    registries = {"algorithms": ALGORITHMS, "refiners": REFINERS, "aux_heads": AUX_HEADS}
    return {kind: {name: registry.entry(name).summary for name in registry.names()}
            for kind, registry in registries.items()} | {
        "backbones": {name: first_doc_line(builder) for name, builder in BACKBONES.items()},
        "datasets": {name: _facts(info) for name, info in SOURCES.items()}}


def _facts(info) -> str:
    """A data set's ``cissl list`` line: its summary and, where registered, classes and image shape."""
    if info.num_classes is None:
        return info.summary
    shape = f"{info.num_classes} classes, {info.image_size}x{info.image_size} {'grey' if info.channels == 1 else 'RGB'}"
    return f"{info.summary}; {shape}" if info.summary else shape


def config_keys(algorithm: str | None = None, plugins: str | list[str] | None = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) of every config key outside ``algorithm.*`` (``algorithm.name``
    included) or, given an algorithm's name (one of cissl's or of ``plugins``), of that algorithm's
    ``algorithm.*`` keys."""
    from cissl.config import algorithm_defaults, describe

    import_plugins(plugins)  # a relative file from the working directory

    if algorithm is None:
        return [row for row in describe(Config) if not row[0].startswith("algorithm.") or row[0] == "algorithm.name"]
    defaults = algorithm_defaults(algorithm)  # an unknown name: one line naming the known ones
    return list(describe(type(defaults), "algorithm", defaults))
