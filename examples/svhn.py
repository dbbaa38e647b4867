"""An example of a data set kept outside cissl (a plugin: docs/algorithms.md "A method in your own module"):
SVHN (Netzer et al., 2011), street-view house numbers, read from its official MATLAB files. Once registered,
the long-tailed protocol draws from it as from CIFAR-10 (``data.labeled_head``, ``imbalance_ratio``,
``unlabeled_distribution``, ``class_order``, ...); ``examples/svhn_lt.yaml`` is the CIFAR-10-LT recipe on it.
No result on it is claimed.

Files under ``data.root``: ``svhn/train_32x32.mat`` and ``svhn/test_32x32.mat`` (or both directly in
``data.root``), from http://ufldl.stanford.edu/housenumbers/ (``data.download=true`` fetches them; md5-checked).
Each holds ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1) with the digits 1..9 and 10 for the digit 0; run class
k is the digit k. The 531,131 "extra" images are not read. Reading needs scipy (``pip install scipy``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cissl.data.sources import DataSource, ImageSet, register_source
from cissl.data.sources.base import channel_statistics, check_md5, download_file
from cissl.errors import DataError

URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"}


def scipy_loadmat():
    """scipy's MATLAB reader and its error, or a DataError naming the package (checked before a run writes)."""
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise DataError("svhn: reading its .mat files needs scipy (pip install scipy)") from None
    return loadmat, MatReadError


@register_source("svhn", num_classes=10, channels=3, image_size=32, check_installed=scipy_loadmat)
def load_svhn(data_config) -> DataSource:
    """SVHN (MATLAB files; example plugin examples/svhn.py)"""
    root = Path(data_config.root)
    train, test = (_read_mat(_find(name, root, data_config.download), name) for name in FILES)
    mean, std = channel_statistics(train.images)
    return DataSource("svhn", train, test, [str(k) for k in range(10)], mean, std)


def _find(name: str, root: Path, download: bool) -> Path:
    for candidate in (root / "svhn" / name, root / name):
        if candidate.is_file():
            check_md5(candidate, FILES[name], "svhn")
            return candidate
    if not download:
        raise DataError(f"svhn: missing file {root / 'svhn' / name}; put it there or set data.download=true")
    target = root / "svhn" / name
    download_file(URL + name, target, "svhn")
    check_md5(target, FILES[name], "svhn")
    return target


def _read_mat(path: Path, name: str) -> ImageSet:
    loadmat, MatReadError = scipy_loadmat()
    # refused: not MATLAB 5, truncated, 7.3 (HDF5); scipy before 1.15 raises IndexError for a file under 128 bytes
    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, OSError, NotImplementedError, IndexError) as exc:
        raise DataError(f"svhn: cannot read {path} ({exc})") from None
    images, digits = mat.get("X"), mat.get("y")
    if images is None or digits is None or images.ndim != 4 or images.shape[:3] != (32, 32, 3) \
            or images.dtype != np.uint8 or digits.size != images.shape[3]:
        raise DataError(f"svhn: {path} is not {name} (expected X uint8 (32, 32, 3, N) and y with N digits)")
    labels = digits.reshape(-1).astype(np.int64)
    if labels.min() < 1 or labels.max() > 10:
        raise DataError(f"svhn: {path} has labels outside 1..10")
    # (H, W, C, N) -> (N, C, H, W); SVHN's label 10 is the digit 0
    return ImageSet(np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels % 10)
