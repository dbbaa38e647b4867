import dataclasses
import re

import pytest

from cissl.config import Config, build, load_config, parse_overrides, read_config_file, save_config
from cissl.errors import ConfigError


def test_defaults_build_and_are_frozen():
    config = build({})
    assert config.optim.lr == 0.03 and config.train.batch_size == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0


def test_dotted_overrides_are_typed():
    config = load_config(None, ["optim.lr=0.01", "train.iterations=1e3", "train.report_last=1", "data.dataset=cifar100",
                                "algorithm.name=fixmatch", "algorithm.threshold=0.9"])
    assert config.optim.lr == 0.01
    assert config.train.iterations == 1000 and isinstance(config.train.iterations, int)
    assert config.data.dataset == "cifar100"
    assert config.algorithm.threshold == 0.9


@pytest.mark.parametrize("override, fragment", [
    ("data.imbalance_ratio=-3", "'data.imbalance_ratio': must be >= 1.0"),
    ("data.dataset=imagenet", "'data.dataset': must be one of"),
    ("optim.lr=0", "'optim.lr': must be > 0"),
    ("train.batch_size=abc", "'train.batch_size': expected an integer"),
    ("train.batch_size=2.5", "'train.batch_size': expected an integer"),
    ("train.channels_last=1", "'train.channels_last': expected true/false"),
    ("data.imbalance_rato=3", "did you mean 'data.imbalance_ratio'"),
    ("model.depth=27", "'model.depth': must be 6n + 4"),
    ("algorithm.name=nope", "unknown algorithm 'nope'"),
    ("algorithm.threshold=1.5", "'algorithm.threshold': must be <= 1.0"),
    ("train.device=gpu", "'train.device'"),
    ("train.report_last=251", "'train.report_last': 251 is more than half of the run's 500 evaluations"),
    ("data=3", "'data': expected a mapping"),
    ("lr", "expected key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, [override])


def test_unknown_distribution_needs_stl10():
    with pytest.raises(ConfigError, match="data.unlabeled_distribution"):
        load_config(None, ["data.unlabeled_distribution=unknown"])
    assert load_config(None, ["data.dataset=stl10", "data.unlabeled_distribution=unknown",
                              "data.unlabeled_head=null"]).data.unlabeled_head is None


def test_algorithm_presets_and_switch(tmp_path):
    config = load_config(None, ["algorithm.name=fixmatch_la"])
    assert config.algorithm.logit_adjust is True
    path = tmp_path / "c.yaml"
    path.write_text("algorithm:\n  name: fixmatch\n  threshold: 0.7\n")
    switched = load_config(path, algorithm="supervised")
    assert switched.algorithm.name == "supervised" and not hasattr(switched.algorithm, "threshold")


def test_inheritance_merges_sections(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.1\n  momentum: 0.5\ntrain:\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\noptim:\n  lr: 0.2\n")
    merged = read_config_file(tmp_path / "child.yaml")
    assert merged == {"optim": {"lr": 0.2, "momentum": 0.5}, "train": {"seed": 3}}
    (tmp_path / "loop.yaml").write_text("inherit: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        read_config_file(tmp_path / "loop.yaml")


def test_inherited_algorithm_section_merges_only_for_the_same_method(tmp_path):
    (tmp_path / "base.yaml").write_text("algorithm:\n  name: semi\n  threshold: 0.6\n  bank:\n    capacity: 7\n")
    (tmp_path / "same.yaml").write_text("inherit: base.yaml\nalgorithm:\n  bank:\n    beta: 0.5\n")
    same = load_config(tmp_path / "same.yaml").algorithm
    assert (same.name, same.threshold, same.bank.capacity, same.bank.beta) == ("semi", 0.6, 7, 0.5)
    # a child that names another method takes none of the parent's method options
    (tmp_path / "other.yaml").write_text("inherit: base.yaml\nalgorithm:\n  name: fixmatch\n  temperature: 0.5\n")
    other = load_config(tmp_path / "other.yaml").algorithm
    assert (other.name, other.threshold, other.temperature) == ("fixmatch", 0.95, 0.5)
    # a name given as a plain string switches the method too
    (tmp_path / "short.yaml").write_text("inherit: base.yaml\nalgorithm: supervised_la\n")
    assert load_config(tmp_path / "short.yaml").algorithm.logit_adjust is True


def test_saved_config_loads_back_identical(tmp_path):
    config = load_config(None, ["algorithm.name=fixmatch", "optim.weight_decay=0.0005", "name=a/b"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_replace_revalidates():
    config = Config()
    assert config.replace(["train.seed=4"]).train.seed == 4
    with pytest.raises(ConfigError):
        config.replace({"train.seed": -1})


def test_parse_overrides_parses_lists():
    assert parse_overrides(["a.b=[1, 2]"]) == [("a.b", [1, 2])]


def test_methods_section_gives_the_options_of_a_switched_algorithm(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("algorithm:\n  name: fixmatch\n  threshold: 0.9\n"
                    "methods:\n  fixmatch_daso:\n    refiner:\n      dist_temperature: 0.3\n  acr:\n    ema_u: 0.5\n")
    own = load_config(path)
    assert own.algorithm.name == "fixmatch" and own.algorithm.threshold == 0.9
    daso = load_config(path, algorithm="fixmatch_daso")
    assert daso.algorithm.refiner.dist_temperature == 0.3 and daso.algorithm.threshold == 0.95
    assert load_config(path, ["algorithm.ema_u=0.7"], algorithm="acr").algorithm.ema_u == 0.7
    assert load_config(path, algorithm="fixmatch_darp").algorithm.refiner.name == "darp"
    assert "methods" not in own.to_dict()


@pytest.mark.parametrize("methods,message", [
    ("  fixmatch_daso:\n    refiner:\n      dist_temprature: 0.3\n",
     "unknown config key 'methods.fixmatch_daso.refiner.dist_temprature'"),
    ("  fixmatch_dasso:\n    threshold: 0.9\n",
     "config key 'methods.fixmatch_dasso.name': unknown algorithm 'fixmatch_dasso'"),
    ("  acr: 0.5\n", "config key 'methods.acr': expected a mapping"),
])
def test_methods_section_is_validated_up_front(tmp_path, methods, message):
    path = tmp_path / "cell.yaml"
    path.write_text("algorithm:\n  name: fixmatch\nmethods:\n" + methods)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)
