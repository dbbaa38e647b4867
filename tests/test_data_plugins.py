"""Data sets in the user's own modules (``cissl.data.sources.register_source`` in a plugin): the long-tailed
protocol draws from them as from CIFAR-10, a run of one is read again in a fresh process, what a reader returns
is checked against the registered facts, and the SVHN example reads the official file layout. What a test's
plugin registers is taken back after it (conftest.py, registries_restored)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from helpers import FOUR_STEPS, tiny_config

from cissl import api, plugins
from cissl.bench.throughput import synthetic_data
from cissl.data.sources import SOURCES, load_source, register_source
from cissl.engine.data import prepare_data
from cissl.engine.run import start_run
from cissl.errors import ConfigError, DataError

# Four classes of 30 training and 6 test images each (class k's pixels around 60 k, so a few steps learn
# something), grey 8x8; with ``UNLABELED`` a separate split of 25 images without labels.
TOY_SOURCE = '''
import numpy as np

from cissl.data.sources import DataSource, ImageSet, register_source


def images(n, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n)
    pixels = rng.integers(0, 40, (4 * n, 1, 8, 8)) + 60 * labels[:, None, None, None]
    return ImageSet(pixels.astype(np.uint8), labels)


@register_source("NAME", num_classes=4, channels=1, image_size=8, has_unlabeled_split=UNLABELED)
def read(data_config):
    """a toy data set

    (only the first line is listed)"""
    unlabeled = ImageSet(images(25, 2).images[:25], None) if UNLABELED else None
    return DataSource("NAME", images(30, 0), images(6, 1), ["a", "b", "c", "d"], (0.4,), (0.3,), unlabeled)
'''

# labeled 8, 4, 2, 1 (N1 = 8, gamma 8); unlabeled 12, 6, 3, 1 (M1 = 12): each class's 30 images suffice
TOY_PROTOCOL = ["data.labeled_head=8", "data.imbalance_ratio=8", "data.unlabeled_head=12", "data.image_size=null",
                "train.batch_size=4"]


def write_toy_source(path: Path, name: str, unlabeled: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TOY_SOURCE.replace("NAME", name).replace("UNLABELED", str(unlabeled)))
    return path


def test_a_data_set_of_a_plugin_is_drawn_by_the_protocol_and_its_run_is_read_in_a_fresh_process(tmp_path, capsys):
    """data.dataset names the plugin's data set; the split follows N1 / gamma / M1 like CIFAR-10's; the run's
    config lists the plugin (added because data.dataset names it), and `cissl evaluate` in a new interpreter,
    started elsewhere, reads the data set again through it."""
    toy = write_toy_source(tmp_path / "toy_data.py", "toy_set")
    with pytest.raises(ConfigError, match=r"^config key 'data.dataset': must be one of cifar10, .*, arrays; got "
                                          r"'toy_set'$"):
        tiny_config("data.dataset=toy_set")
    setting = tmp_path / "setting.yaml"
    setting.write_text(f"inherit: {REPO / 'configs/quickstart.yaml'}\nplugins: [toy_data.py]\ndata:\n"
                       "  dataset: toy_set\n")
    code, out, err = run_cli(["split", "--config", setting, *TOY_PROTOCOL], capsys)
    assert code == 0, err
    counts = json.loads(out.splitlines()[-1])
    assert (counts["labeled"], counts["unlabeled"], counts["classes"]) == ([8, 4, 2, 1], [12, 6, 3, 1], list("abcd"))
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", setting, *FOUR_STEPS, *TOY_PROTOCOL, "--algorithm", "fixmatch",
                            "--out", run], capsys)
    assert code == 0, err
    split = json.loads((run / "split.json").read_text())
    assert split["labeled_counts"] == [8, 4, 2, 1] and split["unlabeled_counts"] == [12, 6, 3, 1]
    assert json.loads((run / "results.json").read_text())["environments"][-1]["plugins"] == {
        str(toy): hashlib.sha256(toy.read_bytes()).hexdigest()[:12]}
    assert tiny_config("data.dataset=toy_set", *TOY_PROTOCOL).plugins == [str(toy)]  # named, so added

    fresh = subprocess.run([sys.executable, "-m", "cissl", "evaluate", str(run)], cwd="/", capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert fresh.returncode == 0, fresh.stderr
    assert "fixmatch on quickstart" in fresh.stdout


def test_a_plugin_data_set_with_an_unlabeled_split_serves_the_unknown_distribution(tmp_path):
    """has_unlabeled_split: data.unlabeled_distribution=unknown takes the reader's whole unlabeled split (as
    STL-10's); a data set without one is refused up front, and the message lists those with one."""
    write_toy_source(tmp_path / "with_split.py", "toy_with_split", unlabeled=True)
    write_toy_source(tmp_path / "without.py", "toy_without")
    config = tiny_config(f"plugins=[{tmp_path / 'with_split.py'}, {tmp_path / 'without.py'}]",
                         "data.dataset=toy_with_split", "data.unlabeled_distribution=unknown", *TOY_PROTOCOL)
    data = prepare_data(config, torch.device("cpu"))
    assert len(data.unlabeled) == 25 and data.unlabeled.labels is None
    # a saved split's unlabeled indices are checked against the unlabeled split, not the 120 training images
    beyond = dataclasses.replace(data.split, unlabeled_indices=np.append(data.split.unlabeled_indices, 25))
    with pytest.raises(DataError, match=r"^split.json: unlabeled index 25 is out of range for the 25 images of "):
        prepare_data(config, torch.device("cpu"), beyond)
    with pytest.raises(ConfigError, match=r"^config key 'data.unlabeled_distribution': 'unknown' needs a data set "
                                          r"with a separate unlabeled split \(stl10, folder, arrays, "
                                          r"toy_with_split\); use consistent, uniform or reversed$"):
        config.replace(["data.dataset=toy_without"])


