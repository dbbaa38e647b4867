import dataclasses
import re

import pytest

from cissl.config import (
    Config,
    algorithm_defaults,
    build,
    flat_keys,
    load_config,
    name_differences,
    parse_overrides,
    read_config_file,
    save_config,
)
from cissl.errors import ConfigError


def test_defaults_build_and_are_frozen():
    config = build({})
    assert config.optim.lr == 0.03 and config.train.batch_size == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0


def test_differing_keys_are_named_three_at_most_then_counted():
    show = "<{}>".format
    assert name_differences([], show) is None
    assert name_differences(["a", "b", "c"], show) == "<a>, <b>, <c>"
    assert name_differences(["a", "b", "c", "d"], show) == "<a>, <b>, <c> and 1 more"
    assert name_differences(list("abcdef"), show) == "<a>, <b>, <c> and 3 more"


def test_dotted_overrides_are_typed():
    config = load_config(None, ["optim.lr=0.01", "train.iterations=1e3", "train.report_last=1", "data.dataset=cifar100",
                                "algorithm.name=fixmatch", "algorithm.threshold=0.9"])
    assert config.optim.lr == 0.01
    assert config.train.iterations == 1000 and isinstance(config.train.iterations, int)
    assert config.data.dataset == "cifar100"
    assert config.algorithm.threshold == 0.9


