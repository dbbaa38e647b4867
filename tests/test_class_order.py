"""data.class_order: which source class is the head, recorded in split.json and checked on reuse."""

import dataclasses
import json

import numpy as np
import pytest
from conftest import CONFIGS, run_cli
from helpers import tiny_config

from cissl.config import load_config
from cissl.data.class_order import reorder_classes, resolve_class_order
from cissl.data.protocol import Split
from cissl.data.sources.base import DataSource, ImageSet
from cissl.engine.data import prepare_data
from cissl.engine.run import evaluate_run, start_run
from cissl.errors import ConfigError, DataError


def data_config(*overrides):
    return load_config(CONFIGS / "quickstart.yaml", list(overrides)).data


def test_source_order_is_the_identity_and_the_default():
    assert data_config().class_order == "source"
    assert resolve_class_order(data_config(), 10) == list(range(10))


def test_random_order_is_a_permutation_drawn_from_its_own_seed():
    first = resolve_class_order(data_config("data.class_order=random", "data.class_order_seed=3"), 10)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert resolve_class_order(data_config("data.class_order=random", "data.class_order_seed=3",
                                           "train.seed=5"), 10) == first  # the run seed does not move it
    assert resolve_class_order(data_config("data.class_order=random", "data.class_order_seed=4"), 10) != first


def test_explicit_permutation():
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert resolve_class_order(data_config(f"data.class_order={order}"), 10) == order


@pytest.mark.parametrize("value,message", [("reverse", "source, random or a permutation"),
                                           ("[1, 0, 2]", "list each of 0..9 once"),
                                           ("[0, 0, 1, 2, 3, 4, 5, 6, 7, 8]", "list each of 0..9 once"),
                                           ("[0, 1, 2, 3, 4, 5, 6, 7, 8, 10]", "list each of 0..9 once")])
def test_bad_orders_are_one_line_config_errors(value, message):
    with pytest.raises(ConfigError, match=f"data.class_order.*{message}"):
        data_config(f"data.class_order={value}")


def test_reorder_renames_labels_and_class_names():
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    source = DataSource("toy", ImageSet(images, [0, 1, 2, 2]), ImageSet(images[:2], [2, 0]), ["a", "b", "c"],
                        (0.5,), (0.2,), unlabeled=ImageSet(images[:1], None))
    out = reorder_classes(source, [2, 0, 1])  # run class 0 = source class 2 ("c")
    assert out.class_names == ["c", "a", "b"]
    assert out.train.labels.tolist() == [1, 2, 0, 0] and out.test.labels.tolist() == [0, 1]
    assert out.unlabeled.labels is None and source.train.labels.tolist() == [0, 1, 2, 2]
    assert out.train.labels.dtype == np.int64 and out.train.images is source.train.images
    known = reorder_classes(dataclasses.replace(source, unlabeled=ImageSet(images[:3], [1, 0, 2])), [2, 0, 1])
    assert known.unlabeled.labels.tolist() == [2, 1, 0]  # an unlabeled pool's true labels (diagnostics) too
    assert reorder_classes(source, [0, 1, 2]) is source


def test_the_head_is_the_first_class_of_the_order(tmp_path):
    """Digits with order [7, 3, ...]: the 40 labeled images of run class 0 are images of the digit 7."""
    order = [7, 3, 0, 1, 2, 4, 5, 6, 8, 9]
    config = load_config(CONFIGS / "quickstart.yaml", [f"data.class_order={order}"])
    data = prepare_data(config, "cpu")
    plain = prepare_data(load_config(CONFIGS / "quickstart.yaml"), "cpu")
    assert data.class_names[:2] == ["7", "3"] and data.split.class_order == order
    head = data.labeled.images[data.labeled.labels == 0]
    sevens = plain.test.images[plain.test.labels == 7]
    assert len(head) == 40
    # the run's test images of class 0 are the source's test images of the digit 7
    assert data.test.images[data.test.labels == 0].tolist() == sevens.tolist()
    saved = Split.from_json(json.loads(json.dumps(data.split.to_json())))
    assert saved.class_order == order and saved.settings["class_order"] == order


def test_a_split_of_another_order_is_refused(tmp_path):
    config = load_config(CONFIGS / "quickstart.yaml", ["data.class_order=random"])
    split = prepare_data(load_config(CONFIGS / "quickstart.yaml"), "cpu").split
    with pytest.raises(DataError, match="split.json was built with class order"):
        prepare_data(config, "cpu", split)
    split.class_order = None  # a split saved before the order was recorded: the source order, taken as it is
    assert prepare_data(load_config(CONFIGS / "quickstart.yaml"), "cpu", split).split is split


def test_a_run_with_a_random_order_saves_and_evaluates(tmp_path):
    config = tiny_config("data.class_order=random", "data.class_order_seed=2", "train.iterations=4",
                         "train.eval_every=4", "train.checkpoint_every=4")
    results = start_run(config, tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved["class_order"] == resolve_class_order(config.data, 10)
    assert evaluate_run(tmp_path / "run")["top1"] == results["top1"]


def test_split_command_prints_the_class_names_in_run_order(capsys):
    code, out, _ = run_cli(["split", "--config", CONFIGS / "quickstart.yaml",
                            "data.class_order=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]"], capsys)
    assert code == 0 and json.loads(out)["classes"][:3] == ["1", "0", "2"]
