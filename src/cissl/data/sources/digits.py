"""scikit-learn's bundled 8x8 digits (1,797 images): the embedded default data set."""

from __future__ import annotations

import numpy as np

from cissl.data.sources.base import DataSource, ImageSet
from cissl.errors import DataError

TEST_PER_CLASS = 50  # the last 50 images of each class (file order) form the fixed test set


def sklearn_load_digits():
    """scikit-learn's reader of the digits, or a ``DataError`` naming the extra that installs it."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits: the digits data set comes with scikit-learn; "
                        "install it with `pip install 'cissl[digits]'`") from None
    return load_digits


def load_digits_source() -> DataSource:
    """Digits as uint8 (N, 1, 8, 8) in 0..255 (scaled from 0..16); a fixed, balanced test split."""
    bunch = sklearn_load_digits()()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    test_mask = np.zeros(len(labels), dtype=bool)
    for k in range(10):
        test_mask[np.flatnonzero(labels == k)[-TEST_PER_CLASS:]] = True
    train = ImageSet(images[~test_mask], labels[~test_mask])
    test = ImageSet(images[test_mask], labels[test_mask])
    scaled = train.images.astype(np.float64) / 255.0
    mean, std = (float(scaled.mean()),), (float(scaled.std()),)
    return DataSource("digits", train, test, [str(k) for k in range(10)], mean, std)
