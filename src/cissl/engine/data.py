"""From a config to the run's device-resident image pools (reads the source, builds or loads the split)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from cissl import distributed
from cissl.data.class_order import reorder_classes, resolve_class_order
from cissl.data.protocol import Split, build_given_split, build_split
from cissl.data.sources import SOURCES, load_source
from cissl.data.sources.base import DataSource
from cissl.data.stream import ImagePool
from cissl.engine.agreement import check_same_data, in_turns
from cissl.errors import ConfigError, DataError


@dataclass
class TrainingData:
    class_names: list[str]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split: Split
    labeled: ImagePool
    unlabeled: ImagePool  # labels only for diagnostics; None where unknown (STL-10)
    test: ImagePool  # what every evaluation scores: the test set, or the validation split (train.evaluate_on)
    val: ImagePool | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_run_source(data_config, split: Split | None = None) -> tuple[DataSource, list[int]]:
    """The data set with its classes in the run's order (``data.class_order``), and that order; a saved
    ``split`` must have been built with the same order."""
    source = load_source(data_config)
    order = resolve_class_order(data_config, source.num_classes)
    if split is not None and split.class_order is not None and split.class_order != order:
        raise DataError(f"the run's split.json was built with class order {split.class_order}, its config "
                        f"(data.class_order) gives {order}")
    return reorder_classes(source, order), order


def new_split(config, source: DataSource, order: list[int]) -> Split:
    """The run's split of ``source`` (classes already in the run's order) for ``config``."""
    pool_size = len(source.unlabeled) if source.unlabeled is not None else None
    if SOURCES[config.data.dataset].given_split:
        statistics = {"class_names": source.class_names, "mean": list(source.mean), "std": list(source.std),
                      "image_shape": [source.channels, source.image_size, source.image_size]}
        return build_given_split(source.train.labels, source.num_classes, config.data, config.train.seed,
                                 pool_size, source.test is not None, statistics)
    return build_split(source.train.labels, source.num_classes, config.data, config.train.seed, pool_size, order)


def streams_images(data_config, images: np.ndarray, device: torch.device) -> bool:
    """Whether the run leaves ``images`` in their memory-mapped file (``data.stream_images``)."""
    if data_config.stream_images != "auto":
        return data_config.stream_images == "always"
    if not isinstance(images, np.memmap):
        return False
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return images.nbytes > free / 2


def prepare_data(config, device: torch.device, split: Split | None = None) -> TrainingData:
    """Read the data set, build (or reuse) the split, and put uint8 images on ``device`` (or, for a
    memory-mapped data set too large for it, stream them from the file: ``data.stream_images``)."""
    source, order = load_run_source(config.data, split)
    train = source.train
    if split is None:
        split = new_split(config, source, order)
    else:
        check_split_indices(split, source)
    stream = streams_images(config.data, train.images, device)

    def pool(images, labels, rows=None):  # rows None: every image (no copy)
        if rows is None:
            rows = slice(None)
        if stream:
            return ImagePool.streamed(images, np.arange(len(images))[rows], None if labels is None else labels[rows],
                                      device)
        return ImagePool(images[rows], None if labels is None else labels[rows], device)

    if split.unlabeled_source == "unlabeled":
        unlabeled = pool(source.unlabeled.images, None, split.unlabeled_indices)
    else:
        unlabeled = pool(train.images, train.labels, split.unlabeled_indices)
    labeled = pool(train.images, train.labels, split.labeled_indices)
    val = None
    if len(split.val_indices):
        val = pool(train.images, train.labels, split.val_indices)
    if config.train.evaluate_on == "val":
        test = val  # the test images are not even put on the device: nothing can be tuned to them
    elif len(split.test_indices):  # held out of a user's labeled images
        test = pool(train.images, train.labels, split.test_indices)
    else:
        test = pool(source.test.images, source.test.labels)
    check_split_fits(config, split)
    return TrainingData(source.class_names, source.channels, source.image_size, source.mean,
                        source.std, split, labeled, unlabeled, test, val)


def prepare_rank_data(config, device: torch.device, split: Split | None = None) -> TrainingData:
    """This rank's data; under torchrun read in turns (one download per node at most) and checked to be
    the data every other rank read."""
    if not distributed.active():
        return prepare_data(config, device, split)
    data = in_turns(lambda: prepare_data(config, device, split))
    check_same_data(data_identity(data), config.data)
    return data


def data_identity(data: TrainingData, sample: int = 64) -> dict:
    """What identifies the data a run read (for ranks to compare): the class names, the split, and per
    pool its labels and ``sample`` images spread evenly over it (not every image: a pool can be large,
    or streamed from its file)."""
    parts = {"class names": list(data.class_names),
             "split": [torch.from_numpy(np.asarray(indices, dtype=np.int64)) for indices in (
                 data.split.labeled_indices, data.split.unlabeled_indices, data.split.val_indices,
                 data.split.test_indices)]}
    for name, pool in (("labeled", data.labeled), ("unlabeled", data.unlabeled), ("validation", data.val),
                       ("test", data.test)):
        if pool is None:
            continue
        rows = torch.linspace(0, len(pool) - 1, min(sample, len(pool))).round().long().unique()
        parts[f"{name} images"] = [len(pool), pool.images[rows].cpu(),
                                   None if pool.labels is None else pool.labels.cpu()]
    return parts


def check_split_indices(split: Split, source: DataSource) -> None:
    """A saved split must index this data set (a split.json of another data set or a damaged one)."""
    unlabeled_size = len(source.unlabeled) if split.unlabeled_source == "unlabeled" else len(source.train)
    for name, indices, size in (("labeled", split.labeled_indices, len(source.train)),
                                ("val", split.val_indices, len(source.train)),
                                ("test", split.test_indices, len(source.train)),
                                ("unlabeled", split.unlabeled_indices, unlabeled_size)):
        bad = indices[(indices < 0) | (indices >= size)]
        if len(bad):
            raise DataError(f"split.json: {name} index {int(bad[0])} is out of range for the {size} images of "
                            f"{source.name}; the file does not belong to this data set")


def check_split_fits(config, split: Split) -> None:
    """The batch streams need a labeled batch's worth of labeled images and some unlabeled ones."""
    labeled = len(split.labeled_indices)
    if config.train.batch_size > labeled:
        raise ConfigError(f"config key 'train.batch_size': {config.train.batch_size} labeled images per step, but the "
                          f"split holds {labeled}; lower train.batch_size or raise data.labeled_head")
    if len(split.unlabeled_indices) == 0:
        raise ConfigError("config key 'data.unlabeled_head': the split holds no unlabeled images; the unlabeled "
                          "stream needs some, set data.unlabeled_head >= 1")
