import gzip
import pickle
import re
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from synthetic_data import idx_bytes, md5, python2_pickle, write_cifar10, write_cifar100, write_fashion, write_stl10

from cissl.config import load_config
from cissl.data.sources import (
    base,
    cifar,
    fashion,
    load_cifar10,
    load_cifar100,
    load_digits_source,
    load_fashion_mnist,
    load_source,
    load_stl10,
    stl10,
)
from cissl.data.sources.base import download_file
from cissl.data.sources.fashion import SYSTEM_DIR
from cissl.errors import CisslError, DataError


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reads_official_layout(tmp_path, bytes_keys):
    truth = write_cifar10(tmp_path, bytes_keys=bytes_keys)
    source = load_cifar10(tmp_path, checksums=truth["checksums"])
    assert source.train.images.shape == (60, 3, 32, 32) and source.train.images.dtype == np.uint8
    assert source.test.images.shape == (10, 3, 32, 32)
    data, labels = truth["data_batch_2"]
    image = source.train.images[12 + 3]  # 4th image of the second batch
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major
    assert image[1, 5, 7] == data[3, 1024 + 5 * 32 + 7]
    assert source.train.labels[15] == labels[3] and source.train.labels.dtype == np.int64
    assert source.class_names[0] == "airplane" and source.num_classes == 10


def test_cifar10_checks_official_md5_by_default(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match=r"data_batch_1 is corrupt \(md5 .* expected c99cafc1"):
        load_cifar10(tmp_path)


def test_cifar10_missing_and_corrupt_files_named(tmp_path):
    truth = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    raw = bytearray((folder / "data_batch_3").read_bytes())
    raw[100] ^= 0xFF
    (folder / "data_batch_3").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="^cifar10: file .*data_batch_3 is corrupt"):
        load_cifar10(tmp_path, checksums=truth["checksums"])
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="^cifar10: missing file .*data_batch_3.*data.root"):
        load_cifar10(tmp_path, checksums=truth["checksums"])


def test_cifar_truncated_pickle_is_a_clear_error(tmp_path):
    truth = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_1").write_bytes((folder / "data_batch_1").read_bytes()[:50])
    sums = dict(truth["checksums"], data_batch_1=None)
    with pytest.raises(DataError, match="^cifar10: cannot read .*data_batch_1"):
        load_cifar10(tmp_path, checksums=sums)
    (folder / "batches.meta").write_bytes(b"x")  # the meta file's read error names the data set too
    with pytest.raises(DataError, match="^cifar10: cannot read .*batches.meta"):
        load_cifar10(tmp_path, checksums=dict(sums, **{"batches.meta": None}))
    again = write_cifar10(tmp_path / "again")
    (tmp_path / "again" / "cifar-10-batches-py" / "test_batch").write_bytes(b"x")  # the test batch's too
    with pytest.raises(DataError, match="^cifar10: cannot read .*test_batch"):
        load_cifar10(tmp_path / "again", checksums=dict(again["checksums"], test_batch=None))


def test_cifar100_fine_labels(tmp_path):
    truth = write_cifar100(tmp_path)
    source = load_cifar100(tmp_path, checksums=truth["checksums"])
    assert source.train.images.shape == (30, 3, 32, 32) and source.num_classes == 100
    assert source.train.labels.tolist() == truth["train"][1]
    assert np.array_equal(source.test.images.reshape(10, -1), truth["test"][0])


def test_stl10_reads_column_major_images_and_1_based_labels(tmp_path):
    truth = write_stl10(tmp_path)
    source = load_stl10(tmp_path, image_size=None, checksums=truth["checksums"])
    assert np.array_equal(source.train.images, truth["train"][0])
    assert source.train.labels.tolist() == truth["train"][1].tolist()
    assert np.array_equal(source.test.images, truth["test"][0])
    assert source.unlabeled.labels is None and np.array_equal(source.unlabeled.images, truth["unlabeled"][0])
    assert source.class_names[2] == "car"


def test_stl10_resizes_to_32(tmp_path):
    truth = write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    flat = np.full((2, 3, 96, 96), 77, dtype=np.uint8)
    flat.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")
    np.array([1, 2], dtype=np.uint8).tofile(folder / "train_y.bin")
    sums = dict(truth["checksums"], **{"train_X.bin": None, "train_y.bin": None})
    source = load_stl10(tmp_path, checksums=sums, with_unlabeled=False)  # 32 px unless told otherwise
    assert source.train.images.shape == (2, 3, 32, 32) and (source.train.images == 77).all()
    assert source.unlabeled is None and source.test.images.shape == (6, 3, 32, 32)


