"""The long-tailed labeled / unlabeled split protocol of CISSL benchmarks (spec section 1).

Classes are ordered by decreasing labeled count: class 0 is the head (which source class that is:
``data.class_order``, :mod:`cissl.data.class_order`). Counts follow the spec's
rule (truncation, float64); which images are taken follows ``data.selection`` and
``data.unlabeled_includes_labeled``. A split is a pure function of (labels, config, seed) and is
saved with every run (``split.json``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cissl.errors import DataError
from cissl.rundir import atomic_write_json

SPLIT_STREAM = 0x5B117  # mixes the run seed into a generator used only for the split


def long_tailed_counts(head: int, ratio: float, num_classes: int) -> list[int]:
    """Per-class counts of an exponentially decaying profile (spec section 1.1).

    The paper writes N_k = N_1 * gamma^(-(k-1)/(K-1)) for 1-based k. With 0-based k and
    r = (1/gamma)^(1/(K-1)) in float64: count_k = floor(head * r^k) for k < K-1 and
    count_{K-1} = floor(head / gamma). Truncation, not rounding: N1 = 500, gamma = 100 gives 299
    for class 1 (rounding would give 300).
    """
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    if num_classes == 1:
        return [int(head)]
    r = (1.0 / ratio) ** (1.0 / (num_classes - 1))
    counts = [int(math.floor(head * r ** k)) for k in range(num_classes - 1)]
    counts.append(int(math.floor(head / ratio)))
    return counts


def split_counts(data_config, num_classes: int, class_sizes: list[int] | None = None
                 ) -> tuple[list[int], list[int] | None]:
    """(labeled N_k, unlabeled M_k) for a :class:`DataConfig`; M_k is None for ``unknown``.

    consistent: M_k from (M1, gamma_u) in the labeled order; uniform: M1 for every class;
    reversed: class k gets the count of class K-1-k of (M1, gamma_u); gamma_u defaults to gamma_l.
    With ``labeled_fraction`` f (Small-ImageNet-127, spec 1.6): N_k = round(f n_k) of the class's
    ``class_sizes`` n_k (Python's round, half to even, as the CoSSL code) and M_k = n_k - N_k.
    """
    cfg = data_config
    if getattr(cfg, "labeled_fraction", None) is not None:
        if class_sizes is None:
            raise DataError("data.labeled_fraction: the counts follow the data's class sizes; read the data "
                            "(drop --counts-only)")
        labeled = [int(round(cfg.labeled_fraction * n)) for n in class_sizes]
        return labeled, [int(n) - n_k for n, n_k in zip(class_sizes, labeled)]
    labeled = long_tailed_counts(cfg.labeled_head, cfg.imbalance_ratio, num_classes)
    mode = cfg.unlabeled_distribution
    if mode == "unknown":
        return labeled, None
    gamma_u = cfg.unlabeled_imbalance_ratio or cfg.imbalance_ratio
    if mode == "uniform":
        return labeled, [int(cfg.unlabeled_head)] * num_classes
    unlabeled = long_tailed_counts(cfg.unlabeled_head, gamma_u, num_classes)
    if mode == "reversed":
        unlabeled = unlabeled[::-1]
    return labeled, unlabeled


@dataclass
class Split:
    """Indices of one run's labeled / unlabeled / validation images and the per-class counts.

    ``unlabeled_counts`` are the protocol's M_k; with ``unlabeled_includes_labeled`` the unlabeled
    set holds N_k + M_k images of class k (the labeled ones included).

    ``labeled_indices`` and ``val_indices`` index the training set. ``unlabeled_indices`` index
    the training set, or the separate unlabeled split when ``unlabeled_source == "unlabeled"``.
    """

    labeled_indices: np.ndarray
    unlabeled_indices: np.ndarray
    val_indices: np.ndarray
    labeled_counts: list[int]
    unlabeled_counts: list[int] | None
    unlabeled_source: str = "train"
    seed: int = 0
    settings: dict = field(default_factory=dict)
    class_order: list[int] | None = None  # source class of each run class (None: a split saved before it was kept)
    test_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # held out of train

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "settings": self.settings,
            "class_order": self.class_order,
            "labeled_counts": self.labeled_counts,
            "unlabeled_counts": self.unlabeled_counts,
            "unlabeled_source": self.unlabeled_source,
            "labeled_indices": self.labeled_indices.tolist(),
            "unlabeled_indices": self.unlabeled_indices.tolist(),
            "val_indices": self.val_indices.tolist(),
            "test_indices": self.test_indices.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Split":
        return cls(
            labeled_indices=np.asarray(data["labeled_indices"], dtype=np.int64),
            unlabeled_indices=np.asarray(data["unlabeled_indices"], dtype=np.int64),
            val_indices=np.asarray(data["val_indices"], dtype=np.int64),
            labeled_counts=list(data["labeled_counts"]),
            unlabeled_counts=None if data["unlabeled_counts"] is None else list(data["unlabeled_counts"]),
            unlabeled_source=data["unlabeled_source"],
            seed=int(data["seed"]),
            settings=dict(data.get("settings", {})),
            class_order=None if data.get("class_order") is None else [int(k) for k in data["class_order"]],
            test_indices=np.asarray(data.get("test_indices", []), dtype=np.int64),
        )

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_json(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read split file {path}: {exc}") from None


def split_generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([SPLIT_STREAM, int(seed)])))


def build_split(train_labels: np.ndarray, num_classes: int, data_config, seed: int,
                unlabeled_pool_size: int | None = None, class_order: list[int] | None = None) -> Split:
    """Choose the labeled, unlabeled and validation images of one run (spec section 1.3).

    Per class, indices in file order, permuted by the run seed under ``seeded_shuffle``. The first
    ``val_per_class`` go to validation; of the rest, labeled = the first N_k; unlabeled = the next
    M_k (disjoint) or the first N_k + M_k when ``unlabeled_includes_labeled``. With
    ``unlabeled_distribution: unknown`` the unlabeled set is the whole separate unlabeled split of
    ``unlabeled_pool_size`` images. ``train_labels`` are run classes (:mod:`cissl.data.class_order`);
    ``class_order`` (the source class of each, default the source order) is recorded with the split.
    """
    cfg = data_config
    labels = np.asarray(train_labels, dtype=np.int64)
    sizes = [max(0, int(n) - cfg.val_per_class) for n in np.bincount(labels, minlength=num_classes)]
    labeled_counts, unlabeled_counts = split_counts(cfg, num_classes, sizes)
    rng = split_generator(seed)
    labeled, unlabeled, val = [], [], []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if cfg.selection == "seeded_shuffle":
            members = members[rng.permutation(len(members))]
        need = cfg.val_per_class + labeled_counts[k] + (unlabeled_counts[k] if unlabeled_counts else 0)
        if need > len(members):
            m_k = unlabeled_counts[k] if unlabeled_counts else 0
            raise DataError(
                f"class {k} has {len(members)} training images but the split needs {need} "
                f"(validation {cfg.val_per_class} + labeled N_k {labeled_counts[k]} + unlabeled M_k {m_k}); "
                f"lower data.labeled_head / data.unlabeled_head / data.val_per_class")
        val.append(members[: cfg.val_per_class])
        rest = members[cfg.val_per_class:]
        n_k = labeled_counts[k]
        labeled.append(rest[:n_k])
        if unlabeled_counts is not None:
            m_k = unlabeled_counts[k]
            unlabeled.append(rest[: n_k + m_k] if cfg.unlabeled_includes_labeled else rest[n_k: n_k + m_k])
    if unlabeled_counts is None:
        if unlabeled_pool_size is None:
            raise DataError("data.unlabeled_distribution 'unknown' needs the data set's unlabeled split")
        unlabeled_idx = np.arange(unlabeled_pool_size, dtype=np.int64)
        source = "unlabeled"
    else:
        unlabeled_idx = np.concatenate(unlabeled).astype(np.int64)
        source = "train"
    settings = {key: getattr(cfg, key) for key in (
        "dataset", "labeled_head", "unlabeled_head", "imbalance_ratio", "unlabeled_distribution",
        "unlabeled_imbalance_ratio", "selection", "unlabeled_includes_labeled", "val_per_class", "class_order",
        "class_order_seed", "labeled_fraction")}
    return Split(
        labeled_indices=np.concatenate(labeled).astype(np.int64),
        unlabeled_indices=unlabeled_idx,
        val_indices=np.concatenate(val).astype(np.int64),
        labeled_counts=labeled_counts,
        unlabeled_counts=unlabeled_counts,
        unlabeled_source=source,
        seed=int(seed),
        settings=settings,
        class_order=list(range(num_classes)) if class_order is None else [int(k) for k in class_order],
    )


def build_given_split(train_labels: np.ndarray, num_classes: int, data_config, seed: int, unlabeled_pool_size: int,
                      has_test: bool, statistics: dict | None = None) -> Split:
    """The split of a user's own data (folder, arrays): every labeled image is labeled, except per class
    (seeded shuffle) the first ``val_per_class`` (validation) and, when the data brings no test set, the
    next floor(test_fraction * n_k) (test); every unlabeled image is unlabeled. The counts are observed."""
    cfg = data_config
    labels = np.asarray(train_labels, dtype=np.int64)
    rng = split_generator(seed)
    labeled, val, test, counts = [], [], [], []
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        members = members[rng.permutation(len(members))]
        held = 0 if has_test else int(math.floor(cfg.test_fraction * (len(members) - cfg.val_per_class)))
        rest = members[cfg.val_per_class + held:]
        if len(rest) < 1:
            raise DataError(f"class {k} has {len(members)} labeled images: none is left for training after "
                            f"{cfg.val_per_class} validation and {held} test images; add images or lower "
                            f"data.val_per_class / data.test_fraction")
        val.append(members[: cfg.val_per_class])
        test.append(members[cfg.val_per_class: cfg.val_per_class + held])
        labeled.append(rest)
        counts.append(len(rest))
    settings = {"dataset": cfg.dataset, "val_per_class": cfg.val_per_class,
                "test": "given" if has_test else f"held out: test_fraction {cfg.test_fraction} of each class",
                **(statistics or {})}
    return Split(labeled_indices=np.concatenate(labeled).astype(np.int64),
                 unlabeled_indices=np.arange(unlabeled_pool_size, dtype=np.int64),
                 val_indices=np.concatenate(val).astype(np.int64), labeled_counts=counts, unlabeled_counts=None,
                 unlabeled_source="unlabeled", seed=int(seed), settings=settings,
                 class_order=list(range(num_classes)), test_indices=np.concatenate(test).astype(np.int64))
