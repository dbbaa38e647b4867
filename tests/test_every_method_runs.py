"""Every registered method and preset trains end to end to a complete results.json: on digits-LT, and
on the real Fashion-MNIST-LT files where Debian's package is installed."""

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import CONFIGS
from helpers import ACTIVE_TERMS, logged_records, tiny_config
from test_training import RESULT_KEYS

from cissl.algorithms import algorithm_class, algorithm_names
from cissl.config import load_config
from cissl.data.sources import SOURCES, ImageSet
from cissl.engine.run import start_run

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def expected_heads(config) -> set:
    return set(algorithm_class(config.algorithm.name).required_heads(config.algorithm))


def parent_run(tmp_path, algorithm, make_config) -> list[str]:
    """For a method that re-trains the classifier of a finished run (cRT), that run: a short supervised
    one on the same data; the overrides that start from it."""
    if algorithm_class(algorithm).trains_backbone(None):
        return []
    start_run(make_config("supervised"), tmp_path / "parent", quiet=True)
    return [f"train.init_from={tmp_path / 'parent'}"]


@pytest.mark.parametrize("algorithm", algorithm_names())
def test_digits(tmp_path, algorithm):
    parent = parent_run(tmp_path, algorithm, lambda name: tiny_config("train.iterations=4", "train.eval_every=2",
                                                                      "train.report_last=1", algorithm=name))
    config = tiny_config(*ACTIVE_TERMS.get(algorithm, []), *parent, algorithm=algorithm)
    results = start_run(config, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert RESULT_KEYS <= set(saved) and saved["iterations"] == 20 and 0.0 <= results["top1"] <= 1.0
    assert set(saved["heads"]) == expected_heads(config)
    # ACTIVE_TERMS makes every term of the method run: each logged term is non-zero in some log window
    train = [r for r in logged_records(tmp_path / "run") if r["kind"] == "train"]
    terms = {key for record in train for key in record} - {"kind", "iteration", "lr", "it_per_s"}
    assert terms and not {key for key in terms if all(record.get(key, 0) == 0 for record in train)}


@pytest.fixture
def fashion_test_cut(monkeypatch):
    """Fashion-MNIST with its test set cut to the first 2,000 of its 10,000 images (each class has 180-220 of
    them): evaluating all 10,000 took about 3 of each method's 5 seconds here, and the same evaluation runs on
    the whole test set in tests/test_semi_algorithm.py."""
    info = SOURCES["fashion_mnist"]

    def read(data_config):
        source = info.read(data_config)
        source.test = ImageSet(source.test.images[:2000], source.test.labels[:2000])
        return source

    monkeypatch.setitem(SOURCES, "fashion_mnist", dataclasses.replace(info, read=read))


@pytest.mark.skipif(not FASHION.is_file(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("algorithm", algorithm_names())
def test_fashion(tmp_path, algorithm, fashion_test_cut):
    short = ["train.iterations=10", "train.eval_every=10", "train.checkpoint_every=10", "train.report_last=1",
             "train.epoch_length=5", "train.eval_batch_size=2000"]
    generations = ["algorithm.generations=2"] if "crest" in algorithm else []  # one pool re-labelling
    setting = CONFIGS / "fashion_lt/consistent_n1500_m3000_g100.yaml"
    parent = parent_run(tmp_path, algorithm, lambda name: load_config(setting, short, name))
    config = load_config(setting, short + generations + ACTIVE_TERMS.get(algorithm, []) + parent, algorithm)
    start_run(config, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert RESULT_KEYS <= set(saved) and saved["iterations"] == 10
    assert sum(map(sum, saved["confusion_matrix"])) == 2000  # the cut test set
    assert set(saved["heads"]) == expected_heads(config)