def test_stl10_bad_sizes_named(tmp_path):
    truth = write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    (folder / "test_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(DataError, match=r"^stl10: file .*test_y.bin is corrupt"):
        load_stl10(tmp_path, checksums=truth["checksums"])
    with pytest.raises(DataError, match="test_y.bin has 2 labels for 6 images"):
        load_stl10(tmp_path, checksums=dict(truth["checksums"], **{"test_y.bin": None}))


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_reads_idx(tmp_path, compress):
    truth = write_fashion(tmp_path / "fashion_mnist", compress=compress)
    source = load_fashion_mnist(tmp_path, checksums=truth["checksums"], search_system=False)
    assert source.train.images.shape == (20, 1, 28, 28)
    assert np.array_equal(source.train.images[:, 0], truth["train"][0])
    assert source.test.labels.tolist() == truth["t10k"][1].tolist()


def test_fashion_errors_name_file(tmp_path):
    truth = write_fashion(tmp_path / "fashion_mnist")
    path = tmp_path / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as handle:
        payload = handle.read()
    with gzip.open(path, "wb") as handle:
        handle.write(payload[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is corrupt"):
        load_fashion_mnist(tmp_path, checksums=truth["checksums"], search_system=False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is truncated"):
        load_fashion_mnist(tmp_path, checksums={}, search_system=False)
    path.unlink()
    with pytest.raises(DataError, match="missing file t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, checksums=truth["checksums"], search_system=False)


@pytest.mark.skipif(not (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_verifies(tmp_path):
    source = load_fashion_mnist(tmp_path)
    assert source.train.images.shape == (60000, 1, 28, 28) and source.test.images.shape == (10000, 1, 28, 28)
    assert np.bincount(source.train.labels).tolist() == [6000] * 10


def test_digits_embedded_default():
    source = load_digits_source()
    assert source.train.images.shape == (1297, 1, 8, 8) and source.test.images.shape == (500, 1, 8, 8)
    assert np.bincount(source.test.labels).tolist() == [50] * 10
    assert source.train.images.max() == 255 and source.train.images.dtype == np.uint8
    pixels = source.train.images / 255.0  # the normalisation: the training images' statistics in [0, 1]
    assert source.mean == pytest.approx((pixels.mean(),)) and source.std == pytest.approx((pixels.std(),))
    assert 0.2 < source.mean[0] < 0.4 and source.class_names == [str(k) for k in range(10)]
    assert source.name == "digits" and source.train.labels.dtype == np.int64


def test_digits_without_scikit_learn_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"digits: .* scikit-learn; install it with `pip install 'cissl\[digits\]'`"):
        load_digits_source()


def test_download_is_atomic_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"payload" * 1000)
    target = tmp_path / "data" / "file.bin"
    timeouts = []
    urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: timeouts.append(kw.get("timeout")) or urlopen(url))
    download_file(source.as_uri(), target, "test")
    assert target.read_bytes() == source.read_bytes()
    assert timeouts == [60]  # a stalled server ends the download with an error, not a wait without end
    with pytest.raises(DataError, match="download of .* failed"):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "data" / "other.bin", "test")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["file.bin"]  # no partial or temporary file
    (tmp_path / "root").write_text("mine")  # data.root naming a file: one line, before any transfer
    with pytest.raises(CisslError, match=f"^cannot create the folder {re.escape(str(tmp_path / 'root/cifar'))}: "
                                         f"Not a directory$"):
        download_file(source.as_uri(), tmp_path / "root/cifar/file.bin", "test")


def test_fashion_reads_data_root_before_the_system_copy(tmp_path):
    """A copy in data.root is the one read (and checked) even where Debian's package is installed: a
    corrupt one there is reported, not silently replaced by the system's."""
    truth = write_fashion(tmp_path / "fashion_mnist")
    source = load_fashion_mnist(tmp_path, checksums=truth["checksums"])
    assert len(source.train) == len(truth["train"][1])
    (tmp_path / "fashion_mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path, checksums=truth["checksums"])


def test_fashion_does_not_decompress_a_gzip_bomb(tmp_path, monkeypatch):
    truth = write_fashion(tmp_path / "fashion_mnist")
    monkeypatch.setattr(fashion, "MAX_IDX_BYTES", 1 << 20)  # the same rule at 1 MB, so the test stays small
    bomb = tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb") as handle:
        for _ in range(4):
            handle.write(bytes(1 << 20))
    opened = []
    gzip_open = gzip.open

    def opening(*args, **kwargs):  # records how much of each file is decompressed
        handle = gzip_open(*args, **kwargs)
        read = handle.read
        handle.read = lambda size=-1: opened.append(size) or read(size)
        return handle

    monkeypatch.setattr(gzip, "open", opening)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz holds more than 1 MB"):
        load_fashion_mnist(tmp_path, checksums=truth["checksums"], search_system=False)
    assert opened == [(1 << 20) + 1]  # one byte past the limit, not the 4 MB the file holds


def test_an_unreadable_data_file_is_one_line_naming_it(tmp_path, monkeypatch):
    """A data file the process may not read (simulated: the tests run as root, who reads everything)."""
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(base, "md5_of_file", refuse)
    config = load_config(None, ["data.dataset=cifar10", f"data.root={tmp_path}", "data.labeled_head=4",
                                "data.unlabeled_head=1", "data.imbalance_ratio=2"])
    with pytest.raises(DataError, match="cifar10: cannot read .*data_batch_1 \\(Permission denied\\); check data.root"):
        load_source(config.data)
    assert batch.is_file()


def _serve_as_archive(built: Path, folder: str, remote: Path) -> Path:
    """``built/folder`` packed as the official tar.gz is (one top folder), in a folder standing for the server."""
    remote.mkdir(parents=True)
    archive = remote / f"{folder}.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(built / folder, arcname=folder)
    return archive


ARCHIVED = {  # data set -> (its spec dict, writer, folder, reader)
    "cifar10": (cifar.CIFAR10, write_cifar10, "cifar-10-batches-py",
                lambda root, sums, download: load_cifar10(root, download, sums)),
    "cifar100": (cifar.CIFAR100, write_cifar100, "cifar-100-python",
                 lambda root, sums, download: load_cifar100(root, download, sums)),
    "stl10": (stl10.STL10, write_stl10, "stl10_binary",
              lambda root, sums, download: load_stl10(root, None, download, sums)),
}


def served(dataset: str, tmp_path: Path, monkeypatch, archive_md5: str | None = None):
    """``dataset`` written, packed and served from tmp_path/server, its spec pointed at the archive (with its
    md5 unless one is given): (the writer's truth, the archive)."""
    spec, write, folder, _ = ARCHIVED[dataset]
    truth = write(tmp_path / "built")
    archive = _serve_as_archive(tmp_path / "built", folder, tmp_path / "server")
    monkeypatch.setitem(spec, "url", archive.as_uri())
    monkeypatch.setitem(spec, "archive_md5", archive_md5 or md5(archive))
    return truth, archive


@pytest.mark.parametrize("dataset", sorted(ARCHIVED))
def test_download_fetches_checks_and_extracts_the_archive_then_reuses_it(tmp_path, monkeypatch, capsys, dataset):
    """data.download=true end to end (the server is a file:// URL): the archive is fetched into data.root,
    md5-checked and extracted, and the files read are the archive's; a second run with the folder gone
    extracts the kept archive again without fetching (the server is gone too)."""
    _, _, folder, load = ARCHIVED[dataset]
    truth, archive = served(dataset, tmp_path, monkeypatch)
    root = tmp_path / "data"
    with pytest.raises(DataError, match=f"{folder}.*data.download=true"):
        load(root, truth["checksums"], False)
    source = load(root, truth["checksums"], True)
    assert f"downloading {dataset} from {archive.as_uri()}" in capsys.readouterr().out
    assert (root / archive.name).is_file() and (root / folder).is_dir()
    reference = load(tmp_path / "built", truth["checksums"], False)
    assert np.array_equal(source.train.images, reference.train.images)
    assert np.array_equal(source.test.labels, reference.test.labels)
    shutil.rmtree(root / folder)
    archive.unlink()
    again = load(root, truth["checksums"], True)
    assert "downloading" not in capsys.readouterr().out
    assert np.array_equal(again.train.images, reference.train.images)


def _lt_config(dataset: str, root: Path, *overrides: str):
    """A config drawing a tiny long-tailed split of ``dataset`` read from ``root``."""
    return load_config(None, [f"data.dataset={dataset}", f"data.root={root}", "data.labeled_head=2",
                              "data.unlabeled_head=1", "data.imbalance_ratio=2", *overrides])


def _trust_files(dataset: str, sums: dict, monkeypatch) -> None:
    """The data set's spec checks its extracted files against ``sums`` (the synthetic files' md5)."""
    spec = ARCHIVED[dataset][0]
    if dataset == "stl10":
        monkeypatch.setitem(spec, "files", sums)
        return
    monkeypatch.setitem(spec, "train", {name: sums[name] for name in spec["train"]})
    monkeypatch.setitem(spec, "test", {name: sums[name] for name in spec["test"]})
    monkeypatch.setitem(spec, "meta", (spec["meta"][0], sums[spec["meta"][0]], spec["meta"][2]))


@pytest.mark.parametrize("dataset", sorted(ARCHIVED))
def test_data_download_in_a_config_reaches_the_reader(tmp_path, monkeypatch, dataset):
    """``data.download`` and ``data.root`` of a config are what the registry's reader is given."""
    _, _, folder, load = ARCHIVED[dataset]
    truth, _ = served(dataset, tmp_path, monkeypatch)
    _trust_files(dataset, truth["checksums"], monkeypatch)
    with pytest.raises(DataError, match=f"{folder}.*data.download=true"):
        load_source(_lt_config(dataset, tmp_path / "data").data)
    source = load_source(_lt_config(dataset, tmp_path / "data", "data.download=true").data)
    assert (tmp_path / "data" / folder).is_dir()
    reference = load(tmp_path / "built", truth["checksums"], False)
    assert np.array_equal(source.train.labels, reference.train.labels)
    assert np.array_equal(source.test.labels, reference.test.labels)


def test_fashion_through_the_registry_reads_data_root(tmp_path, monkeypatch):
    truth = write_fashion(tmp_path / "fashion_mnist")
    monkeypatch.setattr(fashion, "FILES", truth["checksums"])
    source = load_source(_lt_config("fashion_mnist", tmp_path).data)
    assert np.array_equal(source.train.images[:, 0], truth["train"][0])
    assert source.test.labels.tolist() == truth["t10k"][1].tolist()


@pytest.mark.parametrize("load", [load_cifar10, load_cifar100, load_stl10], ids=["cifar10", "cifar100", "stl10"])
def test_a_reader_downloads_nothing_unless_asked(tmp_path, monkeypatch, load):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: pytest.fail("a download was started"))
    with pytest.raises(DataError, match="missing file .*data.download=true"):
        load(tmp_path)


def test_download_refuses_an_archive_with_the_wrong_md5(tmp_path, monkeypatch):
    truth, _ = served("cifar10", tmp_path, monkeypatch, archive_md5="0" * 32)
    with pytest.raises(DataError,
                       match=r"^cifar10: file .*cifar-10-batches-py.tar.gz is corrupt \(md5 .*, expected 0{32}\)"):
        load_cifar10(tmp_path / "data", True, truth["checksums"])
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()  # nothing extracted from it


def test_download_is_skipped_when_the_files_are_there(tmp_path, monkeypatch):
    truth = write_stl10(tmp_path)
    monkeypatch.setitem(stl10.STL10, "url", (tmp_path / "no_such_server" / "x.tar.gz").as_uri())
    source = load_stl10(tmp_path, None, True, truth["checksums"])
    assert np.array_equal(source.unlabeled.images, truth["unlabeled"][0])


def test_fashion_download_fetches_each_file_into_data_root(tmp_path, monkeypatch, capsys):
    truth = write_fashion(tmp_path / "server")
    monkeypatch.setattr(fashion, "URL", (tmp_path / "server").as_uri() + "/")
    source = load_fashion_mnist(tmp_path / "data", download=True, checksums=truth["checksums"], search_system=False)
    assert capsys.readouterr().out.count("downloading fashion_mnist") == 4
    assert sorted(p.name for p in (tmp_path / "data" / "fashion_mnist").iterdir()) == sorted(
        p.name for p in (tmp_path / "server").iterdir())
    assert np.array_equal(source.train.images[:, 0], truth["train"][0])
    assert source.test.labels.tolist() == truth["t10k"][1].tolist()
    shutil.rmtree(tmp_path / "data")  # data.download=true of a config reaches the reader too
    monkeypatch.setattr(fashion, "FILES", truth["checksums"])
    monkeypatch.setattr(fashion, "SYSTEM_DIR", tmp_path / "no_system_copy")
    config = _lt_config("fashion_mnist", tmp_path / "data", "data.download=true")
    assert load_source(config.data).test.labels.tolist() == truth["t10k"][1].tolist()


def test_stl10_resize_is_pils_antialiased_bilinear_whatever_the_chunk():
    """STL-10's 96 px images at 32 px: within one grey level of PIL's BILINEAR resize (which antialiases
    when it shrinks), and the same whether the images go through in one chunk or several."""
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    ours = stl10.resize_uint8(images, 32)
    pil = np.stack([np.stack([np.asarray(Image.fromarray(images[i, c]).resize((32, 32), Image.BILINEAR))
                              for c in range(3)]) for i in range(3)])
    assert ours.shape == (3, 3, 32, 32) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1
    assert np.array_equal(stl10.resize_uint8(images, 32, chunk=2), ours)
    for level in (0, 255):  # black stays 0 and white 255
        assert (stl10.resize_uint8(np.full((1, 3, 96, 96), level, np.uint8), 32) == level).all()
    column_major = images.transpose(0, 1, 3, 2)  # as read from the file: already 96 px, not contiguous
    same = stl10.resize_uint8(column_major, 96)
    assert same.flags["C_CONTIGUOUS"] and np.array_equal(same, column_major)


@pytest.mark.parametrize("height, width", [(32, 48), (48, 32), (32, 96)])
def test_resize_makes_images_square_when_one_side_has_the_size_already(height, width):
    """Only an image of size x size is returned as it is: one whose height or width alone matches is
    resized, to the square of size (as PIL resizes each channel to (size, size))."""
    from PIL import Image

    images = np.random.default_rng(1).integers(0, 256, (2, 1, height, width), dtype=np.uint8)
    ours = stl10.resize_uint8(images, 32)
    assert ours.shape == (2, 1, 32, 32)
    pil = np.stack([np.asarray(Image.fromarray(image[0]).resize((32, 32), Image.BILINEAR))[None] for image in images])
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], "data_batch_2 does not hold a CIFAR batch dictionary"),
    ({"labels": [0] * 12}, r"data_batch_2 is not a CIFAR batch \('data'\)"),
    ({"labels": [0] * 11, "data": np.zeros((12, 3072), np.uint8)}, "data_batch_2 has 12 images and 11 labels"),
    ({"labels": [0] * 11 + [10], "data": np.zeros((12, 3072), np.uint8)}, r"cifar10: train labels outside 0\.\.9"),
    ({"labels": [0] * 11 + [-1], "data": np.zeros((12, 3072), np.uint8)}, r"cifar10: train labels outside 0\.\.9"),
])
def test_cifar_batch_that_is_not_one_is_named(tmp_path, content, message):
    """A batch file with the right name and a wrong content (checked after its md5: sums given by the
    test) stops the run with a line naming the file and what is wrong; labels 0 and 9 are in range."""
    truth = write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(python2_pickle(content))
    with pytest.raises(DataError, match=message):
        load_cifar10(tmp_path, checksums=dict(truth["checksums"], data_batch_2=None))
    batch.write_bytes(python2_pickle({"labels": [0] * 11 + [9], "data": np.zeros((12, 3072), np.uint8)}))
    assert load_cifar10(tmp_path, checksums=dict(truth["checksums"], data_batch_2=None)).train.labels.max() == 9