# A part of each message: the whole one lists every allowed value (data sets, methods, keys), which grows with
# the registries; test_each_refused_config_names_its_key_and_the_fix below checks whole messages.
@pytest.mark.parametrize("override, fragment", [
    ("data.imbalance_ratio=-3", "'data.imbalance_ratio': must be >= 1.0"),
    ("data.dataset=imagenet", "'data.dataset': must be one of"),
    ("optim.lr=0", "'optim.lr': must be > 0"),
    ("train.batch_size=abc", "'train.batch_size': expected an integer"),
    ("train.batch_size=2.5", "'train.batch_size': expected an integer"),
    ("train.channels_last=1", "'train.channels_last': expected true/false"),
    ("data.imbalance_rato=3", "did you mean 'data.imbalance_ratio'"),
    ("algorithm.name=nope", "unknown algorithm 'nope'"),
    ("algorithm.threshold=1.5", "'algorithm.threshold': must be <= 1.0"),
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
    assert config.replace({"train.seed": 5, "name": "a=b"}).train.seed == 5  # a mapping: values as they are
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


SHORT = ["train.iterations=10", "train.eval_every=5", "train.report_last=1"]  # a run of two evaluations


@pytest.fixture
def toy_views():
    """A method that takes 1 or 3 strong views per unlabeled image (none of cissl's own restricts them), and one
    like it that takes no unlabeled images; both unregistered after the test (conftest.py)."""
    from cissl.algorithms import ViewSpec
    from cissl.algorithms.fixmatch import FixMatch
    from cissl.algorithms.registry import register
    from cissl.schema import AlgorithmConfig, option

    @dataclasses.dataclass(frozen=True)
    class ToyViewsConfig(AlgorithmConfig):
        name: str = option("toy_views")

    class ToyViews(FixMatch):
        @classmethod
        def views(cls, config):
            return ViewSpec(strong_views=(1, 3), unlabeled=config.name == "toy_views")

    register("toy_views", ToyViewsConfig)(ToyViews)
    register("toy_views_labeled_only", ToyViewsConfig)(ToyViews)


def test_the_methods_own_needs_pass_where_they_are_met(toy_views):
    """The other side of the check_method refusals in the list below."""
    assert load_config(None, ["algorithm.name=toy_views", "train.strong_views=3"]).train.strong_views == 3
    assert load_config(None, ["algorithm.name=toy_views_labeled_only", "train.strong_views=2"]).train.strong_views == 2
    assert load_config(None, ["algorithm.name=crt", "train.init_from=runs/x"]).train.init_from == "runs/x"
    assert load_config(None, ["algorithm.name=fixmatch_seval", "data.val_per_class=1"]).data.val_per_class == 1


@pytest.mark.parametrize("overrides, message", [
    (["data.imbalance_ratio=1501"], "config key 'data.imbalance_ratio': N1 / gamma = 1500 / 1501 leaves the last "
                                    "class without a labeled image; lower the ratio to at most 1500 or raise "
                                    "data.labeled_head"),
    (["data.unlabeled_distribution=unknown"], "config key 'data.unlabeled_distribution': 'unknown' needs a data set "
                                              "with a separate unlabeled split (stl10, folder, arrays); use "
                                              "consistent, uniform or reversed"),
    (["data.unlabeled_head=null"], "config key 'data.unlabeled_head': required unless data.unlabeled_distribution "
                                   "is 'unknown'"),
    (["data.unlabeled_distribution=uniform", "data.unlabeled_imbalance_ratio=10"],
     "config key 'data.unlabeled_imbalance_ratio': must be null or 1 when data.unlabeled_distribution is 'uniform'"),
    (["data.labeled_fraction=0.1", "data.unlabeled_distribution=reversed"],
     "config key 'data.unlabeled_distribution': with data.labeled_fraction the unlabeled images are the rest of "
     "each class (consistent); set consistent or drop labeled_fraction"),
    (["data.class_order=sideways"], "config key 'data.class_order': must be source, random or a permutation of "
                                    "0..9; got 'sideways'"),
    (["data.class_order=[1, 0]"], "config key 'data.class_order': digits has 10 classes, so the order must list "
                                  "each of 0..9 once; got [1, 0]"),
    (["data.dataset=folder", "data.imbalance_ratio=10", "data.class_order=random"],
     "config key 'data.imbalance_ratio': data.dataset=folder takes its labeled and unlabeled images as given; the "
     "long-tailed protocol keys (imbalance_ratio, class_order) do not apply"),
    (["model.depth=27"], "config key 'model.depth': must be 6n + 4 (10, 16, 22, 28, ...), got 27"),
    (["train.device=cuda:"], "config key 'train.device': must be auto, cpu, cuda or cuda:N, got 'cuda:'"),
    (["train.device=cuda:x"], "config key 'train.device': must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    (["train.device=gpu"], "config key 'train.device': must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["train.device=cuda:x1"], "config key 'train.device': must be auto, cpu, cuda or cuda:N, got 'cuda:x1'"),
    (["optim.lr=[0.1"], "override optim.lr: unterminated flow sequence '[0.1'"),
    ([*SHORT, "train.report_last=2"], "config key 'train.report_last': 2 is more than half of the run's 2 "
                                      "evaluations (train.iterations 10 / train.eval_every 5); the last-k window "
                                      "must be a tail of the run: use at most 1"),
    ([*SHORT, "train.iterations=5", "train.report_last=2"], "config key 'train.report_last': 2 is more than the run's "
                                                            "1 evaluation (train.iterations 5 / train.eval_every 5); "
                                                            "the last-k window must be a tail of the run: use at "
                                                            "most 1"),
    ([*SHORT, "train.iterations=20", "train.report_last=3"], "config key 'train.report_last': 3 is more than half "
                                                             "of the run's 4 evaluations (train.iterations 20 / "
                                                             "train.eval_every 5); the last-k window must be a tail "
                                                             "of the run: use at most 2"),
    (["train.evaluate_on=val"], "config key 'train.evaluate_on': val needs a validation split, set "
                                "data.val_per_class >= 1"),
    ([*SHORT, "algorithm.name=fixmatch_crest", "train.iterations=11"],
     "config key 'train.iterations': fixmatch_crest runs 5 generations of equal length, so the iterations must be "
     "a multiple of 5, got 11"),
    (["algorithm.name=crt"], "config key 'train.init_from': crt trains only the classifier on a frozen network; give "
                             "the trained run it starts from (a run directory or a checkpoint file)"),
    (["algorithm.name=fixmatch_seval", "data.val_per_class=0"],
     "config key 'data.val_per_class': fixmatch_seval fits its parameters on a validation split held out of the "
     "training images; set data.val_per_class >= 1"),
    (["algorithm.name=toy_views", "train.strong_views=2"],
     "config key 'train.strong_views': toy_views takes 1 or 3 strong view(s) per unlabeled image, got 2"),
    (["optim.lr=0.1", "optim.lr.x=1"], "override 'optim.lr.x': 'optim.lr' is not a section"),
    (["=3"], "override '=3': malformed key"),
    (["optim.=3"], "override 'optim.=3': malformed key"),
    (["optim.lr"], "override 'optim.lr': expected key=value, e.g. optim.lr=0.01"),
    (["data.class_order=null"], "config key 'data.class_order': expected a string or list of an integer, got None"),
    (["data.image_size=x"], "config key 'data.image_size': expected an integer or null, got 'x'"),
])
def test_each_refused_config_names_its_key_and_the_fix(overrides, message, toy_views):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides", [
    ["data.imbalance_ratio=1500"],  # the last class keeps one labeled image
    ["data.unlabeled_distribution=uniform", "data.unlabeled_imbalance_ratio=1"],
    ["data.unlabeled_distribution=uniform"],
    ["data.unlabeled_distribution=reversed", "data.unlabeled_imbalance_ratio=10"],
    ["data.dataset=stl10", "data.unlabeled_distribution=unknown", "data.unlabeled_head=null"],
    ["data.labeled_fraction=0.5", "data.imbalance_ratio=100000", "data.unlabeled_head=null"],  # fraction: no ratio
    ["data.class_order=random"], ["data.class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]"],
    ["data.dataset=folder"],  # its classes come from the folder: no protocol checks
    ["data.dataset=folder", "data.imbalance_ratio=100.0", "data.class_order=source"],  # the defaults, as saved
    ["model.depth=10"], ["model.depth=16"],
    ["train.device=cpu"], ["train.device=cuda"], ["train.device=cuda:12"], ["train.device=auto"],
    [*SHORT, "train.iterations=11", "train.report_last=1"],
    ["train.iterations=1", "train.eval_every=5", "train.report_last=1"],  # one evaluation: a window of one
    ["train.evaluate_on=val", "data.val_per_class=1"],
    [*SHORT, "algorithm.name=fixmatch_crest", "train.iterations=15"],
])
def test_the_edges_of_each_check_are_allowed(overrides):
    load_config(None, overrides)


