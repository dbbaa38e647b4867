"""Small-ImageNet-127: built once from the downsampled ImageNet pickles, then memory-mapped.

Source: Imagenet32 / Imagenet64 (Chrabaszcz, Loshchilov and Hutter 2017; image-net.org's "downsampled
ImageNet"): ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``, pickled dicts with
``data`` (N, 3 * S * S) uint8 rows (the red plane, then green, then blue) and ``labels`` 1..1000 (the
ILSVRC-2012 ids). :func:`build_imagenet127` maps the 1000 classes to the 127 WordNet classes of Huh et
al. (2016) that the CISSL literature uses (the table ``data/imagenet127.json``, its sources named in
``tests/reference/imagenet127_grouping.py``), orders the 127 classes by decreasing training count
(class 0 is the head; ties by the grouping's order) and writes, in the output folder:

- ``train_images.u8`` / ``test_images.u8``: raw uint8 (N, 3, S, S), read by ``numpy.memmap``;
- ``train_labels.npy`` / ``test_labels.npy``: int16 classes 0..126;
- ``meta.json``, written last (its presence marks a complete build): the size, the classes (wnid,
  name, grouping index), per-class train and test counts, and the source files.

The test set is ILSVRC-2012's validation set (50 images per synset, so imbalanced over 127 classes).
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from cissl.data.sources.base import DataSource, ImageSet
from cissl.errors import DataError
from cissl.rundir import atomic_write_json, ensure_folder

TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
TEST_FILE = "val_data"
FULL_TRAIN, FULL_TEST = 1_281_167, 50_000  # ILSVRC-2012 (the downsampled sets keep every image)
FORMAT = "cissl-imagenet127"
# spec section 2 (the CoSSL / SeMi code's constants)
MEAN = (0.48109809, 0.45747185, 0.40785507)
STD = (0.26040889, 0.2532126, 0.26820634)


def grouping() -> dict:
    """The shipped table: ``classes`` (127 x wnid, name) and ``ilsvrc`` (1000 x id, wnid, name, class)."""
    return json.loads(resources.files("cissl.data.sources").joinpath("data/imagenet127.json").read_text())


def class_of_ilsvrc_id() -> np.ndarray:
    """(1001,) int16: the grouping's class of each ILSVRC id 1..1000 (entry 0 unused, -1)."""
    table = np.full(1001, -1, dtype=np.int16)
    for entry in grouping()["ilsvrc"]:
        table[entry["id"]] = entry["class"]
    return table


def _read_pickle(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, S, S) uint8, ILSVRC ids (N,)) of one downsampled-ImageNet pickle."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        if isinstance(entry, dict):
            entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"imagenet127: cannot read {path} as a downsampled-ImageNet pickle ({type(exc).__name__}: "
                        f"{exc}); download it again") from None
    width = 3 * size * size
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != width:
        other = int(round((data.shape[1] / 3) ** 0.5)) if data.ndim == 2 else None
        raise DataError(f"imagenet127: {path} holds {data.dtype} rows of shape {data.shape[1:]}, not uint8 rows of "
                        f"3 x {size} x {size} = {width}" + (f" (its images are {other} px: --size {other}?)"
                                                            if other in (32, 64) and other != size else ""))
    if len(labels) != len(data) or len(labels) and (labels.min() < 1 or labels.max() > 1000):
        raise DataError(f"imagenet127: {path} has {len(data)} images and {len(labels)} labels, which must be "
                        f"ILSVRC ids 1..1000 (one per image)")
    return data.reshape(-1, 3, size, size), labels


