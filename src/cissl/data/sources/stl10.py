"""STL-10 from the official binary release (``stl10_binary``): train, test and 100k unlabeled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cissl.data.sources.base import DataSource, ImageSet, check_md5, download_archive
from cissl.errors import DataError

STL10 = {
    "folder": "stl10_binary",
    "url": "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    "archive_md5": "91f7769df0f17e558f3565bffb0c7dfb",
    # md5 sums of the extracted files (as listed by torchvision)
    "files": {
        "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
        "train_y.bin": "5a34089d4802c674881badbb80307741",
        "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
        "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
        "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
    },
    "classes": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"],
}
NATIVE_SIZE = 96
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # spec section 2: STL-10 uses CIFAR-10 normalisation
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def resize_uint8(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Bilinear (antialiased, like PIL's resize) resize of uint8 (N, C, H, W) images, in chunks."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return np.ascontiguousarray(images)
    out = np.empty((len(images), images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[start:start + chunk])).float()
        block = F.interpolate(block, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _read_images(path: Path, dataset: str) -> np.ndarray:
    pixels = 3 * NATIVE_SIZE * NATIVE_SIZE
    size = path.stat().st_size
    if size % pixels:
        raise DataError(f"{dataset}: {path} has {size} bytes, not a whole number of 3x96x96 images")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE)
    return raw.transpose(0, 1, 3, 2)  # the files store each channel column-major


def _read_labels(path: Path, count: int, dataset: str) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # 1-based on disk
    if len(labels) != count:
        raise DataError(f"{dataset}: {path} has {len(labels)} labels for {count} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{dataset}: {path} holds labels outside 1..10")
    return labels


def load_stl10(root: str | Path, image_size: int | None = 32, download: bool = False,
               checksums: dict[str, str] | None = None, with_unlabeled: bool = True) -> DataSource:
    """Read STL-10; images are resized to ``image_size`` (spec 1.5: 32 px, bilinear) unless None."""
    dataset = "stl10"
    root = Path(root)
    folder = root / STL10["folder"]
    sums = checksums if checksums is not None else STL10["files"]
    names = [n for n in STL10["files"] if with_unlabeled or not n.startswith("unlabeled")]
    if download and not all((folder / n).is_file() for n in names):
        download_archive(STL10["url"], STL10["archive_md5"], root, dataset)
    for name in names:
        if not (folder / name).is_file():
            raise DataError(f"{dataset}: missing file {folder / name}; point data.root at the folder "
                            f"that holds stl10_binary/ or set data.download=true")
        check_md5(folder / name, sums.get(name), dataset)
    size = image_size or NATIVE_SIZE

    def split(prefix: str) -> ImageSet:
        images = _read_images(folder / f"{prefix}_X.bin", dataset)
        labels = _read_labels(folder / f"{prefix}_y.bin", len(images), dataset)
        return ImageSet(resize_uint8(images, size), labels)

    unlabeled = None
    if with_unlabeled:
        unlabeled = ImageSet(resize_uint8(_read_images(folder / "unlabeled_X.bin", dataset), size), None)
    class_file = folder / "class_names.txt"
    classes = STL10["classes"]
    if class_file.is_file():
        listed = [line.strip() for line in class_file.read_text().splitlines() if line.strip()]
        if len(listed) == 10:
            classes = listed
    return DataSource(dataset, split("train"), split("test"), list(classes), CIFAR10_MEAN, CIFAR10_STD,
                      unlabeled=unlabeled)
