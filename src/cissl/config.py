"""Typed, frozen run configuration: YAML files with inheritance, dotted overrides, validation.

A config file is a YAML mapping with the sections ``data``, ``model``, ``optim``, ``augment``,
``train`` and ``algorithm`` (plus an optional ``name`` of the setting and an optional
``inherit: other.yaml`` or list of files, read first, relative to the file). Command-line
overrides use dotted keys: ``optim.lr=0.01 algorithm.threshold=0.9``. Every key is checked
up front: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
naming the key and what is allowed.

The ``algorithm`` section is typed by the algorithm's own config class, chosen by
``algorithm.name`` from the registry in :mod:`cissl.algorithms`. An optional ``methods`` section
gives the options other algorithms run with in this setting (``methods: {fixmatch_daso: {refiner:
{dist_temperature: 0.3}}}``), applied when one of them replaces the file's own algorithm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from cissl import yamlio
from cissl.algorithms import ALGORITHMS
from cissl.data.protocol import long_tailed_counts
from cissl.data.sources import SOURCES
from cissl.errors import ConfigError
from cissl.models import BACKBONES
from cissl.plugins import import_plugins, plugin_of, resolve_plugins
from cissl.rundir import atomic_write_text
from cissl.schema import AlgorithmConfig, build_section, choice, describe, merge_config, option, section

__all__ = ["Config", "DataConfig", "ModelConfig", "OptimConfig", "AugmentConfig", "TrainConfig", "AlgorithmConfig",
           "build", "load_config", "save_config", "parse_overrides", "read_config_file", "describe"]


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("digits", choices=SOURCES, help="which data set (`cissl list`; a plugin may add one)")
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
    stream_images: str = option("auto", choices=("auto", "always", "never"),
                                help="read training images from their memory-mapped file batch by batch instead "
                                     "of putting them on the device; auto: when a memory-mapped data set "
                                     "(imagenet127) takes more than half of the device's free memory")
    labeled_fraction: Optional[float] = option(
        None, min=0.0, max=1.0, min_exclusive=True,
        help="N_k = round(fraction x class k's training images), M_k = the rest (Small-ImageNet-127: 0.1); "
             "the data's own imbalance instead of labeled_head / imbalance_ratio / unlabeled_head")
    val_per_class: int = option(0, min=0, help="balanced validation images held out per class")
    class_order: Union[str, list[int]] = option(
        "source", help="run class k = source class order[k] (class 0 the head): source, random, or a permutation")
    class_order_seed: int = option(0, min=0, help="seed of class_order: random (apart from train.seed)")
    test_fraction: float = option(0.2, min=0.0, max=0.9, help="folder / arrays data without a test split: the "
                                  "share of each class's labeled images held out (seeded, stratified) as test set")

    def validate(self) -> None:
        if SOURCES[self.dataset].given_split:
            return  # the data gives its parts; the protocol keys are refused in check_own_data
        self._validate_class_order()
        k = SOURCES[self.dataset].num_classes
        if self.labeled_fraction is not None:
            if self.unlabeled_distribution != "consistent":
                raise ConfigError("config key 'data.unlabeled_distribution': with data.labeled_fraction the unlabeled "
                                  "images are the rest of each class (consistent); set consistent or drop "
                                  "labeled_fraction")
            return
        if long_tailed_counts(self.labeled_head, self.imbalance_ratio, k)[-1] < 1:
            raise ConfigError(f"config key 'data.imbalance_ratio': N1 / gamma = {self.labeled_head} / "
                              f"{self.imbalance_ratio:g} leaves the last class without a labeled image; lower the "
                              f"ratio to at most {self.labeled_head} or raise data.labeled_head")
        if self.unlabeled_distribution == "unknown":
            if not SOURCES[self.dataset].has_unlabeled_split:
                with_split = ", ".join(name for name, info in SOURCES.items() if info.has_unlabeled_split)
                raise ConfigError("config key 'data.unlabeled_distribution': 'unknown' needs a data set "
                                  f"with a separate unlabeled split ({with_split}); "
                                  "use consistent, uniform or reversed")
        elif self.unlabeled_head is None:
            raise ConfigError("config key 'data.unlabeled_head': required unless "
                              "data.unlabeled_distribution is 'unknown'")
        if (self.unlabeled_distribution == "uniform" and self.unlabeled_imbalance_ratio is not None
                and self.unlabeled_imbalance_ratio != 1.0):
            raise ConfigError("config key 'data.unlabeled_imbalance_ratio': must be null or 1 "
                              "when data.unlabeled_distribution is 'uniform'")


    def _validate_class_order(self) -> None:
        order, k = self.class_order, SOURCES[self.dataset].num_classes
        if isinstance(order, str):
            if order not in ("source", "random"):
                raise ConfigError(f"config key 'data.class_order': must be source, random or a permutation of "
                                  f"0..{k - 1}; got {order!r}")
        elif sorted(order) != list(range(k)):
            raise ConfigError(f"config key 'data.class_order': {self.dataset} has {k} classes, so the order must "
                              f"list each of 0..{k - 1} once; got {list(order)}")


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("wrn", choices=BACKBONES, help="backbone: wrn, resnet50, or one a plugin registers")
    depth: int = option(28, min=10, help="WRN depth, 6n + 4 (wrn only)")
    widen: int = option(2, min=1, help="WRN widening factor (wrn only)")
    leaky_slope: float = option(0.1, min=0.0, help="LeakyReLU negative slope (wrn only)")
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
    horizontal_flip: bool = option(True, help="flip weak and strong views left-right with probability 0.5 "
                                              "(false for digits and text, as FixMatch on SVHN)")


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = option(250_000, min=1, help="optimizer steps")
    batch_size: int = option(64, min=1, help="labeled images per step (B)")
    batch_scope: str = option("global", choices=("global", "per_rank"),
                              help="under torchrun (DDP): batch_size is the global batch, split across the ranks, "
                                   "or each rank's (global batch = batch_size x ranks)")
    sync_batchnorm: bool = option(False, help="under torchrun (DDP): batch norm statistics over the global batch "
                                              "(as one process would compute them); off: each rank's own rows, "
                                              "the running statistics averaged over the ranks after every step")
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
    init_from: str = option("", help="start the network's backbone from this finished run (a run directory or "
                                     "a checkpoint file; same data, model and seed); the heads start afresh")
    init_weights: str = option("ema", choices=("ema", "model"),
                               help="init_from's weights: its EMA network or its training network")
    eval_batch_size: int = option(256, min=1, help="batch size of evaluation")
    evaluate_on: str = option("test", choices=("test", "val"),
                              help="images every evaluation scores: val = the held-out validation split "
                                   "(data.val_per_class), for choosing hyperparameters without the test set")
    report_last: int = option(20, min=1, help="median / mean over the last this many evaluations (at most half "
                                              "of the run's evaluations; with generations, of the last one's)")
    skip_nonfinite_steps: bool = option(False, help="skip the update of a step whose loss is not finite and count "
                                                    "it (costs one device sync per step); off: such a run stops")
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
            of_the_run = (f"half of the run's {evaluations} evaluations" if evaluations > 1 else
                          "the run's 1 evaluation")  # the window holds at least the last one
            raise ConfigError(
                f"config key 'train.report_last': {self.report_last} is more than {of_the_run} (train.iterations "
                f"{self.iterations} / train.eval_every {self.eval_every}); the last-k window must be a tail of "
                f"the run: use at most {most}")

    @property
    def evaluations(self) -> int:
        """Evaluations in a whole run: every ``eval_every`` iterations and after the last one."""
        return -(-self.iterations // self.eval_every)


@dataclass(frozen=True)
class Config:
    name: str = option("", help="name of the setting (used in run directory names)")
    plugins: list[str] = option([], help="your own modules that register methods, backbones or data sets, "
                                         "imported first: .py files (relative to the config file) or importable "
                                         "module names")
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig)
    augment: AugmentConfig = section(AugmentConfig)
    train: TrainConfig = section(TrainConfig)
    algorithm: AlgorithmConfig = choice(ALGORITHMS, "fixmatch", help="the method")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __reduce__(self):
        """Pickled as its plain dict, rebuilt with :func:`build`, which imports the plugins first (a sweep's
        worker process gets a config whose method a plugin file defines)."""
        return build, (self.to_dict(),)

    def replace(self, overrides: dict[str, Any] | list[str]) -> "Config":
        """A new validated config with dotted overrides applied."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else parse_overrides(overrides)
        for key, value in items:
            _set_dotted(data, key, value)
        return build(data)