def test_the_throughput_bench_draws_synthetic_images_of_a_plugin_data_sets_shape(tmp_path):
    write_toy_source(tmp_path / "toy_data.py", "toy_shape")
    config = tiny_config(f"plugins=[{tmp_path / 'toy_data.py'}]", "data.dataset=toy_shape", *TOY_PROTOCOL)
    data = synthetic_data(config, torch.device("cpu"))
    assert (data.channels, data.image_size, data.num_classes) == (1, 8, 4)
    assert data.split.labeled_counts == [8, 4, 2, 1]


def test_data_image_size_resizes_a_plugin_data_set_after_its_reader(tmp_path):
    write_toy_source(tmp_path / "toy_data.py", "toy_resized")
    config = tiny_config(f"plugins=[{tmp_path / 'toy_data.py'}]", "data.dataset=toy_resized", *TOY_PROTOCOL,
                         "data.image_size=16")
    source = load_source(config.data)
    assert source.train.images.shape == (120, 1, 16, 16) and source.test.images.shape == (24, 1, 16, 16)
    assert source.test.labels.tolist() == np.repeat(np.arange(4), 6).tolist()


BROKEN_READERS = {  # the reader's return expression, the message, overrides
    "a list": ("[]", r"returned a list, not a cissl\.data\.sources\.DataSource"),
    "three classes": ("source(names=['a', 'b', 'c'])", r"returned 3 class names; the data set is registered with 4 "
                                                        r"classes"),
    "a label 4": ("source(train_labels=np.array([0, 1, 2, 4] * 5))", r"returned train labels outside 0\.\.3"),
    "no test labels": ("source(test=ImageSet(np.zeros((2, 1, 8, 8), np.uint8), None))",
                       r"returned no labeled test images \(an ImageSet with labels\)"),
    "RGB images": ("source(channels=3)", r"returned train images of shape \(3, 8, 8\); registered: 1 x 8 x 8 "
                                         r"\(C, H, W\)"),
    "two means": ("source(mean=(0.1, 0.2))", r"returned mean \(0\.1, 0\.2\) / std \(0\.3,\); expected one value "
                                             r"per channel \(1\)"),
    "not square": ("source(height=6)", r"returned train images of shape \(1, 6, 8\); registered: 1 x 8 x 8 "
                                       r"\(C, H, W\)"),
    "no unlabeled split": ("source()", r"returned no unlabeled split, which data\.unlabeled_distribution=unknown "
                                      r"takes", "data.unlabeled_distribution=unknown"),
    "fine: one test class": ("source(test=ImageSet(np.zeros((2, 1, 8, 8), np.uint8), np.array([3, 3])))", None),
}