@pytest.mark.parametrize("on_disk, fine", [(0, False), (11, False), (1, True), (10, True)])
def test_stl10_labels_are_1_to_10_on_disk(tmp_path, on_disk, fine):
    truth = write_stl10(tmp_path)
    labels = tmp_path / "stl10_binary" / "train_y.bin"
    np.array([5] * 7 + [on_disk], dtype=np.uint8).tofile(labels)
    sums = dict(truth["checksums"], **{"train_y.bin": None})
    if fine:
        assert load_stl10(tmp_path, None, checksums=sums).train.labels[-1] == on_disk - 1
    else:
        with pytest.raises(DataError, match=r"stl10: .*train_y.bin holds labels outside 1\.\.10"):
            load_stl10(tmp_path, None, checksums=sums)


@pytest.mark.parametrize("name, count", [("test_X.bin", 6), ("unlabeled_X.bin", 5)])
def test_stl10_image_file_of_a_partial_image_is_named(tmp_path, name, count):
    truth = write_stl10(tmp_path)
    images = tmp_path / "stl10_binary" / name
    images.write_bytes(images.read_bytes()[:-3])  # a whole number of pixel triples, not of images
    with pytest.raises(DataError, match=rf"^stl10: .*{name} has {count * 3 * 96 * 96 - 3} bytes, not a whole number of "
                                        r"3x96x96 images$"):
        load_stl10(tmp_path, None, checksums=dict(truth["checksums"], **{name: None}))


