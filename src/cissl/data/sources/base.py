"""What every data set reader returns, and the file checks they share (md5, download)."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cissl.errors import DataError
from cissl.rundir import atomic_write, ensure_folder


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W) and int64 labels (N,); labels is None where they are unknown."""

    images: np.ndarray
    labels: np.ndarray | None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"labels shape {self.labels.shape} does not match {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DataSource:
    """A data set as cissl uses it: train / test images, an optional unlabeled split, metadata."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    unlabeled: ImageSet | None = None  # a separate split without labels (STL-10)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def channel_statistics(*parts: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std, in [0, 1] units, of the uint8 (N, C, H, W) images of all
    ``parts`` together: two passes in float64 chunks of ``chunk`` images (never a float copy of a whole set)."""
    channels = parts[0].shape[1]
    count = sum(part.shape[0] * part.shape[2] * part.shape[3] for part in parts)

    def blocks():
        for part in parts:
            for start in range(0, len(part), chunk):
                yield part[start:start + chunk].astype(np.float64) / 255.0

    mean = sum((block.sum(axis=(0, 2, 3)) for block in blocks()), np.zeros(channels)) / count
    squares = sum((((block - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) for block in blocks()),
                  np.zeros(channels))
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(squares / count))


def md5_of_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def check_md5(path: Path, expected: str | None, dataset: str, actual: str | None = None) -> None:
    """Raise DataError naming ``path`` when it is missing or its md5 differs from ``expected``."""
    if not path.is_file():
        raise DataError(f"{dataset}: missing file {path}")
    if expected is None:
        return
    actual = actual if actual is not None else md5_of_file(path)
    if actual != expected:
        raise DataError(f"{dataset}: file {path} is corrupt (md5 {actual}, expected {expected}); "
                        f"delete it and download it again")


def download_file(url: str, target: Path, dataset: str) -> None:
    """Download one file to ``target`` atomically (a failed transfer leaves nothing behind)."""
    ensure_folder(target.parent)
    print(f"[cissl] downloading {dataset} from {url}", flush=True)

    def fetch(out) -> None:
        with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)

    try:
        atomic_write(target, fetch)
    except OSError as exc:
        raise DataError(f"{dataset}: download of {url} failed ({exc}); put the files under "
                        f"{target.parent} by hand (see README)") from None


def download_archive(url: str, md5: str, root: Path, dataset: str) -> None:
    """Download a tar archive into ``root`` (unless a good copy is there), check its md5, extract."""
    target = root / url.rsplit("/", 1)[-1]
    if not (target.is_file() and md5_of_file(target) == md5):
        download_file(url, target, dataset)
        check_md5(target, md5, dataset)
    try:
        with tarfile.open(target) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
                archive.extractall(root, filter="data")
            else:
                archive.extractall(root)
    except tarfile.TarError as exc:  # not a tar archive, or a member outside root (a link, '../', an absolute path)
        raise DataError(f"{dataset}: cannot extract {target} ({type(exc).__name__}: {exc}); delete it and "
                        f"download it again") from None