@pytest.mark.parametrize("case", BROKEN_READERS)
def test_what_a_plugin_reader_returns_is_checked_against_its_registered_facts(tmp_path, case):
    """A reader's mistake is one line naming the data set, the reader and what is wrong, before any split."""
    body, message, *overrides = BROKEN_READERS[case]
    (tmp_path / "broken_data.py").write_text(f'''
import numpy as np
from cissl.data.sources import DataSource, ImageSet, register_source


def source(names=("a", "b", "c", "d"), train_labels=np.arange(4).repeat(5), channels=1, mean=(0.4,), test=None,
           height=8):
    train = ImageSet(np.zeros((len(train_labels), channels, height, 8), np.uint8), train_labels)
    test = test or ImageSet(np.zeros((4, 1, 8, 8), np.uint8), np.arange(4))
    return DataSource("toy_broken", train, test, list(names), mean, (0.3,))


@register_source("toy_broken", num_classes=4, channels=1, image_size=8, has_unlabeled_split=True)
def read(data_config):
    return {body}
''')
    config = tiny_config(f"plugins=[{tmp_path / 'broken_data.py'}]", "data.dataset=toy_broken", *TOY_PROTOCOL,
                         *overrides)
    module = plugins._module_name(tmp_path / "broken_data.py")
    if message is None:
        assert load_source(config.data).test.labels.tolist() == [3, 3]
        return
    with pytest.raises(DataError, match=rf"^toy_broken: its reader \({module}\.read\) {message}$"):
        load_source(config.data)


def test_a_built_in_reader_is_checked_too_and_named_by_its_function(monkeypatch):
    """cissl's own readers go through the same check; its message names the reader function (they were
    lambdas, which a message could only call ``<lambda>``)."""
    from cissl.data import sources

    real = sources.load_digits_source()
    three_names = sources.DataSource(real.name, real.train, real.test, real.class_names[:3], real.mean, real.std)
    monkeypatch.setattr(sources, "load_digits_source", lambda: three_names)
    with pytest.raises(DataError, match=r"^digits: its reader \(cissl\.data\.sources\._read_digits\) returned 3 "
                                        r"class names; the data set is registered with 10 classes$"):
        load_source(tiny_config().data)


def test_a_reader_that_is_a_callable_object_is_named_by_its_repr():
    """A reader registered as a functools.partial has no __qualname__: its message names its repr."""
    import functools

    def read(data_config, answer):
        return answer

    reader = functools.partial(read, answer=[])
    register_source("toy_partial", num_classes=4, channels=1, image_size=8)(reader)
    try:
        with pytest.raises(DataError, match=rf"^toy_partial: its reader \({re.escape(repr(reader))}\) returned a "
                                            r"list, not a cissl\.data\.sources\.DataSource$"):
            load_source(tiny_config("data.dataset=toy_partial", *TOY_PROTOCOL).data)
    finally:
        SOURCES.pop("toy_partial")


def test_register_source_refuses_bad_facts_and_a_taken_name():
    read = lambda data_config: None  # noqa: E731
    register_source("toy_smallest", num_classes=2, channels=3, image_size=4)(read)  # the least it allows
    assert SOURCES["toy_smallest"].has_unlabeled_split is False  # the default
    assert api.registered()["datasets"]["toy_smallest"] == "2 classes, 4x4 RGB"  # a reader without docstring
    for kwargs, message in (
            ({"name": "my set"}, r"a data set's name must be a word of letters, digits and _, got 'my set'"),
            ({"num_classes": 1}, r"data set 'toy_facts': num_classes must be an int >= 2, got 1"),
            ({"channels": 4}, r"data set 'toy_facts': channels must be 1 \(grey\) or 3 \(RGB\), got 4"),
            ({"image_size": 2}, r"data set 'toy_facts': image_size must be an int >= 4, got 2"),
            ({"check_installed": "scipy"}, r"data set 'toy_facts': check_installed must be a function of no "
                                           r"arguments, got 'scipy'"),
            ({"name": "cifar10"}, r"data set 'cifar10' registered twice")):
        facts = {"name": "toy_facts", "num_classes": 4, "channels": 1, "image_size": 8} | kwargs
        with pytest.raises(ValueError, match=rf"^{message}$"):
            register_source(facts.pop("name"), **facts)(read)
    assert "toy_facts" not in SOURCES