@pytest.mark.parametrize("header, message", [
    (b"\x00\x00\x08", "is not a uint8 IDX file"),  # shorter than the 4-byte magic
    (b"\x01\x00\x08\x01" + bytes(8), "is not a uint8 IDX file"),
    (b"\x00\x01\x08\x01" + bytes(8), "is not a uint8 IDX file"),
    (b"\x00\x00\x09\x01" + bytes(8), "is not a uint8 IDX file"),  # 0x09: int8
    (b"\x00\x00\x08\x03" + bytes(8), "has 3 dimensions, expected 1"),
    (b"\x00\x00\x08\x01", r"is truncated \(4 bytes for dims \[0\]\)"),  # the magic alone: no dimension
])
def test_idx_header_is_checked(header, message):
    with pytest.raises(DataError, match=f"fashion_mnist: f.idx {message}"):
        fashion.parse_idx(header, "f.idx", 1)


def test_idx_dimensions_are_big_endian():
    labels = np.arange(300) % 10  # 300 = 0x012C: read little-endian it would be 0x2C010000
    assert fashion.parse_idx(idx_bytes(labels), "l.idx", 1).tolist() == labels.tolist()
    images = np.arange(2 * 3 * 260, dtype=np.int64).reshape(2, 3, 260) % 256
    assert np.array_equal(fashion.parse_idx(idx_bytes(images), "i.idx", 3), images)


