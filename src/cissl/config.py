"""Typed, frozen run configuration: YAML files with inheritance, dotted overrides, validation.

A config file is a YAML mapping with the sections ``data``, ``model``, ``optim``, ``augment``,
``train`` and ``algorithm`` (plus an optional ``name`` of the setting and an optional
``inherit: other.yaml`` or list of files, read first, relative to the file). Command-line
overrides use dotted keys: ``optim.lr=0.01 algorithm.threshold=0.9``. Every key is checked
up front: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
naming the key and what is allowed.

The ``algorithm`` section is typed by the algorithm's own config class, chosen by
``algorithm.name`` from the registry in :mod:`cissl.algorithms`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cissl import yamlio
from cissl.errors import ConfigError


def option(default, *, min=None, max=None, choices=None, min_exclusive=False, help: str = ""):
    """A dataclass field with the metadata that :func:`build` validates."""
    meta = {"min": min, "max": max, "choices": choices, "min_exclusive": min_exclusive, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls):
    """A nested config section with its own defaults."""
    return field(default_factory=cls)


DATASETS = ("cifar10", "cifar100", "stl10", "fashion_mnist", "digits")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("digits", choices=DATASETS, help="which data set")
    root: str = option("data", help="folder holding the data set files (see README)")
    download: bool = option(False, help="download missing files (needs a network)")
    image_size: Optional[int] = option(None, min=4, help="resize images to this size (STL-10: 32)")
    labeled_head: int = option(1500, min=1, help="N1: labeled images of the largest class")
    unlabeled_head: Optional[int] = option(3000, min=0, help="M1: unlabeled images of the first class")
    imbalance_ratio: float = option(100.0, min=1.0, help="gamma_l = N1 / N_K")
    unlabeled_distribution: str = option(
        "consistent", choices=("consistent", "uniform", "reversed", "unknown"),
        help="unlabeled class distribution; unknown = the data set's whole unlabeled split (STL-10)")
    unlabeled_imbalance_ratio: Optional[float] = option(
        None, min=1.0, help="gamma_u (magnitude; reversed flips the order); null = gamma_l")
    selection: str = option("seeded_shuffle", choices=("seeded_shuffle", "file_order"),
                            help="which images of a class are taken")
    unlabeled_includes_labeled: bool = option(False, help="unlabeled set = first N_k + M_k (paper code)")
    val_per_class: int = option(0, min=0, help="balanced validation images held out per class")

    def validate(self) -> None:
        if self.unlabeled_distribution == "unknown":
            if self.dataset != "stl10":
                raise ConfigError("config key 'data.unlabeled_distribution': 'unknown' needs a data set "
                                  "with a separate unlabeled split (stl10); "
                                  "use consistent, uniform or reversed")
        elif self.unlabeled_head is None:
            raise ConfigError("config key 'data.unlabeled_head': required unless "
                              "data.unlabeled_distribution is 'unknown'")
        if (self.unlabeled_distribution == "uniform" and self.unlabeled_imbalance_ratio is not None
                and self.unlabeled_imbalance_ratio != 1.0):
            raise ConfigError("config key 'data.unlabeled_imbalance_ratio': must be null or 1 "
                              "when data.unlabeled_distribution is 'uniform'")


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("wrn", choices=("wrn",), help="backbone")
    depth: int = option(28, min=10, help="WRN depth, 6n + 4")
    widen: int = option(2, min=1, help="WRN widening factor")
    leaky_slope: float = option(0.1, min=0.0, help="LeakyReLU negative slope")
    bn_momentum: float = option(0.001, min=0.0, max=1.0, help="BatchNorm momentum (PyTorch convention)")

    def validate(self) -> None:
        if (self.depth - 4) % 6:
            raise ConfigError(f"config key 'model.depth': must be 6n + 4 (10, 16, 22, 28, ...), "
                              f"got {self.depth}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = option(0.03, min=0.0, min_exclusive=True, help="SGD learning rate")
    momentum: float = option(0.9, min=0.0, max=0.999, help="SGD momentum")
    nesterov: bool = option(True, help="Nesterov momentum")
    weight_decay: float = option(5e-4, min=0.0, help="coupled L2 on conv/linear weights only")
    schedule: str = option("cosine", choices=("cosine", "constant"), help="learning-rate schedule")
    cosine_fraction: float = option(0.4375, min=0.0, max=1.0, min_exclusive=True,
                                    help="lr_t = lr * max(0, cos(pi * fraction * t / T)); 7/16 in FixMatch")
    fused: bool = option(False, help="PyTorch's fused SGD implementation (fewer kernel launches; same "
                                     "update up to rounding)")


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: Optional[int] = option(None, min=0, help="random-crop padding; null = image size / 8")
    padding_mode: str = option("reflect", choices=("reflect", "constant"), help="crop padding mode")
    randaugment_ops: int = option(2, min=0, max=8, help="RandAugment ops per strong view")
    randaugment_prob: float = option(0.5, min=0.0, max=1.0, help="probability each drawn op is applied")
    cutout: int = option(16, min=0, help="Cutout side length in px (0: off)")


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = option(250_000, min=1, help="optimizer steps")
    batch_size: int = option(64, min=1, help="labeled images per step (B)")
    mu: int = option(1, min=1, help="unlabeled images per step = mu * B")
    strong_views: int = option(2, min=1, max=4, help="strong views per unlabeled image")
    epoch_length: int = option(500, min=1, help="iterations per 'epoch' (warm-up, per-epoch updates)")
    eval_every: int = option(500, min=1, help="evaluate the EMA model every this many iterations")
    log_every: int = option(50, min=1, help="console / metrics.jsonl every this many iterations")
    checkpoint_every: int = option(5000, min=1, help="checkpoint every this many iterations")
    keep_checkpoints: int = option(2, min=1, help="how many checkpoints to keep")
    ema_decay: float = option(0.999, min=0.0, max=1.0, help="EMA of the parameters (0: no EMA)")
    seed: int = option(0, min=0, help="run seed (split, init, streams, augmentation)")
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    precision: str = option("fp32", choices=("fp32", "bf16"), help="bf16 = autocast")
    channels_last: bool = option(True, help="channels_last memory format")
    compile: bool = option(False, help="torch.compile the backbone")
    compile_mode: str = option("default", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                               help="torch.compile mode (reduce-overhead: CUDA graphs of the compiled backbone)")
    cuda_graphs: bool = option(True, help="on CUDA, replay the augmentation from CUDA graphs (same images)")
    cudnn_benchmark: bool = option(True, help="on CUDA, let cuDNN time its convolution algorithms (process-wide)")
    eval_batch_size: int = option(256, min=1, help="batch size of evaluation")
    report_last: int = option(20, min=1, help="median / mean over the last this many evaluations (at most half "
                                              "of the run's evaluations)")
    tensorboard: bool = option(False, help="also log to TensorBoard (needs the tensorboard extra)")
    progress: str = option("plain", choices=("plain", "rich"), help="console progress: lines, or a rich bar")

    def validate(self) -> None:
        device = self.device
        if device not in ("auto", "cpu", "cuda") and not (
                device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError(f"config key 'train.device': must be auto, cpu, cuda or cuda:N, got {device!r}")
        evaluations = self.evaluations
        most = max(1, evaluations // 2)
        if self.report_last > most:
            raise ConfigError(
                f"config key 'train.report_last': {self.report_last} is more than half of the run's {evaluations} "
                f"evaluations (train.iterations {self.iterations} / train.eval_every {self.eval_every}); the "
                f"last-k window must be a tail of the run: use at most {most}")

    @property
    def evaluations(self) -> int:
        """Evaluations in a whole run: every ``eval_every`` iterations and after the last one."""
        return -(-self.iterations // self.eval_every)


@dataclass(frozen=True)
class AlgorithmConfig:
    """Base of every algorithm's config; subclasses add their hyperparameters."""

    name: str = option("fixmatch", help="algorithm name (see `cissl list`)")


