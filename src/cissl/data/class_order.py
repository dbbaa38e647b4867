"""Which source class is the run's head: ``data.class_order`` (recorded in ``split.json``).

The long-tailed protocol gives run class 0 the most labeled images and class K-1 the fewest
(:mod:`cissl.data.protocol`). ``class_order`` says which source class plays each part: run class k
is source class ``order[k]``. ``source`` keeps the data set's own order (the literature's CIFAR
convention, and the default); ``random`` draws a permutation from ``data.class_order_seed`` (kept
apart from ``train.seed`` so that several seeds share one order); a list is an explicit
permutation. The source's labels and class names are renamed once, right after reading, so the
split, the training, the metrics and every figure see the run's classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cissl.data.sources.base import DataSource, ImageSet

CLASS_ORDER_STREAM = 0xC1A55  # mixes data.class_order_seed into a generator used only for the order


def resolve_class_order(data_config, num_classes: int) -> list[int]:
    """The source class of each run class (a permutation of 0..K-1) for a :class:`DataConfig`."""
    order = data_config.class_order
    if order == "source":
        return list(range(num_classes))
    if order == "random":
        seed = np.random.SeedSequence([CLASS_ORDER_STREAM, int(data_config.class_order_seed)])
        return [int(k) for k in np.random.Generator(np.random.PCG64(seed)).permutation(num_classes)]
    return [int(k) for k in order]  # a permutation of 0..K-1: DataConfig.validate checks it


def reorder_classes(source: DataSource, order: list[int]) -> DataSource:
    """``source`` with run class k = source class order[k]: labels renamed, class names permuted."""
    if order == list(range(source.num_classes)):
        return source
    rename = np.empty(len(order), dtype=np.int64)
    rename[np.asarray(order)] = np.arange(len(order))

    def renamed(images: ImageSet | None) -> ImageSet | None:
        if images is None or images.labels is None:
            return images
        return ImageSet(images.images, rename[images.labels])

    return dataclasses.replace(source, train=renamed(source.train), test=renamed(source.test),
                               unlabeled=renamed(source.unlabeled),
                               class_names=[source.class_names[k] for k in order])
