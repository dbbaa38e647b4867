"""Readers of the on-disk formats; :func:`load_source` picks one from a :class:`DataConfig`."""

from __future__ import annotations

from cissl.data.sources.base import DataSource, ImageSet
from cissl.data.sources.cifar import load_cifar10, load_cifar100
from cissl.data.sources.digits import load_digits_source
from cissl.data.sources.fashion import load_fashion_mnist
from cissl.data.sources.stl10 import load_stl10, resize_uint8

__all__ = ["DataSource", "ImageSet", "load_source", "load_cifar10", "load_cifar100", "load_stl10",
           "load_fashion_mnist", "load_digits_source"]

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10, "fashion_mnist": 10, "digits": 10}


def load_source(data_config) -> DataSource:
    """Read the data set a :class:`cissl.config.DataConfig` names (resized if it asks)."""
    name, root, download = data_config.dataset, data_config.root, data_config.download
    if name == "cifar10":
        source = load_cifar10(root, download)
    elif name == "cifar100":
        source = load_cifar100(root, download)
    elif name == "stl10":
        return load_stl10(root, data_config.image_size, download,
                          with_unlabeled=data_config.unlabeled_distribution == "unknown")
    elif name == "fashion_mnist":
        source = load_fashion_mnist(root, download)
    elif name == "digits":
        source = load_digits_source()
    else:  # the config validation lists the allowed names
        raise ValueError(f"unknown data set {name!r}")
    size = data_config.image_size
    if size is not None and size != source.image_size:
        source.train = ImageSet(resize_uint8(source.train.images, size), source.train.labels)
        source.test = ImageSet(resize_uint8(source.test.images, size), source.test.labels)
    return source
