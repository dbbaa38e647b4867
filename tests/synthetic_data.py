"""Writers of small data sets in the exact on-disk formats of the real ones (for reader tests)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def python2_pickle(value) -> bytes:
    """``value`` pickled as Python 2's cPickle (protocol 2) wrote the official CIFAR files: text as
    Python-2 ``str`` (SHORT_BINSTRING / BINSTRING: bytes a Python-3 reader must decode), numpy arrays
    through ``numpy.core.multiarray._reconstruct`` with their raw buffer as such a string. Handles what
    those files hold: dict, list, str, int, uint8 ndarray."""

    def text(raw: bytes) -> bytes:
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw

    def body(item) -> bytes:
        if isinstance(item, dict):
            return b"}(" + b"".join(body(k) + body(v) for k, v in item.items()) + b"u"
        if isinstance(item, list):
            return b"](" + b"".join(body(v) for v in item) + b"e"
        if isinstance(item, str):
            return text(item.encode("latin1"))
        if isinstance(item, (int, np.integer)):
            return b"J" + struct.pack("<i", int(item))
        if isinstance(item, np.ndarray) and item.dtype == np.uint8:
            shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in item.shape) + b"t"
            dtype = (b"cnumpy\ndtype\n" + text(b"u1") + b"K\x00K\x01\x87R"  # dtype('u1', 0, 1)
                     + b"(K\x03" + text(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + text(b"b")
                    + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89" + text(item.tobytes()) + b"tb")
        raise TypeError(f"python2_pickle: {type(item).__name__}")

    return b"\x80\x02" + body(value) + b"."


def write_cifar10(root: Path, per_batch: int = 12, test: int = 10, seed: int = 0, bytes_keys=False) -> dict:
    """cifar-10-batches-py with 5 train batches, a test batch and batches.meta, pickled by Python 2 as the
    official files are; ``bytes_keys``: by Python 3 instead, with bytes keys (as a re-packed copy may be)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)

    def dump(value, path):
        path.write_bytes(pickle.dumps(value, protocol=2) if bytes_keys else python2_pickle(value))
    truth = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        dump({key("batch_label"): f"{name}", key("labels"): labels, key("data"): data,
              key("filenames"): [f"img{i}.png" for i in range(n)]}, folder / name)
        truth[name] = (data, labels)
    dump({key("label_names"): ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                               "truck"], key("num_vis"): 3072}, folder / "batches.meta")
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
        (folder / name).write_bytes(python2_pickle({"filenames": [], "batch_label": name, "fine_labels": fine,
                                                    "coarse_labels": [f // 5 for f in fine], "data": data}))
        truth[name] = (data, fine)
    (folder / "meta").write_bytes(python2_pickle({"fine_label_names": [f"class{i}" for i in range(100)],
                                                  "coarse_label_names": [f"super{i}" for i in range(20)]}))
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