def test_a_plugin_that_fails_after_registering_a_data_set_leaves_it_unregistered(tmp_path):
    broken = write_toy_source(tmp_path / "broken.py", "toy_gone")
    broken.write_text(broken.read_text() + "\nundefined_name + 1\n")
    with pytest.raises(ConfigError, match=r"importing .*broken\.py failed: NameError"):
        tiny_config(f"plugins=[{broken}]")
    assert "toy_gone" not in SOURCES


def test_cissl_list_names_the_data_sets_with_their_facts(tmp_path, capsys, monkeypatch):
    write_toy_source(tmp_path / "toy_data.py", "toy_listed_set")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["list", "--plugins", "toy_data.py"], capsys)
    assert code == 0, err
    listed = out.split("data sets (data.dataset):\n")[1].split("\n\n")[0].splitlines()
    assert listed[0].split() == ["cifar10", "CIFAR-10", "(python", "pickles);", "10", "classes,", "32x32", "RGB"]
    assert listed[-1].split() == ["toy_listed_set", "a", "toy", "data", "set;", "4", "classes,", "8x8", "grey"]
    assert api.registered()["datasets"]["folder"].startswith("your images: labeled/<class>/")


# SVHN's official files: X uint8 (32, 32, 3, N), y (N, 1) with the digits 1..9 and 10 for 0
def write_svhn(root: Path, per_class: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    y = np.tile(np.arange(1, 11), per_class).astype(np.uint8)[:, None]
    x = rng.integers(0, 256, (32, 32, 3, len(y)), dtype=np.uint8)
    (root / "svhn").mkdir(parents=True, exist_ok=True)
    savemat(root / "svhn" / name, {"X": x, "y": y})
    return x, y


@pytest.fixture
def svhn(tmp_path, monkeypatch):
    """The example plugin with small SVHN files in the official layout under tmp_path/data (their md5s put in
    the plugin's table: the real ones are the official files')."""
    module = plugins.import_plugins([str(REPO / "examples/svhn.py")])[0]
    root = tmp_path / "data"
    arrays = {name: write_svhn(root, per_class, seed, name)
              for name, per_class, seed in (("train_32x32.mat", 20, 0), ("test_32x32.mat", 3, 1))}
    monkeypatch.setattr(module, "FILES", {name: hashlib.md5((root / "svhn" / name).read_bytes()).hexdigest()
                                          for name in arrays})
    return module, root, arrays


def test_the_svhn_example_reads_the_official_layout(svhn):
    """Images (H, W, C, N) -> (N, C, H, W) pixel for pixel; label 10 is the digit 0; the mean / std are the
    training images' per channel."""
    module, root, arrays = svhn
    config = tiny_config(f"plugins=[{REPO / 'examples/svhn.py'}]", "data.dataset=svhn", f"data.root={root}")
    source = load_source(config.data)
    x, y = arrays["train_32x32.mat"]
    assert source.train.images.shape == (200, 3, 32, 32)
    assert source.train.images[7, 2, 5, 9] == x[5, 9, 2, 7] and np.array_equal(source.train.images,
                                                                               x.transpose(3, 2, 0, 1))
    assert source.train.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0] and len(source.test) == 30
    scaled = x.astype(np.float64) / 255
    assert source.mean == pytest.approx(tuple(scaled.mean(axis=(0, 1, 3))), abs=1e-12)
    assert source.std == pytest.approx(tuple(scaled.std(axis=(0, 1, 3))), abs=1e-9)
    mean, std = module.channel_statistics(source.train.images, chunk=7)  # chunks of any size
    assert mean == pytest.approx(source.mean, abs=1e-12) and std == pytest.approx(source.std, abs=1e-12)