def build_imagenet127(source: Path, size: int, out: Path, partial: bool = False, stream=None) -> dict:
    """Build Small-ImageNet-127 at ``size`` px from ``source`` into ``out``; returns its meta data."""
    stream = stream or sys.stderr
    source, out = Path(source), Path(out)
    if size not in (32, 64):
        raise DataError(f"imagenet127: --size must be 32 or 64 (the downsampled ImageNet sizes), got {size}")
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (source / name).is_file()]
    if missing:
        raise DataError(f"imagenet127: {source} lacks {', '.join(missing)}; it must hold the Imagenet{size} files "
                        f"train_data_batch_1..10 and val_data (image-net.org, 'downsampled ImageNet')")
    if (out / "meta.json").exists():
        raise DataError(f"imagenet127: {out} already holds a build (meta.json); choose another --out or remove it")
    ensure_folder(out)
    to_class = class_of_ilsvrc_id()
    start = time.perf_counter()
    files = [*TRAIN_FILES, TEST_FILE]
    labels = {"train": [], "test": []}
    ids = {"train": [], "test": []}
    handles = {part: open(out / f"{part}_images.u8.partial", "wb") for part in ("train", "test")}
    try:
        for done, name in enumerate(files, start=1):
            part = "test" if name == TEST_FILE else "train"
            images, ilsvrc = _read_pickle(source / name, size)
            images.tofile(handles[part])
            ids[part].append(ilsvrc)
            labels[part].append(to_class[ilsvrc])
            print(f"imagenet127: {name}: {len(images):,} images ({done}/{len(files)} files, "
                  f"{time.perf_counter() - start:.0f} s)", file=stream, flush=True)
    finally:
        for handle in handles.values():
            handle.close()
    grouped = {part: np.concatenate(parts) for part, parts in labels.items()}
    check_counts(grouped, np.concatenate(ids["test"]), partial)
    # class 0 = the most training images (ties: the grouping's order)
    counts = np.bincount(grouped["train"], minlength=127)
    order = sorted(range(127), key=lambda c: (-counts[c], c))
    rank = np.empty(127, dtype=np.int16)
    rank[order] = np.arange(127)
    table = grouping()["classes"]
    for part in ("train", "test"):
        np.save(out / f"{part}_labels.npy", rank[grouped[part]].astype(np.int16))
        (out / f"{part}_images.u8.partial").replace(out / f"{part}_images.u8")
    meta = {
        "format": FORMAT, "version": 1, "size": size,
        "classes": [{**table[c], "grouping_index": c} for c in order],
        "train_counts": [int(counts[c]) for c in order],
        "test_counts": [int(np.sum(grouped["test"] == c)) for c in order],
        "train_images": int(len(grouped["train"])), "test_images": int(len(grouped["test"])),
        "complete": len(grouped["train"]) == FULL_TRAIN and len(grouped["test"]) == FULL_TEST,
        "source": {"folder": str(source.resolve()), "files": {n: (source / n).stat().st_size for n in files}},
    }
    atomic_write_json(out / "meta.json", meta)
    print(f"imagenet127: {meta['train_images']:,} training and {meta['test_images']:,} test images in 127 classes "
          f"({meta['train_counts'][0]:,} .. {meta['train_counts'][-1]:,} per class) written to {out} "
          f"({time.perf_counter() - start:.0f} s)", file=stream, flush=True)
    return meta


def check_counts(grouped: dict, test_ids: np.ndarray, partial: bool) -> None:
    """A full source has ILSVRC-2012's totals and 50 validation images per synset (so 50 x the synsets
    of each of the 127 classes); anything else is a partial or damaged download, built only with
    ``partial``."""
    train, test = len(grouped["train"]), len(grouped["test"])
    if train == FULL_TRAIN and test == FULL_TEST:
        per_synset = np.bincount(test_ids, minlength=1001)[1:]
        if not np.all(per_synset == 50):
            bad = int(np.flatnonzero(per_synset != 50)[0]) + 1
            raise DataError(f"imagenet127: val_data has {per_synset[bad - 1]} images of ILSVRC id {bad}, ILSVRC-2012 "
                            f"has 50 of every class: a damaged val_data")
        return
    if not partial:
        raise DataError(f"imagenet127: the source holds {train:,} training and {test:,} validation images, "
                        f"ILSVRC-2012 has {FULL_TRAIN:,} and {FULL_TEST:,}: a partial or damaged download; pass "
                        f"--partial to build from it anyway")


def load_imagenet127(root: Path, image_size: int | None = None) -> DataSource:
    """The built data set in ``root`` (:func:`build_imagenet127`), images memory-mapped."""
    root = Path(root)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except FileNotFoundError:
        raise DataError(f"imagenet127: {root} holds no build (meta.json); make one with `cissl data "
                        f"build-imagenet127 --source DIR --size 32|64 --out {root}`") from None
    except ValueError as exc:
        raise DataError(f"imagenet127: {root / 'meta.json'} is damaged ({exc}); build again") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"imagenet127: {root / 'meta.json'} is not a {FORMAT} build")
    size = int(meta["size"])
    if image_size is not None and image_size != size:
        raise DataError(f"imagenet127: {root} was built at {size} px, the config asks data.image_size={image_size}; "
                        f"build at that size (cissl data build-imagenet127 --size {image_size}) into another folder")
    parts = {}
    for part in ("train", "test"):
        count = int(meta[f"{part}_images"])
        path = root / f"{part}_images.u8"
        expected = count * 3 * size * size
        if not path.is_file() or path.stat().st_size != expected:
            found = path.stat().st_size if path.is_file() else "no file"
            raise DataError(f"imagenet127: {path} should hold {expected:,} bytes ({count:,} images), found {found}; "
                            f"build again")
        labels = np.load(root / f"{part}_labels.npy").astype(np.int64)
        if len(labels) != count:
            raise DataError(f"imagenet127: {root / f'{part}_labels.npy'} has {len(labels):,} labels for {count:,} "
                            f"images; build again")
        parts[part] = ImageSet(np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, size, size)), labels)
    names = [c["name"] for c in meta["classes"]]
    return DataSource("imagenet127", parts["train"], parts["test"], names, MEAN, STD)
