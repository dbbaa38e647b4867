"""Readers of the on-disk formats and the registry of data sets (name -> reader and facts).

The registry is the one place that knows each data set's facts: class count, channels, native
image size, whether it has a separate unlabeled split. Config validation, the readers and the
synthetic data of the throughput bench all read it. :func:`register_source` adds a data set (a
plugin's: docs/algorithms.md) that the long-tailed protocol then draws from like CIFAR-10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cissl.data.sources.base import DataSource, ImageSet
from cissl.data.sources.cifar import load_cifar10, load_cifar100
from cissl.data.sources.digits import load_digits_source, sklearn_load_digits
from cissl.data.sources.fashion import load_fashion_mnist
from cissl.data.sources.imagenet127 import load_imagenet127
from cissl.data.sources.own import load_arrays_source, load_folder_source, require_pillow
from cissl.data.sources.stl10 import load_stl10, resize_uint8
from cissl.errors import DataError
from cissl.schema import add_entry, first_doc_line

__all__ = ["DataSource", "ImageSet", "SOURCES", "SourceInfo", "check_source_installed", "load_source",
           "register_source", "load_cifar10", "load_cifar100", "load_stl10", "load_fashion_mnist",
           "load_digits_source"]


@dataclass(frozen=True)
class SourceInfo:
    """What cissl knows of a data set before reading it."""

    name: str
    num_classes: int | None  # None: the data tells (a user's own data)
    channels: int | None
    image_size: int | None  # native side length of its square images
    has_unlabeled_split: bool
    read: Callable  # (data_config) -> DataSource at its native size (STL-10, own data: at data.image_size)
    given_split: bool = False  # labeled / unlabeled (/ test) given by the data, not drawn by the LT protocol
    summary: str = ""  # one line for `cissl list`
    size_of_build: bool = False  # image_size is the default only: the files hold the size they were built at
    check_installed: Callable[[], None] | None = None  # raises a DataError naming the extra its reader needs


# The built-in readers, each (data_config) -> DataSource; named so that a reader-check message names them.
def _read_cifar10(cfg) -> DataSource:
    return load_cifar10(cfg.root, cfg.download)


def _read_cifar100(cfg) -> DataSource:
    return load_cifar100(cfg.root, cfg.download)


def _read_stl10(cfg) -> DataSource:
    return load_stl10(cfg.root, cfg.image_size, cfg.download, with_unlabeled=cfg.unlabeled_distribution == "unknown")


def _read_fashion_mnist(cfg) -> DataSource:
    return load_fashion_mnist(cfg.root, cfg.download)


def _read_digits(cfg) -> DataSource:
    return load_digits_source()


def _read_imagenet127(cfg) -> DataSource:
    return load_imagenet127(cfg.root, cfg.image_size)


def _read_folder(cfg) -> DataSource:
    return load_folder_source(cfg.root, cfg.image_size)


def _read_arrays(cfg) -> DataSource:
    return load_arrays_source(cfg.root, cfg.image_size)


SOURCES: dict[str, SourceInfo] = {info.name: info for info in (
    SourceInfo("cifar10", 10, 3, 32, False, _read_cifar10,
               summary="CIFAR-10 (python pickles)"),
    SourceInfo("cifar100", 100, 3, 32, False, _read_cifar100,
               summary="CIFAR-100 (python pickles)"),
    SourceInfo("stl10", 10, 3, 96, True, _read_stl10, summary="STL-10 (binary files) with its unlabeled split"),
    SourceInfo("fashion_mnist", 10, 1, 28, False, _read_fashion_mnist,
               summary="Fashion-MNIST (IDX files)"),
    SourceInfo("digits", 10, 1, 8, False, _read_digits,
               summary="scikit-learn's handwritten digits", check_installed=sklearn_load_digits),
    SourceInfo("imagenet127", 127, 3, 32, False, _read_imagenet127,
               summary="Small-ImageNet-127 built by `cissl data build-imagenet127` (data.image_size: 32 or 64)",
               size_of_build=True),
    SourceInfo("folder", None, None, None, True, _read_folder, True,
               summary="your images: labeled/<class>/, unlabeled/, test/<class>/ (parts as given)",
               check_installed=require_pillow),
    SourceInfo("arrays", None, None, None, True, _read_arrays, True,
               summary="your uint8 arrays in an .npz file (parts as given)"),
)}


def register_source(name: str, *, num_classes: int, channels: int, image_size: int,
                    has_unlabeled_split: bool = False, check_installed: Callable[[], None] | None = None):
    """Decorator: ``@register_source("svhn", num_classes=10, channels=3, image_size=32)`` on a reader
    ``(data_config) -> DataSource`` makes ``data.dataset: svhn`` read it. The reader returns the data set's
    labeled training images (labels 0..num_classes-1), its test images and their per-channel mean / std, at
    ``image_size`` (the native side length; ``data.image_size`` resizes after reading); with
    ``has_unlabeled_split``, also a separate unlabeled split (``data.unlabeled_distribution: unknown`` uses
    it, as STL-10's). The long-tailed protocol then draws the run's labeled and unlabeled images from the
    training images, as it does from CIFAR-10's. The reader's docstring's first line is its ``cissl list``
    summary. ``check_installed``, a function of no arguments that raises a ``DataError`` naming the package to
    install, runs before a training run reads or writes anything (as for the built-in readers)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a data set's name must be a word of letters, digits and _, got {name!r}")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"data set {name!r}: num_classes must be an int >= 2, got {num_classes!r}")
    if channels not in (1, 3):
        raise ValueError(f"data set {name!r}: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if not (isinstance(image_size, int) and image_size >= 4):
        raise ValueError(f"data set {name!r}: image_size must be an int >= 4, got {image_size!r}")
    if check_installed is not None and not callable(check_installed):
        raise ValueError(f"data set {name!r}: check_installed must be a function of no arguments, got "
                         f"{check_installed!r}")

    def decorate(read):
        add_entry(SOURCES, "data set", name, SourceInfo(name, num_classes, channels, image_size,
                                                         bool(has_unlabeled_split), read, summary=first_doc_line(read),
                                                         check_installed=check_installed))
        return read

    return decorate


def check_source_installed(data_config) -> None:
    """Raise a ``DataError`` naming the extra to install when the reader of ``data.dataset`` needs a missing
    package (digits: scikit-learn; folder: Pillow), before a run reads or writes anything."""
    check = SOURCES[data_config.dataset].check_installed
    if check is not None:
        check()


def load_source(data_config) -> DataSource:
    """Read the data set a :class:`cissl.config.DataConfig` names (resized if it asks)."""
    info = SOURCES[data_config.dataset]
    try:
        source = info.read(data_config)
    except OSError as exc:  # unreadable files or folders (permissions, a folder where a file belongs, I/O)
        where = exc.filename or data_config.root
        raise DataError(f"{data_config.dataset}: cannot read {where} ({exc.strerror or exc}); "
                        f"check data.root ({data_config.root})") from None
    if not info.given_split:
        check_read(info, data_config, source)
    size = data_config.image_size
    if size is not None and size != source.image_size and not info.given_split:
        source.train = ImageSet(resize_uint8(source.train.images, size), source.train.labels)
        source.test = ImageSet(resize_uint8(source.test.images, size), source.test.labels)
    return source


def check_read(info: SourceInfo, data_config, source) -> None:
    """What a reader returned agrees with the data set's registered facts (a plugin's reader is checked like
    cissl's own): a :class:`DataSource` with labeled train and test images of ``info.num_classes`` classes,
    ``info.channels`` channels, square images of the native size (or of ``data.image_size``, which STL-10's
    reader applies itself; any size for a build such as Small-ImageNet-127's, whose reader checks it), a mean /
    std per channel, and the unlabeled split where the protocol needs it."""
    name = info.name

    def fail(what: str) -> None:
        raise DataError(f"{name}: its reader ({_reader_name(info.read)}) returned {what}")

    if not isinstance(source, DataSource):
        fail(f"a {type(source).__name__}, not a cissl.data.sources.DataSource")
    if source.num_classes != info.num_classes:
        fail(f"{source.num_classes} class names; the data set is registered with {info.num_classes} classes")
    sizes = {info.image_size, data_config.image_size}
    for part in ("train", "test"):
        images = getattr(source, part)
        if not isinstance(images, ImageSet) or images.labels is None:
            fail(f"no labeled {part} images (an ImageSet with labels)")
        if len(images.labels) and not 0 <= images.labels.min() <= images.labels.max() < info.num_classes:
            fail(f"{part} labels outside 0..{info.num_classes - 1}")
        shape = images.images.shape[1:]
        if shape[0] != info.channels or shape[1] != shape[2] or (shape[2] not in sizes and not info.size_of_build):
            fail(f"{part} images of shape {tuple(shape)}; registered: {info.channels} x {info.image_size} x "
                 f"{info.image_size} (C, H, W)")
    if len(source.mean) != info.channels or len(source.std) != info.channels:
        fail(f"mean {tuple(source.mean)} / std {tuple(source.std)}; expected one value per channel "
             f"({info.channels})")
    if data_config.unlabeled_distribution == "unknown" and source.unlabeled is None:
        fail("no unlabeled split, which data.unlabeled_distribution=unknown takes")


def _reader_name(read) -> str:
    """module.name of a reader function or class; the repr of a callable object (a functools.partial)."""
    qualname = getattr(read, "__qualname__", None)
    return repr(read) if qualname is None else f"{read.__module__}.{qualname}"
