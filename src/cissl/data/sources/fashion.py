"""Fashion-MNIST from IDX files (gzip or raw): ``data.root``, then Debian's package, then download."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from cissl.data.sources.base import DataSource, ImageSet, download_file
from cissl.errors import DataError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# md5 of the *decompressed* IDX files: mirrors re-compress the .gz files (Debian's differ from the
# official .gz bytes), the payload is the same everywhere.
FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)  # of the 60k training images


def parse_idx(payload: bytes, source: str, expected_dims: int) -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, type 0x08 = uint8, ndim; then the dims)."""
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0 or payload[2] != 0x08:
        raise DataError(f"fashion_mnist: {source} is not a uint8 IDX file")
    ndim = payload[3]
    if ndim != expected_dims:
        raise DataError(f"fashion_mnist: {source} has {ndim} dimensions, expected {expected_dims}")
    header = 4 + 4 * ndim
    dims = [int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(payload) != header + int(np.prod(dims)):
        raise DataError(f"fashion_mnist: {source} is truncated ({len(payload)} bytes for dims {dims})")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def _find(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


MAX_IDX_BYTES = 64 << 20  # the largest Fashion-MNIST file is 47 MB: anything beyond is not one (a gzip bomb)


def _read(path: Path, expected_md5: str | None) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                payload = handle.read(MAX_IDX_BYTES + 1)  # never decompress more than a real file holds
        else:
            payload = path.read_bytes() if path.stat().st_size <= MAX_IDX_BYTES else b"x" * (MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise DataError(f"fashion_mnist: cannot read {path} ({exc})") from None
    if len(payload) > MAX_IDX_BYTES:
        raise DataError(f"fashion_mnist: {path} holds more than {MAX_IDX_BYTES >> 20} MB: not a Fashion-MNIST file")
    if expected_md5 is not None:
        actual = hashlib.md5(payload).hexdigest()
        if actual != expected_md5:
            raise DataError(f"fashion_mnist: file {path} is corrupt (md5 of its content {actual}, "
                            f"expected {expected_md5}); delete it and download it again")
    return payload


def load_fashion_mnist(root: str | Path, download: bool = False, checksums: dict[str, str] | None = None,
                       search_system: bool = True) -> DataSource:
    """Read Fashion-MNIST (28x28 grey, 60k train / 10k test)."""
    root = Path(root)
    # data.root first (a copy the user points at is the one read and checked), then Debian's package
    folders = [root / "fashion_mnist", root] + ([SYSTEM_DIR] if search_system else [])
    sums = checksums if checksums is not None else FILES
    arrays = {}
    for name in FILES:
        path = _find(name, folders)
        if path is None and download:
            path = root / "fashion_mnist" / f"{name}.gz"
            download_file(URL + f"{name}.gz", path, "fashion_mnist")
        if path is None:
            searched = ", ".join(str(f) for f in folders)
            raise DataError(f"fashion_mnist: missing file {name}.gz (looked in {searched}); "
                            f"run `apt-get install dataset-fashion-mnist` or set data.download=true")
        arrays[name] = parse_idx(_read(path, sums.get(name)), str(path), 3 if "images" in name else 1)

    def split(prefix: str) -> ImageSet:
        images = arrays[f"{prefix}-images-idx3-ubyte"][:, None]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"fashion_mnist: {prefix} has {len(images)} images and {len(labels)} labels")
        if labels.max() > 9:
            raise DataError(f"fashion_mnist: {prefix} labels outside 0..9")
        return ImageSet(np.ascontiguousarray(images), labels)

    return DataSource("fashion_mnist", split("train"), split("t10k"), list(CLASSES), MEAN, STD)
