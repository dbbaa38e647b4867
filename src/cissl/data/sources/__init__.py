"""Readers of the on-disk formats and the registry of data sets (name -> reader and facts).

The registry is the one place that knows each data set's facts: class count, channels, native
image size, whether it has a separate unlabeled split. Config validation, the readers and the
synthetic data of the throughput bench all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cissl.data.sources.base import DataSource, ImageSet
from cissl.data.sources.cifar import load_cifar10, load_cifar100
from cissl.data.sources.digits import load_digits_source
from cissl.data.sources.fashion import load_fashion_mnist
from cissl.data.sources.imagenet127 import load_imagenet127
from cissl.data.sources.own import load_arrays_source, load_folder_source
from cissl.data.sources.stl10 import load_stl10, resize_uint8
from cissl.errors import DataError

__all__ = ["DataSource", "ImageSet", "SOURCES", "SourceInfo", "load_source", "load_cifar10", "load_cifar100",
           "load_stl10", "load_fashion_mnist", "load_digits_source"]


@dataclass(frozen=True)
class SourceInfo:
    """What cissl knows of a data set before reading it."""

    name: str
    num_classes: int | None  # None: the data tells (a user's own data)
    channels: int | None
    image_size: int | None  # native side length of its square images
    has_unlabeled_split: bool
    read: Callable  # (data_config) -> DataSource at its native size (STL-10, own data: at data.image_size)
    given_split: bool = False  # labeled / unlabeled (/ test) given by the data, not drawn by the LT protocol


def _read_stl10(cfg) -> DataSource:
    return load_stl10(cfg.root, cfg.image_size, cfg.download, with_unlabeled=cfg.unlabeled_distribution == "unknown")


SOURCES: dict[str, SourceInfo] = {info.name: info for info in (
    SourceInfo("cifar10", 10, 3, 32, False, lambda cfg: load_cifar10(cfg.root, cfg.download)),
    SourceInfo("cifar100", 100, 3, 32, False, lambda cfg: load_cifar100(cfg.root, cfg.download)),
    SourceInfo("stl10", 10, 3, 96, True, _read_stl10),
    SourceInfo("fashion_mnist", 10, 1, 28, False, lambda cfg: load_fashion_mnist(cfg.root, cfg.download)),
    SourceInfo("digits", 10, 1, 8, False, lambda cfg: load_digits_source()),
    SourceInfo("imagenet127", 127, 3, 32, False, lambda cfg: load_imagenet127(cfg.root, cfg.image_size)),
    SourceInfo("folder", None, None, None, True, lambda cfg: load_folder_source(cfg.root, cfg.image_size), True),
    SourceInfo("arrays", None, None, None, True, lambda cfg: load_arrays_source(cfg.root, cfg.image_size), True),
)}


def load_source(data_config) -> DataSource:
    """Read the data set a :class:`cissl.config.DataConfig` names (resized if it asks)."""
    try:
        source = SOURCES[data_config.dataset].read(data_config)
    except OSError as exc:  # unreadable files or folders (permissions, a folder where a file belongs, I/O)
        where = exc.filename or data_config.root
        raise DataError(f"{data_config.dataset}: cannot read {where} ({exc.strerror or exc}); "
                        f"check data.root ({data_config.root})") from None
    size = data_config.image_size
    if size is not None and size != source.image_size and not SOURCES[data_config.dataset].given_split:
        source.train = ImageSet(resize_uint8(source.train.images, size), source.train.labels)
        source.test = ImageSet(resize_uint8(source.test.images, size), source.test.labels)
    return source
