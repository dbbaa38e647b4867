"""CIFAR-10 / CIFAR-100 from the official python pickles (``cifar-10-batches-py``, ``cifar-100-python``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from cissl.data.sources.base import DataSource, ImageSet, check_md5, download_archive
from cissl.errors import DataError

# Official md5 sums (https://www.cs.toronto.edu/~kriz/cifar.html, also used by torchvision).
CIFAR10 = {
    "folder": "cifar-10-batches-py",
    "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "archive_md5": "c58f30108f718f92721af3b95e74349a",
    "train": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    },
    "test": {"test_batch": "40351d587109b95175f43aff81a1287e"},
    "meta": ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888", "label_names"),
    "label_key": "labels",
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2471, 0.2435, 0.2616),
}
CIFAR100 = {
    "folder": "cifar-100-python",
    "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "archive_md5": "eb9058c3a382ffc7106e4002c42a8d85",
    "train": {"train": "16019d7e3df5f24257cddd939b257f8d"},
    "test": {"test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
    "meta": ("meta", "7973b15100ade9c7d40fb424638fde48", "fine_label_names"),
    "label_key": "fine_labels",
    "mean": (0.5071, 0.4867, 0.4408),
    "std": (0.2675, 0.2565, 0.2761),
}


def _unpickle(path: Path, dataset: str) -> dict:
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except Exception as exc:  # truncated or foreign file: say which one
        raise DataError(f"{dataset}: cannot read {path} as a CIFAR pickle ({exc})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{dataset}: {path} does not hold a CIFAR batch dictionary")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _read_batches(folder: Path, files: dict, label_key: str, dataset: str) -> ImageSet:
    images, labels = [], []
    for name in files:
        entry = _unpickle(folder / name, dataset)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise DataError(f"{dataset}: {folder / name} is not a CIFAR batch ({exc})") from None
        if len(target) != len(data):
            raise DataError(f"{dataset}: {folder / name} has {len(data)} images and {len(target)} labels")
        images.append(data)
        labels.append(target)
    return ImageSet(np.concatenate(images), np.concatenate(labels))


def load_cifar(root: str | Path, spec: dict, dataset: str, download: bool = False,
               checksums: dict[str, str] | None = None) -> DataSource:
    """Read CIFAR-10/100 from ``root/<folder>``; md5-check every file first.

    ``checksums`` maps file name -> md5 and defaults to the official sums (tests pass their own).
    """
    root = Path(root)
    folder = root / spec["folder"]
    meta_name, meta_md5, meta_key = spec["meta"]
    sums = checksums if checksums is not None else {**spec["train"], **spec["test"], meta_name: meta_md5}
    names = [*spec["train"], *spec["test"], meta_name]
    if download and not all((folder / n).is_file() for n in names):
        download_archive(spec["url"], spec["archive_md5"], root, dataset)
    for name in names:
        try:
            check_md5(folder / name, sums.get(name), dataset)
        except DataError as exc:
            if not (folder / name).is_file():
                raise DataError(f"{exc}; point data.root at the folder that holds {spec['folder']}/ "
                                f"or set data.download=true") from None
            raise
    meta = _unpickle(folder / meta_name, dataset)
    if not isinstance(meta.get(meta_key), (list, tuple)) or not meta[meta_key]:
        raise DataError(f"{dataset}: {folder / meta_name} lists no class names ({meta_key}); delete it and "
                        f"download it again")
    class_names = [str(n) for n in meta[meta_key]]
    train = _read_batches(folder, spec["train"], spec["label_key"], dataset)
    test = _read_batches(folder, spec["test"], spec["label_key"], dataset)
    num_classes = len(class_names)
    for split_name, split in (("train", train), ("test", test)):
        if split.labels.min() < 0 or split.labels.max() >= num_classes:
            raise DataError(f"{dataset}: {split_name} labels outside 0..{num_classes - 1}")
    return DataSource(dataset, train, test, class_names, spec["mean"], spec["std"])


def load_cifar10(root, download: bool = False, checksums=None) -> DataSource:
    return load_cifar(root, CIFAR10, "cifar10", download, checksums)


def load_cifar100(root, download: bool = False, checksums=None) -> DataSource:
    return load_cifar(root, CIFAR100, "cifar100", download, checksums)