def test_fashion_size_limit_holds_for_raw_files_at_its_edge(tmp_path, monkeypatch):
    """The limit against a file that is not Fashion-MNIST applies to uncompressed IDX files too: a file
    of exactly MAX_IDX_BYTES is read, one byte more is refused without reading it."""
    truth = write_fashion(tmp_path / "fashion_mnist", compress=False)
    biggest = max(p.stat().st_size for p in (tmp_path / "fashion_mnist").iterdir())
    monkeypatch.setattr(fashion, "MAX_IDX_BYTES", biggest)
    load_fashion_mnist(tmp_path, checksums=truth["checksums"], search_system=False)
    monkeypatch.setattr(fashion, "MAX_IDX_BYTES", biggest - 1)
    read_bytes = Path.read_bytes

    def read_within_the_limit(path):
        assert path.stat().st_size <= fashion.MAX_IDX_BYTES, f"{path} read"
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_within_the_limit)
    with pytest.raises(DataError, match="train-images-idx3-ubyte holds more than 0 MB: not a Fashion-MNIST file"):
        load_fashion_mnist(tmp_path, checksums=truth["checksums"], search_system=False)


def test_stl10_through_the_registry_reads_its_unlabeled_split_only_when_the_pool_is_unknown(tmp_path, monkeypatch):
    """A config's STL-10: the 100k unlabeled images are read (and resized to data.image_size) only for
    data.unlabeled_distribution=unknown; the long-tailed protocols draw their pool from the training
    images and run without unlabeled_X.bin."""
    truth = write_stl10(tmp_path)
    _trust_files("stl10", truth["checksums"], monkeypatch)
    common = ["data.dataset=stl10", f"data.root={tmp_path}", "data.image_size=32", "data.labeled_head=2",
              "data.imbalance_ratio=2"]
    unknown = load_source(load_config(None, [*common, "data.unlabeled_distribution=unknown",
                                             "data.unlabeled_head=null"]).data)
    assert unknown.unlabeled.images.shape == (5, 3, 32, 32) and unknown.train.images.shape == (8, 3, 32, 32)
    assert np.array_equal(unknown.unlabeled.images, stl10.resize_uint8(truth["unlabeled"][0], 32))
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    consistent = load_source(load_config(None, [*common, "data.unlabeled_head=2"]).data)
    assert consistent.unlabeled is None and consistent.test.images.shape == (6, 3, 32, 32)