def test_evaluations_count_the_last_partial_interval():
    assert [load_config(None, [*SHORT, f"train.iterations={n}"]).train.evaluations for n in (10, 11, 14, 15)] == [
        2, 3, 3, 3]


def test_overrides_strip_the_key_keep_the_value_after_the_first_equals_and_fill_null_sections(tmp_path):
    assert parse_overrides([" optim.lr =0.5", "name=a=b"]) == [("optim.lr", 0.5), ("name", "a=b")]
    (tmp_path / "c.yaml").write_text("data:\n  dataset: digits\noptim:\n")
    assert load_config(tmp_path / "c.yaml", ["optim.lr=0.2"]).optim.lr == 0.2  # `optim:` (null) becomes a section
    with pytest.raises(ConfigError, match="^a config must be a mapping of sections, got list$"):
        build([])


def test_config_files_of_the_wrong_shape_name_the_file(tmp_path):
    (tmp_path / "list.yaml").write_text("- data\n")
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(tmp_path / 'list.yaml'))}: expected a "
                                          f"mapping of sections$"):
        read_config_file(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(tmp_path / 'empty.yaml'))} is empty: it "
                                          f"would mean a 250k-iteration run of the defaults; start from a file in "
                                          f"configs/$"):
        read_config_file(tmp_path / "empty.yaml")
    (tmp_path / "loop.yaml").write_text("inherit: loop.yaml\n")
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(tmp_path / 'loop.yaml'))}: inheritance "
                                          f"cycle$"):
        read_config_file(tmp_path / "loop.yaml")


def test_several_parents_merge_in_order_and_the_child_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.1\n  momentum: 0.5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/b.yaml").write_text("optim:\n  lr: 0.2\ntrain:\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("inherit: [a.yaml, sub/b.yaml]\ntrain:\n  seed: 4\n")
    assert read_config_file(tmp_path / "child.yaml") == {"optim": {"lr": 0.2, "momentum": 0.5}, "train": {"seed": 4}}
    (tmp_path / "sub/c.yaml").write_text("inherit: b.yaml\n")  # a parent's path is relative to its child
    assert read_config_file(tmp_path / "sub/c.yaml") == {"optim": {"lr": 0.2}, "train": {"seed": 3}}


def test_a_methods_entry_may_not_name_its_algorithm(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  dataset: digits\nmethods:\n  acr:\n    name: semi\n")
    with pytest.raises(ConfigError, match=r"^config key 'methods.acr': expected a mapping of that algorithm's "
                                          r"options \(without 'name'\), got \{'name': 'semi'\}$"):
        load_config(tmp_path / "c.yaml")


def test_flat_keys_joins_nested_keys_with_dots():
    assert flat_keys({"a": {"b": 1, "c": {"d": [2]}}, "e": None, "f": {}}) == {"a.b": 1, "a.c.d": [2], "e": None}


def test_algorithm_defaults_are_the_methods_section_without_the_runs_checks():
    assert algorithm_defaults("semi") == load_config(None, algorithm="semi").algorithm
    assert algorithm_defaults("fixmatch_la").logit_adjust is True  # the preset's defaults
    assert algorithm_defaults("crt").name == "crt"  # a run of cRT needs train.init_from; its defaults do not