@dataclass(frozen=True)
class Config:
    name: str = option("", help="name of the setting (used in run directory names)")
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig)
    augment: AugmentConfig = section(AugmentConfig)
    train: TrainConfig = section(TrainConfig)
    algorithm: AlgorithmConfig = section(AlgorithmConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, overrides: dict[str, Any] | list[str]) -> "Config":
        """A new validated config with dotted overrides applied."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else parse_overrides(overrides)
        for key, value in items:
            _set_dotted(data, key, value)
        return build(data)


# ----------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"config key '{key}': must be a number, got nan")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _check_range(value, meta: dict, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}': must be one of {', '.join(map(str, choices))}; "
                          f"got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            raise ConfigError(f"config key '{key}': must be > {lo}, got {value}")
        if not meta.get("min_exclusive") and not value >= lo:
            raise ConfigError(f"config key '{key}': must be >= {lo}, got {value}")
    if hi is not None and not value <= hi:
        raise ConfigError(f"config key '{key}': must be <= {hi}, got {value}")


def build_section(cls, data: Any, prefix: str):
    """Build and validate the dataclass ``cls`` from a mapping (unknown keys are errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
        raise ConfigError(f"unknown config key '{_join(prefix, key)}'{hint}; "
                          f"allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = _join(prefix, name)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, data[name], key)
        else:
            value = _coerce(data[name], tp, key)
            _check_range(value, dict(f.metadata), key)
            kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def build(data: dict) -> Config:
    """Build a validated :class:`Config` from a plain nested dict."""
    from cissl.algorithms import algorithm_config_class, algorithm_preset

    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    algo = data.pop("algorithm", None) or {}
    if isinstance(algo, str):
        algo = {"name": algo}
    if not isinstance(algo, dict):
        raise ConfigError(f"config key 'algorithm': expected a mapping, got {algo!r}")
    name = algo.get("name", AlgorithmConfig().name)
    algo_cls = algorithm_config_class(name)
    base = build_section(Config, data, "")
    algorithm = build_section(algo_cls, {**_merge(algorithm_preset(name), algo), "name": name}, "algorithm")
    return dataclasses.replace(base, algorithm=algorithm)


# ----------------------------------------------------------------------------- files and overrides


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=0.01", "data.dataset=cifar10"]`` -> [(key, parsed value), ...]."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.01")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: malformed key")
        out.append((key, yamlio.parse_scalar(text, f"override {key}")))
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a config file and the files it inherits from, merged (later keys win)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config file {path}: inheritance cycle")
    data = yamlio.load(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections")
    parents = data.pop("inherit", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = _merge(merged, read_config_file(path.parent / parent, _seen + (resolved,)))
    return _merge(merged, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                algorithm: str | None = None) -> Config:
    """Load a config file, optionally switch the algorithm, apply dotted overrides, validate.

    ``algorithm`` replaces the file's whole ``algorithm`` section by that algorithm's defaults
    (so a setting written for one method can run another); overrides apply afterwards.
    """
    data = read_config_file(path) if path is not None else {}
    if algorithm is not None:
        data["algorithm"] = {"name": algorithm}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return build(data)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yamlio.dumps(config.to_dict()), encoding="utf-8")


def describe(cls=Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every option of a config class, for docs and `cissl list`."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], key))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((key, yamlio.format_scalar(default), f.metadata.get("help", "")))
    return rows