def test_registry_resizes_a_drawn_data_set_to_data_image_size(tmp_path, monkeypatch):
    truth = write_cifar10(tmp_path)
    sums = truth["checksums"]
    _trust_files("cifar10", sums, monkeypatch)
    config = load_config(None, ["data.dataset=cifar10", f"data.root={tmp_path}", "data.labeled_head=4",
                                "data.unlabeled_head=1", "data.imbalance_ratio=2", "data.image_size=16"])
    source = load_source(config.data)
    original = load_cifar10(tmp_path, checksums=sums)
    assert source.train.images.shape == (60, 3, 16, 16) and source.test.images.shape == (10, 3, 16, 16)
    assert np.array_equal(source.test.images, stl10.resize_uint8(original.test.images, 16))
    assert np.array_equal(source.train.labels, original.train.labels)


# spec section 2's normalisation table (STL-10 takes CIFAR-10's)
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
CIFAR100_NORM = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def test_each_reader_names_its_data_set_and_carries_its_normalisation(tmp_path):
    c10 = load_cifar10(tmp_path / "a", checksums=write_cifar10(tmp_path / "a")["checksums"])
    c100 = load_cifar100(tmp_path / "b", checksums=write_cifar100(tmp_path / "b")["checksums"])
    stl = load_stl10(tmp_path / "c", None, checksums=write_stl10(tmp_path / "c")["checksums"])
    fmnist = load_fashion_mnist(tmp_path, checksums=write_fashion(tmp_path / "fashion_mnist")["checksums"],
                                search_system=False)
    assert [(s.name, s.mean, s.std) for s in (c10, c100, stl)] == [
        ("cifar10", *CIFAR10_NORM), ("cifar100", *CIFAR100_NORM), ("stl10", *CIFAR10_NORM)]
    assert (fmnist.name, fmnist.mean, fmnist.std, fmnist.class_names) == (
        "fashion_mnist", (0.2860,), (0.3530,), FASHION_CLASSES)
    assert c10.class_names[:2] == ["airplane", "automobile"] and len(c100.class_names) == 100
    assert stl.class_names == STL10_CLASSES
    for source in (c10, c100, stl, fmnist):
        for part in (source.train, source.test):
            assert part.images.dtype == np.uint8 and part.labels.dtype == np.int64


