"""Writers of small data sets in the exact on-disk formats of the real ones (for reader tests)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path

import numpy as np


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar10(root: Path, per_batch: int = 12, test: int = 10, seed: int = 0, bytes_keys=False) -> dict:
    """cifar-10-batches-py with 5 train batches, a test batch and batches.meta (python-2 style pickles)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    truth = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({key("batch_label"): f"{name}", key("labels"): labels, key("data"): data,
                         key("filenames"): [f"img{i}.png" for i in range(n)]}, handle, protocol=2)
        truth[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({key("label_names"): ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                          "horse", "ship", "truck"], key("num_vis"): 3072}, handle, protocol=2)
    truth["checksums"] = {p.name: md5(p) for p in folder.iterdir()}
    return truth


def write_cifar100(root: Path, train: int = 30, test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, n in (("train", train), ("test", test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"filenames": [], "batch_label": name, "fine_labels": fine,
                         "coarse_labels": [f // 5 for f in fine], "data": data}, handle, protocol=2)
        truth[name] = (data, fine)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, handle, protocol=2)
    truth["checksums"] = {p.name: md5(p) for p in folder.iterdir()}
    return truth


def write_stl10(root: Path, train: int = 8, test: int = 6, unlabeled: int = 5, seed: int = 0) -> dict:
    """stl10_binary: *_X.bin hold each image's channels column-major; *_y.bin 1-based uint8 labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for prefix, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{prefix}_X.bin")
        labels = None
        if prefix != "unlabeled":
            labels = rng.integers(0, 10, n)
            (labels + 1).astype(np.uint8).tofile(folder / f"{prefix}_y.bin")
        truth[prefix] = (images, labels)
    (folder / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    truth["checksums"] = {p.name: md5(p) for p in folder.iterdir() if p.suffix == ".bin"}
    return truth


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, train: int = 20, test: int = 10, seed: int = 0, compress=True) -> dict:
    """IDX files (gzipped like the official release, or raw)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth, sums = {}, {}
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            payload = idx_bytes(array)
            name = f"{prefix}-{kind}"
            sums[name] = hashlib.md5(payload).hexdigest()
            if compress:
                with gzip.open(folder / f"{name}.gz", "wb") as handle:
                    handle.write(payload)
            else:
                (folder / name).write_bytes(payload)
        truth[prefix] = (images, labels)
    truth["checksums"] = sums
    return truth
