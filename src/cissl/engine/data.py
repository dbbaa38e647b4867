"""From a config to the run's device-resident image pools (reads the source, builds or loads the split)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.data.protocol import Split, build_split
from cissl.data.sources import load_source
from cissl.data.stream import ImagePool


@dataclass
class TrainingData:
    name: str
    class_names: list[str]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split: Split
    labeled: ImagePool
    unlabeled: ImagePool  # labels only for diagnostics; None where unknown (STL-10)
    test: ImagePool
    val: ImagePool | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prepare_data(config, device: torch.device, split: Split | None = None) -> TrainingData:
    """Read the data set, build (or reuse) the split, and put uint8 images on ``device``."""
    source = load_source(config.data)
    train = source.train
    if split is None:
        pool_size = len(source.unlabeled) if source.unlabeled is not None else None
        split = build_split(train.labels, source.num_classes, config.data, config.train.seed, pool_size)
    if split.unlabeled_source == "unlabeled":
        unlabeled = ImagePool(source.unlabeled.images[split.unlabeled_indices], None, device)
    else:
        idx = split.unlabeled_indices
        unlabeled = ImagePool(train.images[idx], train.labels[idx], device)
    labeled = ImagePool(train.images[split.labeled_indices], train.labels[split.labeled_indices], device)
    val = None
    if len(split.val_indices):
        val = ImagePool(train.images[split.val_indices], train.labels[split.val_indices], device)
    test = ImagePool(source.test.images, source.test.labels, device)
    return TrainingData(source.name, source.class_names, source.channels, source.image_size, source.mean,
                        source.std, split, labeled, unlabeled, test, val)