@pytest.mark.skipif(not (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_normalisation_is_that_of_its_training_images(tmp_path):
    train = load_fashion_mnist(tmp_path).train.images / 255.0
    assert (round(float(train.mean()), 4), round(float(train.std()), 4)) == (0.2860, 0.3530)


def test_stl10_takes_the_class_names_file_when_it_lists_ten(tmp_path):
    truth = write_stl10(tmp_path)
    names = tmp_path / "stl10_binary" / "class_names.txt"
    names.write_text("\n".join(f"c{k}" for k in range(10)) + "\n\n")
    assert load_stl10(tmp_path, None, checksums=truth["checksums"]).class_names == [f"c{k}" for k in range(10)]
    names.write_text("a\nb\n")  # not ten names: the official ones
    assert load_stl10(tmp_path, None, checksums=truth["checksums"]).class_names == STL10_CLASSES
    names.unlink()
    assert load_stl10(tmp_path, None, checksums=truth["checksums"]).class_names == STL10_CLASSES


def test_stl10_checks_its_unlabeled_file_only_when_it_reads_it(tmp_path):
    truth = write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert load_stl10(tmp_path, None, checksums=truth["checksums"], with_unlabeled=False).unlabeled is None
    with pytest.raises(DataError, match=r"^stl10: missing file .*unlabeled_X.bin; point data.root at the folder "
                                        r"that holds stl10_binary/ or set data.download=true$"):
        load_stl10(tmp_path, None, checksums=truth["checksums"])


def test_fashion_errors_say_where_it_looked_and_what_is_wrong(tmp_path):
    looked = f"{tmp_path / 'fashion_mnist'}, {tmp_path}"
    with pytest.raises(DataError, match=f"^fashion_mnist: missing file train-images-idx3-ubyte.gz "
                                        f"{re.escape(f'(looked in {looked}); ')}"):
        load_fashion_mnist(tmp_path, search_system=False)
    write_fashion(tmp_path / "fashion_mnist", train=20, test=10)
    labels = tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(labels, "wb") as handle:
        handle.write(idx_bytes(np.array([0, 10] + [1] * 8, dtype=np.uint8)))
    with pytest.raises(DataError, match="^fashion_mnist: t10k labels outside 0..9$"):
        load_fashion_mnist(tmp_path, checksums={}, search_system=False)
    with gzip.open(labels, "wb") as handle:
        handle.write(idx_bytes(np.array([1] * 9, dtype=np.uint8)))
    with pytest.raises(DataError, match="^fashion_mnist: t10k has 10 images and 9 labels$"):
        load_fashion_mnist(tmp_path, checksums={}, search_system=False)


def test_an_archive_with_a_member_outside_its_folder_is_refused_and_nothing_escapes(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    archive = root / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    with pytest.raises(DataError, match=r"^cifar10: cannot extract .*evil.tar.gz \(OutsideDestinationError: .*\); "
                                        r"delete it and download it again$"):
        base.download_archive("https://example.org/evil.tar.gz", md5(archive), root, "cifar10")
    assert not (tmp_path / "escaped.txt").exists()


def test_images_of_several_sizes_are_named(tmp_path):
    from PIL import Image

    from cissl.data.sources.own import read_images

    for name, size in (("a.png", (4, 4)), ("b.png", (6, 6))):
        Image.new("RGB", size).save(tmp_path / name)
    with pytest.raises(DataError, match=r"^the images have different sizes \(4x4, 6x6\); set data.image_size"):
        read_images([tmp_path / "a.png", tmp_path / "b.png"], None, grey=False)


def test_cifar_meta_without_class_names_and_labels_outside_the_classes_are_named(tmp_path):
    truth = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "batches.meta").write_bytes(pickle.dumps({"num_vis": 3072}))
    sums = dict(truth["checksums"], **{"batches.meta": None})
    with pytest.raises(DataError, match=r"^cifar10: .*batches.meta lists no class names \(label_names\); delete it"):
        load_cifar10(tmp_path, checksums=sums)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{k}" for k in range(9)]}))
    labels_up_to = max(max(truth[f"data_batch_{i}"][1]) for i in range(1, 6))
    assert labels_up_to == 9  # the synthetic batches use every class: nine names are too few
    with pytest.raises(DataError, match=r"^cifar10: train labels outside 0..8$"):
        load_cifar10(tmp_path, checksums=sums)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{k}" for k in range(10)]}))
    test_batch = folder / "test_batch"
    (data, _), n = truth["test_batch"], len(truth["test_batch"][1])
    test_batch.write_bytes(pickle.dumps({"data": data, "labels": [10] * n}))
    with pytest.raises(DataError, match=r"^cifar10: test labels outside 0..9$"):
        load_cifar10(tmp_path, checksums=dict(sums, test_batch=None))


def test_an_image_set_holds_uint8_nchw_images_and_one_int64_label_each():
    from cissl.data.sources.base import ImageSet

    images = np.zeros((3, 1, 2, 2), dtype=np.uint8)
    assert ImageSet(images, [0, 2, 1]).labels.dtype == np.int64 and ImageSet(images, None).labels is None
    assert ImageSet(images, np.array([0, 2, 1], dtype=np.uint8)).labels.dtype == np.int64  # a reader's uint8 labels
    for bad, message in ((images.astype(np.float32), r"got float32 \(3, 1, 2, 2\)"),
                         (images[:, 0], r"got uint8 \(3, 2, 2\)")):
        with pytest.raises(ValueError, match=r"^images must be uint8 \(N, C, H, W\), " + message + "$"):
            ImageSet(bad, None)
    with pytest.raises(ValueError, match=r"^labels shape \(2,\) does not match 3 images$"):
        ImageSet(images, [0, 1])
