"""Small-ImageNet-127: the shipped grouping, the builder on small synthetic sources in the downsampled
ImageNet pickle format, the reader, the 10 %-labeled protocol, ResNet-50, a few SeMi steps at 64 px."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from helpers import CONFIGS
from synthetic_data import python2_pickle

from cissl.config import load_config
from cissl.data.sources import load_source
from cissl.data.sources.imagenet127 import (
    FULL_TEST,
    FULL_TRAIN,
    MEAN,
    STD,
    TEST_FILE,
    TRAIN_FILES,
    build_imagenet127,
    check_counts,
    class_of_ilsvrc_id,
    grouping,
    load_imagenet127,
)
from cissl.errors import CisslError, ConfigError, DataError
from cissl.models.resnet import ResNet50


def synthetic_source(folder: Path, size: int, per_class: dict[int, int], seed: int = 0, ids_per_class: int = 3,
                     val_per_id: int = 2) -> dict[int, int]:
    """Downsampled-ImageNet pickles (train_data_batch_1..10, val_data) holding per_class[c] training images
    of class c, spread over the ILSVRC ids of c (up to ``ids_per_class`` of them) and over the ten files;
    ``val_per_id`` validation images per id used. Returns each used id's image count."""
    rng = np.random.default_rng(seed)
    ids_of = {}
    for entry in grouping()["ilsvrc"]:
        ids_of.setdefault(entry["class"], []).append(entry["id"])
    labels, val_labels = [], []
    for cls, count in per_class.items():
        ids = ids_of[cls][:ids_per_class]
        labels += [ids[i % len(ids)] for i in range(count)]
        val_labels += [i for i in ids for _ in range(val_per_id)]
    labels = rng.permutation(labels)
    folder.mkdir(parents=True, exist_ok=True)
    width = 3 * size * size
    for i, name in enumerate(TRAIN_FILES):
        part = [int(v) for v in labels[i::len(TRAIN_FILES)]]
        data = rng.integers(0, 256, (len(part), width), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": part, "mean": data.mean(0)}, handle)
    with open(folder / TEST_FILE, "wb") as handle:
        pickle.dump({"data": rng.integers(0, 256, (len(val_labels), width), dtype=np.uint8),
                     "labels": val_labels}, handle)
    return Counter(int(v) for v in labels)


def test_the_shipped_grouping_maps_every_ilsvrc_id_to_one_of_127_classes():
    table = grouping()
    assert len(table["classes"]) == 127 and len(table["ilsvrc"]) == 1000
    assert [e["id"] for e in table["ilsvrc"]] == list(range(1, 1001))
    assert table["ilsvrc"][0] == {"id": 1, "wnid": "n02119789", "name": "kit_fox", "class": 86}  # map_clsloc line 1
    synsets = Counter(e["class"] for e in table["ilsvrc"])
    assert set(synsets) == set(range(127))
    assert (max(synsets.values()), min(synsets.values())) == (218, 1)
    assert len({e["wnid"] for e in table["ilsvrc"]}) == 1000
    to_class = class_of_ilsvrc_id()
    assert to_class[1] == 86 and to_class[0] == -1


@pytest.mark.parametrize("size", [32, 64])
def test_builder_reproduces_the_per_class_counts_and_orders_classes_by_size(tmp_path, size, capsys):
    per_class = {5: 40, 86: 12, 0: 25, 100: 7}  # grouping classes -> training images
    used = synthetic_source(tmp_path / "src", size, per_class)
    meta = build_imagenet127(tmp_path / "src", size, tmp_path / "out", partial=True)
    progress = capsys.readouterr().err
    assert "train_data_batch_10" in progress and "(11/11 files" in progress
    assert meta["size"] == size and meta["train_images"] == sum(per_class.values())
    assert meta["train_counts"][:4] == [40, 25, 12, 7] and sum(meta["train_counts"]) == 84
    assert [c["grouping_index"] for c in meta["classes"][:4]] == [5, 0, 86, 100]
    ids = Counter(e["class"] for e in grouping()["ilsvrc"])
    assert meta["test_counts"][:4] == [2 * min(3, ids[c]) for c in (5, 0, 86, 100)]  # two per id used
    assert not meta["complete"]
    source = load_imagenet127(tmp_path / "out")
    assert source.num_classes == 127 and source.image_size == size and source.channels == 3
    assert isinstance(source.train.images, np.memmap)
    assert np.bincount(source.train.labels, minlength=127)[:4].tolist() == [40, 25, 12, 7]
    assert source.class_names[0] == grouping()["classes"][5]["name"]
    # image i of the build is row i of the files in order, its class the grouping's class of its id
    first = pickle.load(open(tmp_path / "src" / "train_data_batch_1", "rb"))
    assert np.array_equal(source.train.images[0].reshape(-1), first["data"][0])
    rank = {c["grouping_index"]: k for k, c in enumerate(meta["classes"])}
    assert source.train.labels[0] == rank[int(class_of_ilsvrc_id()[first["labels"][0]])]
    assert sum(used.values()) == 84
    saved = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert saved["train_counts"] == meta["train_counts"]


def test_builder_refuses_missing_corrupt_foreign_and_partial_sources(tmp_path):
    src = tmp_path / "src"
    synthetic_source(src, 32, {3: 10})
    with pytest.raises(DataError, match="partial or damaged download; pass --partial"):
        build_imagenet127(src, 32, tmp_path / "a")
    assert not (tmp_path / "a" / "meta.json").exists()
    with pytest.raises(DataError, match=r"images are 32 px: --size 32\?"):
        build_imagenet127(src, 64, tmp_path / "b", partial=True)
    (src / "train_data_batch_4").write_bytes(b"\x80\x04truncated")
    with pytest.raises(DataError, match=r"cannot read .*train_data_batch_4 as a downsampled-ImageNet pickle "
                                        r"\(UnpicklingError: .+\); download it again"):
        build_imagenet127(src, 32, tmp_path / "c", partial=True)
    (src / "val_data").unlink()
    with pytest.raises(DataError, match="lacks val_data; it must hold the Imagenet32 files"):
        build_imagenet127(src, 32, tmp_path / "d", partial=True)


def test_builder_keeps_an_existing_build_and_the_reader_checks_it(tmp_path):
    synthetic_source(tmp_path / "src", 32, {3: 10, 4: 6})
    build_imagenet127(tmp_path / "src", 32, tmp_path / "out", partial=True)
    before = (tmp_path / "out" / "meta.json").read_text()
    with pytest.raises(DataError, match="already holds a build"):
        build_imagenet127(tmp_path / "src", 32, tmp_path / "out", partial=True)
    assert (tmp_path / "out" / "meta.json").read_text() == before
    with pytest.raises(DataError, match="built at 32 px, the config asks data.image_size=64"):
        load_imagenet127(tmp_path / "out", 64)
    config = load_config(CONFIGS / "imagenet127" / "32px.yaml", [f"data.root={tmp_path / 'out'}",
                                                                  "data.image_size=64"])
    with pytest.raises(DataError, match="built at 32 px, the config asks data.image_size=64"):
        load_source(config.data)  # the config's data.image_size reaches the reader
    with open(tmp_path / "out" / "train_images.u8", "ab") as handle:
        handle.write(b"x")
    with pytest.raises(DataError, match="should hold 49,152 bytes"):
        load_imagenet127(tmp_path / "out")
    with pytest.raises(DataError, match="holds no build"):
        load_imagenet127(tmp_path / "nothing")


def test_a_64_px_build_is_read_at_its_size_when_the_config_gives_none(tmp_path):
    """data.image_size: null takes the build's size (the registered 32 px is only the default), through the same
    load_source every run uses."""
    synthetic_source(tmp_path / "src", 64, {3: 10, 4: 6})
    build_imagenet127(tmp_path / "src", 64, tmp_path / "out", partial=True)
    config = load_config(CONFIGS / "imagenet127" / "64px.yaml", [f"data.root={tmp_path / 'out'}",
                                                                  "data.image_size=null"])
    source = load_source(config.data)
    assert source.train.images.shape[1:] == (3, 64, 64) and source.test.images.shape[1:] == (3, 64, 64)


def test_cli_builds_and_split_prints_the_127_class_counts_of_the_10_percent_protocol(tmp_path, capsys):
    per_class = {c: 6 + (c * 7) % 40 for c in range(127)}  # every class, 6..45 images
    synthetic_source(tmp_path / "src", 32, per_class)
    code, _, err = run_cli(["data", "build-imagenet127", "--source", tmp_path / "src", "--size", "32",
                            "--out", tmp_path / "built", "--partial"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["split", "--config", CONFIGS / "imagenet127" / "32px.yaml",
                              f"data.root={tmp_path / 'built'}"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    sizes = sorted(per_class.values(), reverse=True)
    assert len(summary["labeled"]) == 127
    assert summary["labeled"] == [round(0.1 * n) for n in sizes]  # round half to even: 45 -> 4, 25 -> 2
    assert summary["unlabeled"] == [n - round(0.1 * n) for n in sizes]
    assert summary["unlabeled_total"] == sum(sizes)  # the whole training set, labeled images included
    code, _, err = run_cli(["split", "--config", CONFIGS / "imagenet127" / "32px.yaml", "--counts-only",
                            f"data.root={tmp_path / 'built'}"], capsys)
    assert code == 2 and "follow the data's class sizes" in err


def test_labeled_fraction_needs_the_rest_of_each_class_as_unlabeled():
    with pytest.raises(ConfigError, match="with data.labeled_fraction the unlabeled images are the rest"):
        load_config(CONFIGS / "imagenet127" / "32px.yaml", ["data.unlabeled_distribution=uniform"])


def test_resnet50_has_the_cifar_stem_and_the_torchvision_parameter_count():
    """torchvision's ResNet-50 has 25,557,032 parameters; without its 1000-way fc (2048 x 1000 + 1000)
    and with a 3x3 instead of a 7x7 stem convolution (3 x 64 x 9 instead of 3 x 64 x 49):
    25,557,032 - 2,049,000 - 9,408 + 1,728 = 23,500,352."""
    net = ResNet50()
    assert sum(p.numel() for p in net.parameters()) == 23_500_352
    assert net.feature_dim == 2048
    assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    for size, cells in ((32, 4), (64, 8)):
        x = torch.randn(2, 3, size, size)
        assert net.blocks(net.stem(x)).shape == (2, 2048, cells, cells)
        assert net(x).shape == (2, 2048)
    assert {m.momentum for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}  # PyTorch's
    assert {m.momentum for m in ResNet50(bn_momentum=0.01).modules()
            if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}  # every BN follows model.bn_momentum


def test_each_bottleneck_adds_its_shortcut_before_the_last_relu_and_strides_on_its_3x3_conv():
    """He et al.'s bottleneck as torchvision writes it, in eval mode: relu(bn3(conv3(relu(bn2(conv2(relu(
    bn1(conv1(x)))))))) + shortcut(x)), the shortcut the identity where the shape stays, else a strided 1x1
    convolution with batch norm; a stage's stride sits on the 3x3 convolution (torchvision's "v1.5")."""
    from cissl.models.resnet import Bottleneck

    def expected(block, x):
        relu = torch.nn.functional.relu
        y = relu(block.bn2(block.conv2(relu(block.bn1(block.conv1(x))))))
        return relu(block.bn3(block.conv3(y)) + (x if block.shortcut is None else block.shortcut(x)))

    torch.manual_seed(0)
    for in_planes, width, stride, identity in ((256, 64, 1, True), (64, 64, 1, False), (256, 128, 2, False)):
        block = Bottleneck(in_planes, width, stride, 0.1)
        for module in block.modules():  # running statistics away from 0 / 1, so each batch norm counts
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        block.eval()
        x = torch.randn(2, in_planes, 8, 8)
        assert (block.shortcut is None) == identity
        assert torch.allclose(block(x), expected(block, x), atol=1e-5)
        assert (block.conv1.stride, block.conv2.stride, block.conv3.stride) == ((1, 1), (stride, stride), (1, 1))
        assert block(x).shape == (2, 4 * width, 8 // stride, 8 // stride)
    net = ResNet50()
    assert [type(m) for m in net.stem] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU]
    assert net.stem(torch.randn(2, 3, 32, 32)).shape == (2, 64, 32, 32)  # the stem keeps the resolution
    first_of_stage = [net.blocks[i] for i in (0, 3, 7, 13)]
    assert [b.conv2.stride[0] for b in first_of_stage] == [1, 2, 2, 2]
    assert all(b.conv2.stride == (1, 1) for i, b in enumerate(net.blocks) if i not in (0, 3, 7, 13))
    weight = net.blocks[3].conv1.weight  # 256 -> 128, 1x1: Kaiming-normal over its fan-out, 128
    assert weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.03)


def test_a_few_semi_steps_with_resnet50_at_64_px_run_on_cpu(tmp_path):
    from cissl.engine.run import start_run

    synthetic_source(tmp_path / "src", 64, {c: 6 for c in range(127)}, ids_per_class=1, val_per_id=1)
    build_imagenet127(tmp_path / "src", 64, tmp_path / "built", partial=True)
    config = load_config(CONFIGS / "imagenet127" / "64px.yaml", [
        f"data.root={tmp_path / 'built'}", "data.stream_images=always", "train.iterations=2", "train.batch_size=2",
        "train.eval_every=2",
        "train.log_every=1", "train.checkpoint_every=2", "train.report_last=1", "train.eval_batch_size=64",
        "train.device=cpu", "algorithm.warmup_epochs=0", "train.epoch_length=1"])  # SeMi's terms at the 2nd step
    results = start_run(config, tmp_path / "run", quiet=True)
    assert results["iterations"] == 2 and len(results["per_class_accuracy"]) == 127


def test_streamed_pools_serve_the_images_the_loaded_pools_hold(tmp_path, monkeypatch):
    """data.stream_images=always leaves the images in the memory-mapped build: batches, predictions and
    CReST's extension of the labeled pool read the same pixels as pools put on the device. auto streams
    the build where the free memory is short."""
    from cissl.data.stream import HostImages
    from cissl.engine.data import prepare_data
    from cissl.engine.precision import ComputePolicy
    from cissl.evaluation.evaluate import predict_with_features
    from cissl.models import build_model

    synthetic_source(tmp_path / "src", 32, {c: 6 + c % 5 for c in range(127)})
    build_imagenet127(tmp_path / "src", 32, tmp_path / "built", partial=True)
    overrides = [f"data.root={tmp_path / 'built'}", "train.device=cpu"]
    setting = CONFIGS / "imagenet127" / "32px.yaml"
    streamed = prepare_data(load_config(setting, [*overrides, "data.stream_images=always"]), torch.device("cpu"))
    loaded = prepare_data(load_config(setting, [*overrides, "data.stream_images=never"]), torch.device("cpu"))
    assert isinstance(streamed.unlabeled.images, HostImages) and isinstance(loaded.unlabeled.images, torch.Tensor)
    monkeypatch.setattr("os.sysconf", lambda name: 1)  # one free byte
    short = prepare_data(load_config(setting, [*overrides, "data.stream_images=auto"]), torch.device("cpu"))
    assert isinstance(short.labeled.images, HostImages) and isinstance(short.unlabeled.images, HostImages)
    monkeypatch.undo()
    positions = torch.tensor([5, 0, 17, 5, 300])
    for a, b in zip(streamed.unlabeled.take(positions), loaded.unlabeled.take(positions)):
        assert torch.equal(a, b)
    assert torch.equal(streamed.test.images[3:9], loaded.test.images[3:9])
    model = build_model(load_config(CONFIGS / "quickstart.yaml").model, 3, 127, (0.5,) * 3, (0.25,) * 3, 0)
    policy = ComputePolicy(torch.device("cpu"))
    (logits_a, features_a), (logits_b, features_b) = (
        predict_with_features(model, pool.test.images, 50, policy) for pool in (streamed, loaded))
    assert torch.equal(logits_a["main"], logits_b["main"]) and torch.equal(features_a, features_b)
    added, labels = torch.tensor([2, 9]), torch.tensor([1, 0])
    grown_a = streamed.labeled.extended(streamed.unlabeled, added, labels)
    grown_b = loaded.labeled.extended(loaded.unlabeled, added, labels)
    every = torch.arange(len(grown_b))
    for a, b in zip(grown_a.take(every), grown_b.take(every)):
        assert torch.equal(a, b)


def test_auto_streams_only_memory_mapped_images_larger_than_half_the_free_memory(tmp_path, monkeypatch):
    import dataclasses

    from cissl.engine.data import streams_images

    config = load_config(CONFIGS / "imagenet127" / "32px.yaml").data
    path = tmp_path / "images.u8"
    path.write_bytes(bytes(2 * 3 * 4 * 4))
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(2, 3, 4, 4))  # 96 bytes
    cpu = torch.device("cpu")
    free = {"SC_PAGE_SIZE": 4}  # free bytes: pages x page size
    monkeypatch.setattr("os.sysconf", lambda name: free[name])
    free["SC_AVPHYS_PAGES"] = 47
    assert streams_images(config, mapped, cpu)  # 96 bytes, more than half of the 188 free
    assert not streams_images(config, np.zeros((2, 3, 4, 4), np.uint8), cpu)  # in memory already: never
    free["SC_AVPHYS_PAGES"] = 48
    assert not streams_images(config, mapped, cpu)  # 96 of 192: exactly half, loaded
    free["SC_AVPHYS_PAGES"] = 250
    assert not streams_images(config, mapped, cpu)  # 96 of 1000: loaded
    assert streams_images(dataclasses.replace(config, stream_images="always"), mapped, cpu)
    free["SC_AVPHYS_PAGES"] = 1
    assert not streams_images(dataclasses.replace(config, stream_images="never"), mapped, cpu)


def test_a_full_source_must_have_ilsvrcs_totals_and_50_validation_images_per_synset():
    """The check a real Imagenet32 / 64 download meets (no such download here: the counts alone)."""
    grouped = {"train": np.zeros(FULL_TRAIN, np.int16), "test": np.zeros(FULL_TEST, np.int16)}
    val_ids = np.repeat(np.arange(1, 1001), 50)
    check_counts(grouped, val_ids, partial=False)  # passes
    damaged = val_ids.copy()
    damaged[0] = 2  # id 1 loses an image to id 2
    with pytest.raises(DataError, match="val_data has 49 images of ILSVRC id 1, ILSVRC-2012 has 50"):
        check_counts(grouped, damaged, partial=False)
    damaged = val_ids.copy()
    damaged[50 * 6] = 9  # id 7 loses an image to id 9: the first synset without 50 images is named
    with pytest.raises(DataError, match="val_data has 49 images of ILSVRC id 7,"):
        check_counts(grouped, damaged, partial=False)
    short = {"train": grouped["train"][:-1], "test": grouped["test"]}
    with pytest.raises(DataError, match="1,281,166 training and 50,000 validation images, ILSVRC-2012 has 1,281,167"):
        check_counts(short, val_ids, partial=False)
    check_counts(short, val_ids, partial=True)  # --partial: built anyway


def test_builder_refuses_a_size_and_labels_imagenet_does_not_have(tmp_path):
    src = tmp_path / "src"
    synthetic_source(src, 32, {3: 10})
    with pytest.raises(DataError, match="--size must be 32 or 64 .*, got 48"):
        build_imagenet127(src, 48, tmp_path / "a", partial=True)
    for labels, shown in (([0] + [5] * 11, "12 labels"), ([1001] + [5] * 11, "12 labels"), ([5] * 11, "11 labels")):
        with open(src / TEST_FILE, "wb") as handle:
            pickle.dump({"data": np.zeros((12, 3 * 32 * 32), np.uint8), "labels": labels}, handle)
        with pytest.raises(DataError, match=f"val_data has 12 images and {shown}, which must be ILSVRC ids 1..1000"):
            build_imagenet127(src, 32, tmp_path / "b", partial=True)
    assert not (tmp_path / "b" / "meta.json").exists()


def test_reader_names_a_damaged_or_foreign_build(tmp_path):
    synthetic_source(tmp_path / "src", 32, {3: 10, 4: 6})
    build_imagenet127(tmp_path / "src", 32, tmp_path / "out", partial=True)
    meta = tmp_path / "out" / "meta.json"
    good = meta.read_text()
    meta.write_text(good[:-20])
    with pytest.raises(DataError, match=r"meta.json is damaged \(.*\); build again"):
        load_imagenet127(tmp_path / "out")
    meta.write_text(json.dumps({**json.loads(good), "format": "something else"}))
    with pytest.raises(DataError, match="meta.json is not a .* build"):
        load_imagenet127(tmp_path / "out")
    meta.write_text(good)
    np.save(tmp_path / "out" / "test_labels.npy", np.load(tmp_path / "out" / "test_labels.npy")[:-1])
    with pytest.raises(DataError, match=r"test_labels.npy has \d+ labels for \d+ images; build again"):
        load_imagenet127(tmp_path / "out")


def test_pickles_from_python_2_or_with_byte_keys_build_the_same_data_set(tmp_path, capsys):
    """image-net.org's pickles are read as written by Python 3; a Python-2 pickle (text as Python-2 str,
    arrays from a str buffer) and one with bytes keys (a re-packed copy) give the same images and labels.
    The progress line counts each file's images."""
    synthetic_source(tmp_path / "src", 32, {3: 20, 4: 10})
    build_imagenet127(tmp_path / "src", 32, tmp_path / "plain", partial=True)
    first, second = (pickle.load(open(tmp_path / "src" / name, "rb")) for name in TRAIN_FILES[:2])
    (tmp_path / "src" / TRAIN_FILES[0]).write_bytes(
        python2_pickle({"data": first["data"], "labels": [int(v) for v in first["labels"]]}))
    with open(tmp_path / "src" / TRAIN_FILES[1], "wb") as handle:
        pickle.dump({b"data": second["data"], b"labels": second["labels"]}, handle)
    capsys.readouterr()
    build_imagenet127(tmp_path / "src", 32, tmp_path / "mixed", partial=True)
    assert f"{TRAIN_FILES[0]}: {len(first['labels'])} images (1/11 files" in capsys.readouterr().err
    plain, mixed = load_imagenet127(tmp_path / "plain"), load_imagenet127(tmp_path / "mixed")
    assert np.array_equal(plain.train.images, mixed.train.images) and np.array_equal(plain.train.labels,
                                                                                     mixed.train.labels)


def test_the_reader_refuses_rows_of_another_type_shape_or_size_and_names_them(tmp_path):
    """The line names what the file holds; rows of the other downsampled size (64 px read for a 32 px build)
    add the --size hint, and no other rows do."""
    src = tmp_path / "src"
    synthetic_source(src, 32, {3: 10})
    for data, shown, hint in ((np.zeros((4, 3072), np.int64), "int64 rows of shape (3072,)", ""),
                              (np.zeros(3072, np.uint8), "uint8 rows of shape ()", ""),
                              (np.zeros((4, 3 * 48 * 48), np.uint8), "uint8 rows of shape (6912,)", ""),
                              (np.zeros((4, 3 * 64 * 64), np.uint8), "uint8 rows of shape (12288,)",
                               " (its images are 64 px: --size 64?)")):
        with open(src / TEST_FILE, "wb") as handle:
            pickle.dump({"data": data, "labels": [5] * 4}, handle)
        with pytest.raises(DataError) as error:
            build_imagenet127(src, 32, tmp_path / "out", partial=True)
        assert str(error.value).endswith(f"val_data holds {shown}, not uint8 rows of 3 x 32 x 32 = 3072{hint}")


def test_the_builder_names_every_missing_file(tmp_path):
    synthetic_source(tmp_path / "src", 32, {3: 10})
    (tmp_path / "src" / TRAIN_FILES[2]).unlink()
    (tmp_path / "src" / TEST_FILE).unlink()
    with pytest.raises(DataError, match=f"lacks {TRAIN_FILES[2]}, {TEST_FILE}; it must hold"):
        build_imagenet127(tmp_path / "src", 32, tmp_path / "out", partial=True)


def test_the_reader_gives_a_read_only_map_with_the_sets_statistics_and_names_a_missing_image_file(tmp_path):
    synthetic_source(tmp_path / "src", 32, {3: 10, 4: 6})
    build_imagenet127(tmp_path / "src", 32, tmp_path / "out", partial=True)
    source = load_imagenet127(tmp_path / "out")
    assert source.name == "imagenet127" and source.mean == MEAN and source.std == STD
    assert MEAN == (0.48109809, 0.45747185, 0.40785507) and STD == (0.26040889, 0.2532126, 0.26820634)  # spec 2
    for part in (source.train, source.test):
        assert part.images.mode == "r" and not part.images.flags.writeable and part.labels.dtype == np.int64
    (tmp_path / "out" / "test_images.u8").unlink()
    with pytest.raises(DataError, match=r"test_images.u8 should hold [\d,]+ bytes \(\d+ images\), found no file"):
        load_imagenet127(tmp_path / "out")
    (tmp_path / "out" / "test_images.u8").write_bytes(b"x" * 7)
    with pytest.raises(DataError, match=r"found 7; build again"):
        load_imagenet127(tmp_path / "out")


def test_a_build_into_a_new_nested_folder_records_its_source_and_prints_its_class_sizes(tmp_path, capsys):
    per_class = {c: 2 for c in range(127)} | {0: 9, 5: 1}  # sorted sizes 9, 2, ..., 2, 1
    synthetic_source(tmp_path / "src", 32, per_class, ids_per_class=1, val_per_id=1)
    out = tmp_path / "new" / "nested" / "build"
    meta = build_imagenet127(tmp_path / "src", 32, out, partial=True)
    err = capsys.readouterr().err
    assert meta["version"] == 1 and meta["format"] == "cissl-imagenet127"
    assert meta["source"]["folder"] == str((tmp_path / "src").resolve())
    assert meta["source"]["files"] == {n: (tmp_path / "src" / n).stat().st_size for n in (*TRAIN_FILES, TEST_FILE)}
    assert json.loads((out / "meta.json").read_text()) == meta
    for part in ("train", "test"):
        assert np.load(out / f"{part}_labels.npy").dtype == np.int16  # the module's documented format
    total = sum(per_class.values())
    assert err.strip().splitlines()[-1].startswith(
        f"imagenet127: {total:,} training and 127 test images in 127 classes (9 .. 1 per class) written to {out} (")
    assert all(int(s) < 600 for s in re.findall(r"(\d+) s\)", err))  # seconds since the build started
    (tmp_path / "taken").write_text("mine")  # an --out that is a file: one line, the file left alone
    with pytest.raises(CisslError, match=f"^{re.escape(str(tmp_path / 'taken'))} is a file, not a folder"):
        build_imagenet127(tmp_path / "src", 32, tmp_path / "taken", partial=True)
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_source_with_ilsvrcs_totals_is_complete_and_its_validation_ids_are_checked(tmp_path, monkeypatch):
    """A real download is too large to make here: the totals are lowered to the synthetic source's."""
    import cissl.data.sources.imagenet127 as imagenet127

    synthetic_source(tmp_path / "src", 32, {3: 10, 4: 6}, val_per_id=1)
    seen = []
    monkeypatch.setattr(imagenet127, "check_counts", lambda grouped, ids, partial: seen.append(ids.tolist()))
    val_ids = pickle.load(open(tmp_path / "src" / TEST_FILE, "rb"))["labels"]
    for totals, complete in (((16, len(val_ids)), True), ((16, len(val_ids) + 1), False),
                             ((17, len(val_ids)), False)):
        monkeypatch.setattr(imagenet127, "FULL_TRAIN", totals[0])
        monkeypatch.setattr(imagenet127, "FULL_TEST", totals[1])
        meta = build_imagenet127(tmp_path / "src", 32, tmp_path / f"out{len(seen)}")
        assert meta["complete"] is complete
    assert seen == [val_ids] * 3