# ----------------------------------------------------------------------------- building


def algorithm_defaults(name: str) -> AlgorithmConfig:
    """The ``algorithm`` section of a method with its defaults and preset (``cissl list``), without the
    checks of a whole run's config (a method like cRT needs ``train.init_from`` to run, not to be listed)."""
    return build_section(Config, {"algorithm": {"name": name}}, "").algorithm


def build(data: dict) -> Config:
    """Build a validated :class:`Config` from a plain nested dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    if "plugins" in data:  # a file's relative path from the working directory (a config file's are resolved
        data = {**data, "plugins": resolve_plugins(data["plugins"], Path.cwd())}  # against it when read)
        import_plugins(data["plugins"])  # before the algorithm and model sections name what they register
    check_own_data(data.get("data"))
    config = with_its_plugins(build_section(Config, data, ""))
    check_evaluation(config)
    check_method(config)
    return config


def with_its_plugins(config: Config) -> Config:
    """The config with the plugin of each method, part, backbone or data set it names added to ``plugins``
    where missing (one another config's plugin registered in this process): the run's saved config then imports
    what it needs wherever it is read again."""
    algorithm = config.algorithm
    targets = [SOURCES[config.data.dataset].read, BACKBONES[config.model.name],
               ALGORITHMS.entry(algorithm.name).target] + [
        f.metadata["registry"].entry(getattr(algorithm, f.name).name).target
        for f in dataclasses.fields(algorithm) if "registry" in f.metadata]
    needed = [entry for target in targets if (entry := plugin_of(getattr(target, "__module__", "")))]
    missing = [entry for entry in dict.fromkeys(needed) if entry not in config.plugins]
    return dataclasses.replace(config, plugins=[*config.plugins, *missing]) if missing else config


PROTOCOL_KEYS = ("labeled_head", "unlabeled_head", "imbalance_ratio", "unlabeled_distribution",
                 "unlabeled_imbalance_ratio", "selection", "unlabeled_includes_labeled", "class_order",
                 "class_order_seed")


def check_own_data(section) -> None:
    """A user's own data (folder, arrays) gives its labeled and unlabeled parts: the long-tailed
    protocol's keys do not apply, and setting one (to another value than its default) is an error
    rather than silently ignored."""
    if not isinstance(section, dict):
        return
    dataset = section.get("dataset")
    info = SOURCES.get(dataset) if isinstance(dataset, str) else None  # a wrong type: the section's check says so
    if info is None or not info.given_split:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    used = [key for key in PROTOCOL_KEYS if key in section and section[key] != defaults[key]]  # a saved run's
    if used:                                                                        # config repeats the defaults
        raise ConfigError(f"config key 'data.{used[0]}': data.dataset={info.name} takes its labeled and unlabeled "
                          f"images as given; the long-tailed protocol keys ({', '.join(used)}) do not apply")


def check_evaluation(config: Config) -> None:
    if config.train.evaluate_on == "val" and config.data.val_per_class < 1:
        raise ConfigError("config key 'train.evaluate_on': val needs a validation split, set data.val_per_class >= 1")


def check_method(config: Config) -> None:
    """What the method declares must fit the train section: its views, its generations."""
    method = ALGORITHMS.entry(config.algorithm.name).target
    name, train = config.algorithm.name, config.train
    spec = method.views(config.algorithm)
    if spec.unlabeled and spec.strong_views is not None and train.strong_views not in spec.strong_views:
        allowed = " or ".join(map(str, spec.strong_views))
        raise ConfigError(f"config key 'train.strong_views': {name} takes {allowed} strong view(s) per "
                          f"unlabeled image, got {train.strong_views}")
    if not method.trains_backbone(config.algorithm) and not train.init_from:
        raise ConfigError(f"config key 'train.init_from': {name} trains only the classifier on a frozen network; "
                          f"give the trained run it starts from (a run directory or a checkpoint file)")
    if method.validation_every(config.algorithm) and config.data.val_per_class < 1:
        raise ConfigError(f"config key 'data.val_per_class': {name} fits its parameters on a validation split "
                          f"held out of the training images; set data.val_per_class >= 1")
    generations = method.generations(config.algorithm)
    if train.iterations % generations:
        raise ConfigError(f"config key 'train.iterations': {name} runs {generations} generations of equal length, "
                          f"so the iterations must be a multiple of {generations}, got {train.iterations}")


def flat_keys(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys: ``{"optim": {"lr": 0.03}}`` -> ``{"optim.lr": 0.03}``."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# where the data is read from and how it is held, not which data: a run whose files moved is still that run
# (the identity checks of checkpoints and of a sweep's existing runs leave these keys out)
LOCATION_KEYS = frozenset({"data.root", "data.download", "data.stream_images"})


def name_differences(keys: list[str], show: Callable[[str], str]) -> str | None:
    """One phrase for differing config keys: the first three as ``show(key)``, then how many more; None
    when there are none."""
    if not keys:
        return None
    return ", ".join(show(key) for key in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


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


def read_config_file(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a config file and the files it inherits from, merged (later keys win)."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config file {path}: inheritance cycle")
    data = yamlio.load(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections")
    if not data:
        raise ConfigError(f"config file {path} is empty: it would mean a 250k-iteration run of the defaults; "
                          f"start from a file in configs/")
    parents = data.pop("inherit", None)
    if "plugins" in data:  # imported now: merging an algorithm section over a parent's needs its config class
        data["plugins"] = resolve_plugins(data["plugins"], path.parent)
        import_plugins(data["plugins"])
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = merge_config(Config, merged, read_config_file(path.parent / parent, _seen + (resolved,)))
    return merge_config(Config, merged, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                algorithm: str | None = None) -> Config:
    """Load a config file, optionally switch the algorithm, apply dotted overrides, validate.

    ``algorithm`` replaces the file's whole ``algorithm`` section by that algorithm's defaults
    (so a setting written for one method can run another), with the options the file's ``methods``
    section gives for it; overrides apply afterwards.
    """
    if isinstance(overrides, str):  # one override given bare would be read character by character
        raise ConfigError(f"overrides must be a list of 'key=value' strings, e.g. [{overrides!r}]; got a string")
    items = parse_overrides(overrides or [])
    # a plugin given on the command line is imported first: the files' algorithm sections merge by the classes
    # it registers, and the methods section may name its methods
    for key, value in items:
        if key == "plugins":
            import_plugins(value)
    data = read_config_file(path) if path is not None else {}
    methods = method_options(data.pop("methods", None))
    if algorithm is not None:
        data["algorithm"] = {"name": algorithm, **methods.get(algorithm, {})}
    for key, value in items:
        _set_dotted(data, key, value)
    return build(data)


def method_options(methods) -> dict[str, dict]:
    """A setting's ``methods`` section: algorithm name -> the options it runs with in this setting when
    chosen instead of the file's own algorithm (``--algorithm NAME``, ``cissl sweep --algorithms``).
    Every entry is validated up front, so a typo fails before any run starts."""
    if methods is None:
        return {}
    if not isinstance(methods, dict):
        raise ConfigError(f"config key 'methods': expected a mapping of algorithm names to options, got {methods!r}")
    for name, options in methods.items():
        if not isinstance(options, dict) or "name" in options:
            raise ConfigError(f"config key 'methods.{name}': expected a mapping of that algorithm's options "
                              f"(without 'name'), got {options!r}")
        ALGORITHMS.build({"name": name, **options}, f"methods.{name}", name)
    return methods


def save_config(config: Config, path: str | Path) -> None:
    atomic_write_text(Path(path), yamlio.dumps(config.to_dict()))