def test_the_svhn_setting_draws_svhn_lt_without_flips_and_trains(svhn, tmp_path, capsys):
    """examples/svhn_lt.yaml: the CIFAR-10-LT recipe on SVHN (here at a small N1), no horizontal flip."""
    _, root, _ = svhn
    small = [f"data.root={root}", "data.labeled_head=4", "data.imbalance_ratio=4", "data.unlabeled_head=12",
             "data.unlabeled_includes_labeled=false"]
    config = api.load_config(REPO / "examples/svhn_lt.yaml", small)
    assert (config.data.dataset, config.augment.horizontal_flip, config.model.depth) == ("svhn", False, 28)
    code, _, err = run_cli(["train", "--config", REPO / "examples/svhn_lt.yaml", *small, *FOUR_STEPS,
                            "--algorithm", "fixmatch", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    split = json.loads((tmp_path / "run/split.json").read_text())
    assert split["labeled_counts"] == [4, 3, 2, 2, 2, 1, 1, 1, 1, 1]  # floor(4 x 4 ** (-k / 9))
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["setting"] == "svhn_lt/consistent_n1500_m3000_g100" and len(results["per_class_accuracy"]) == 10


def test_the_svhn_example_names_a_missing_a_corrupt_and_a_wrong_file(svhn, monkeypatch):
    module, root, _ = svhn
    config = tiny_config(f"plugins=[{REPO / 'examples/svhn.py'}]", "data.dataset=svhn", f"data.root={root}")
    train = root / "svhn" / "train_32x32.mat"
    monkeypatch.setattr(module, "FILES", {**module.FILES, "train_32x32.mat": "0" * 32})
    with pytest.raises(DataError, match=rf"^svhn: file {train} is corrupt \(md5 [0-9a-f]{{32}}, expected 0{{32}}\); "
                                        r"delete it and download it again$"):
        load_source(config.data)
    monkeypatch.setattr(module, "FILES", {**module.FILES, "train_32x32.mat": None})
    from scipy.io import savemat

    savemat(train, {"X": np.zeros((28, 28, 1, 4), np.uint8), "y": np.ones((4, 1), np.uint8)})
    with pytest.raises(DataError, match=rf"^svhn: {train} is not train_32x32.mat \(expected X uint8 \(32, 32, 3, N\) "
                                        r"and y with N digits\)$"):
        load_source(config.data)
    savemat(train, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]], np.uint8)})
    with pytest.raises(DataError, match=rf"^svhn: {train} has labels outside 1\.\.10$"):
        load_source(config.data)
    train.write_bytes(b"not a MATLAB file")
    with pytest.raises(DataError, match=rf"^svhn: cannot read {train} \("):
        load_source(config.data)
    train.unlink()
    with pytest.raises(DataError, match=rf"^svhn: missing file {train}; put it there or set data.download=true$"):
        load_source(config.data)


def test_the_svhn_example_names_a_missing_scipy_before_the_run_folder_is_claimed(svhn, tmp_path, monkeypatch):
    """The reader declares scipy with register_source's check_installed; start_run asks it before anything."""
    _, root, _ = svhn
    config = tiny_config(f"plugins=[{REPO / 'examples/svhn.py'}]", "data.dataset=svhn", f"data.root={root}")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DataError, match=r"^svhn: reading its \.mat files needs scipy \(pip install scipy\)$"):
        start_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_svhn_example_downloads_missing_files_when_asked(svhn, tmp_path, monkeypatch):
    """data.download=true fetches each missing file from the example's URL into data.root/svhn and checks its
    md5 (here the URL is a local folder holding the small files)."""
    module, served, _ = svhn
    monkeypatch.setattr(module, "URL", (served / "svhn").as_uri() + "/")
    root = tmp_path / "fresh"
    config = tiny_config(f"plugins=[{REPO / 'examples/svhn.py'}]", "data.dataset=svhn", f"data.root={root}",
                         "data.download=true")
    assert len(load_source(config.data).train) == 200
    assert sorted(path.name for path in (root / "svhn").iterdir()) == ["test_32x32.mat", "train_32x32.mat"]
    monkeypatch.setattr(module, "FILES", {**module.FILES, "test_32x32.mat": "f" * 32})
    (root / "svhn" / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"^svhn: file .*test_32x32\.mat is corrupt \(md5 [0-9a-f]{32}, expected "
                                        r"f{32}\); delete it and download it again$"):
        load_source(config.data)
