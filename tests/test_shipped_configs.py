"""Every config under configs/ loads, validates, and reads the same with PyYAML."""

import pytest
import yaml
from conftest import CONFIGS

from cissl import yamlio
from cissl.config import load_config
from cissl.data.protocol import split_counts
from cissl.data.sources import SOURCES

ALL = sorted(p for p in CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_agrees_with_pyyaml(path):
    assert yamlio.load(path) == yaml.safe_load(path.read_text())
    load_config(path)


PAPER = {
    "cifar10_lt/consistent_n500_m4000_g100.yaml": (1236, 9922),
    "cifar10_lt/consistent_n1500_m3000_g100.yaml": (3720, 7443),
    "cifar10_lt/consistent_n500_m4000_g150.yaml": (1162, 9329),
    "cifar10_lt/consistent_n1500_m3000_g150.yaml": (3496, 6996),
    "cifar10_lt/uniform_n500_m4000_g100.yaml": (1236, 40000),
    "cifar10_lt/uniform_n1500_m3000_g100.yaml": (3720, 30000),
    "cifar10_lt/reversed_n500_m4000_g100.yaml": (1236, 9922),
    "cifar10_lt/reversed_n1500_m3000_g100.yaml": (3720, 7443),
    "cifar100_lt/consistent_n50_m400_g10.yaml": (1911, 15651),
    "cifar100_lt/consistent_n50_m400_g20.yaml": (1545, 12719),
    "cifar100_lt/consistent_n150_m300_g10.yaml": (5835, 11720),
    "cifar100_lt/consistent_n150_m300_g20.yaml": (4741, 9527),
    "cifar100_lt/uniform_n50_m400_g10.yaml": (1911, 40000),
    "cifar100_lt/reversed_n150_m300_g10.yaml": (5835, 11720),
    "stl10_lt/n150_g10.yaml": (609, None),
    "stl10_lt/n150_g20.yaml": (507, None),
    "stl10_lt/n450_g10.yaml": (1835, None),
    "stl10_lt/n450_g20.yaml": (1528, None),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings_have_the_spec_sums(name):
    config = load_config(CONFIGS / name)
    labeled, unlabeled = split_counts(config.data, SOURCES[config.data.dataset].num_classes)
    n_total, m_total = PAPER[name]
    assert sum(labeled) == n_total
    assert (unlabeled is None and m_total is None) or sum(unlabeled) == m_total
    if "reversed" in name:
        assert unlabeled[0] < unlabeled[-1]
    assert config.data.selection == "seeded_shuffle" and config.data.unlabeled_includes_labeled


SEMI = {  # spec 8.1: (E_w, decay_step, num_samples)
    "cifar10_lt/consistent_n1500_m3000_g100.yaml": (2, 100, 128),
    "cifar10_lt/consistent_n1500_m3000_g150.yaml": (2, 100, 128),
    "cifar10_lt/reversed_n1500_m3000_g100.yaml": (2, 100, 128),
    "cifar10_lt/consistent_n500_m4000_g100.yaml": (20, 100, 128),
    "cifar10_lt/uniform_n500_m4000_g100.yaml": (20, 100, 128),
    "cifar100_lt/consistent_n150_m300_g10.yaml": (20, 200, 512),
    "cifar100_lt/reversed_n50_m400_g10.yaml": (20, 200, 512),
    "stl10_lt/n150_g10.yaml": (20, 100, 128),
    "stl10_lt/n450_g20.yaml": (20, 100, 128),
}


@pytest.mark.parametrize("name", sorted(SEMI))
def test_semi_settings_carry_the_spec_hyperparameters(name):
    algo = load_config(CONFIGS / name).algorithm
    assert algo.name == "semi" and (algo.warmup_epochs, algo.bank.decay_step, algo.bank.num_samples) == SEMI[name]
    assert (algo.threshold, algo.oheml.scale, algo.plce.alpha, algo.plce.temperature) == (0.7, 0.75, 0.4, 0.1)
    assert (algo.ea.temperature, algo.ea.weight, algo.bank.capacity, algo.bank.beta) == (0.09, 0.15, 128, 0.99)


ABLATIONS = {"wo_bank": ("bank", "mode", "fifo"), "wo_oheml": (None, "use_oheml", False),
             "wo_ea": (None, "use_ea", False), "wo_plce": (None, "use_plce", False),
             "wo_bc": (None, "use_balanced_head", False)}


@pytest.mark.parametrize("folder, cell, ablations", [("cifar10_lt", "consistent_n500_m4000_g100", "ablation"),
                                                     ("stl10_lt", "n150_g10", "ablation"),
                                                     ("fashion_lt", "consistent_n1500_m3000_g100", "ablation"),
                                                     ("fashion_lt", "consistent_n100_m1000_g10", "ablation_n100"),
                                                     ("digits_lt", "consistent_n20_m90_g10", "ablation")])
@pytest.mark.parametrize("row", sorted(ABLATIONS))
def test_table5_ablations_switch_exactly_one_component(folder, cell, ablations, row):
    import dataclasses

    full = load_config(CONFIGS / folder / f"{cell}.yaml")
    ablated = load_config(CONFIGS / folder / ablations / f"{row}.yaml")
    sub, key, value = ABLATIONS[row]
    target = getattr(ablated.algorithm, sub) if sub else ablated.algorithm
    assert getattr(target, key) == value
    if sub:
        restored = dataclasses.replace(ablated.algorithm, **{sub: dataclasses.replace(target, **{key: getattr(
            getattr(full.algorithm, sub), key)})})
    else:
        restored = dataclasses.replace(ablated.algorithm, **{key: getattr(full.algorithm, key)})
    assert restored == full.algorithm and ablated.data == full.data and ablated.train == full.train


# The FixMatch-family rows of the SeMi paper's Tables 1-3 (shared/paper/tables.md) by cell, as presets
TABLE_1 = ["supervised", "supervised_la", "fixmatch", "fixmatch_darp", "fixmatch_daso", "fixmatch_crest_plus",
           "fixmatch_la", "fixmatch_la_darp", "fixmatch_la_daso", "fixmatch_la_crest_plus", "fixmatch_abc",
           "fixmatch_abc_daso"]
TABLES_2_3 = ["fixmatch", "fixmatch_darp", "fixmatch_crest", "fixmatch_crest_plus", "fixmatch_daso"]
TABLE_2 = TABLES_2_3 + ["fixmatch_seval"]  # SEVAL is reported in Table 2 only
CELLS = {**{f"cifar10_lt/{c}": TABLE_1 for c in ("consistent_n500_m4000_g100", "consistent_n1500_m3000_g100",
                                                  "consistent_n500_m4000_g150", "consistent_n1500_m3000_g150")},
         **{f"cifar10_lt/{d}_{n}_g100": TABLE_2
            for d in ("uniform", "reversed") for n in ("n500_m4000", "n1500_m3000")},
         **{f"cifar100_lt/consistent_{n}_g{g}": TABLE_1 for n in ("n50_m400", "n150_m300") for g in (10, 20)},
         **{f"cifar100_lt/{d}_{n}_g10": TABLES_2_3 for d in ("uniform", "reversed") for n in ("n50_m400", "n150_m300")},
         **{f"stl10_lt/n{n}_g{g}": TABLE_2 for n in (150, 450) for g in (10, 20)}}
VALIDATION = {"cifar10_lt": 500, "cifar100_lt": 50, "stl10_lt": 50}  # DASO's NUM_VALID: 5000, 5000, 500 images


@pytest.mark.parametrize("row, method, logit_adjust, refiner, aux_head", [
    ("fixmatch", "FixMatch", False, "none", "none"), ("fixmatch_la", "FixMatch", True, "none", "none"),
    ("fixmatch_darp", "FixMatch", False, "darp", "none"), ("fixmatch_daso", "FixMatch", False, "daso", "none"),
    ("fixmatch_la_darp", "FixMatch", True, "darp", "none"), ("fixmatch_la_daso", "FixMatch", True, "daso", "none"),
    ("fixmatch_abc", "FixMatch", False, "none", "abc"), ("fixmatch_abc_daso", "FixMatch", False, "daso", "abc"),
    ("fixmatch_crest", "Crest", False, "none", "none"), ("fixmatch_crest_plus", "Crest", False, "dist_align", "none"),
    ("fixmatch_la_crest_plus", "Crest", True, "dist_align", "none")])
def test_each_fixmatch_family_row_is_the_combination_of_parts_its_name_says(row, method, logit_adjust, refiner,
                                                                            aux_head):
    """The rows of Tables 1-3 as presets: LA in the labeled loss, the pseudo-label refiner, the auxiliary
    head; CReST+ is CReST with progressive distribution alignment (t_min 0.5, CReST's paper)."""
    from cissl.algorithms import ALGORITHMS
    from cissl.config import algorithm_defaults

    config = algorithm_defaults(row)
    assert ALGORITHMS.entry(row).target.__name__ == method
    assert (config.logit_adjust, config.refiner.name, config.aux_head.name) == (logit_adjust, refiner, aux_head)
    if refiner == "dist_align":
        assert config.refiner.t_min == 0.5


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_baseline_row_of_tables_1_to_3_runs_in_the_daso_protocol(cell):
    setting, _, name = cell.partition("/")
    path = CONFIGS / setting / "daso_protocol" / f"{name}.yaml"
    lines = path.read_text().splitlines()
    header = lines[1 + next(i for i, line in enumerate(lines) if line.endswith("Rows of the paper in this cell:"))]
    assert header.lstrip("# ").split() == CELLS[cell]
    for algorithm in CELLS[cell]:
        config = load_config(path, algorithm=algorithm)
        assert (config.train.batch_size, config.train.mu, config.train.strong_views) == (64, 2, 1)
        assert config.optim.schedule == "constant" and not config.data.unlabeled_includes_labeled
        assert config.name == f"{setting}/daso_protocol/{name}"
        assert config.data.val_per_class == VALIDATION[setting]  # the same split for every row
        if algorithm == "fixmatch_seval":  # the SEVAL authors' configs: STL-10 aims at precision 0.95
            stl = setting == "stl10_lt"
            assert config.algorithm.target_precision_start == config.algorithm.target_precision_end == (
                0.95 if stl else 0.9)
            assert config.algorithm.offset_decay == (0.995 if stl else 0.999) and config.algorithm.fit_every == 500
        if "daso" in algorithm:  # DASO's own configs: T_dist 1.5 for CIFAR-10 with gamma_l = gamma_u, else 0.3
            expected = 1.5 if cell.startswith("cifar10_lt/consistent") else 0.3
            assert config.algorithm.refiner.dist_temperature == expected


@pytest.mark.parametrize("setting", ["consistent", "uniform", "reversed"])
def test_digits_protocol_fits_every_class_order(setting):
    """Any digit can be the head: the split (10 validation + N_k + M_k per class) fits the smallest class."""
    from cissl.data.class_order import reorder_classes, resolve_class_order
    from cissl.data.protocol import build_split
    from cissl.data.sources import load_source

    for order_seed in range(5):
        config = load_config(CONFIGS / "digits_lt" / f"{setting}_n20_m90_g10.yaml",
                             ["data.class_order=random", f"data.class_order_seed={order_seed}"])
        source = load_source(config.data)
        order = resolve_class_order(config.data, 10)
        split = build_split(reorder_classes(source, order).train.labels, 10, config.data, 0, None, order)
        assert len(split.val_indices) == 100 and len(split.labeled_indices) == 78


@pytest.mark.parametrize("setting", ["consistent", "uniform", "reversed"])
def test_digits_protocol_holds_the_values_chosen_on_validation(setting):
    """configs/digits_lt/_base.yaml: LA strengths chosen on the held-out validation split (its comment
    gives the evidence); the runs of the tables are evaluated on the test set."""
    path = CONFIGS / "digits_lt" / f"{setting}_n20_m90_g10.yaml"
    assert load_config(path, None, "supervised_la").algorithm.la_tau == 0.5
    assert load_config(path, None, "fixmatch_la").algorithm.la_tau == 2.0
    for composed in ("fixmatch_la_darp", "fixmatch_la_daso", "fixmatch_la_crest_plus"):
        assert load_config(path, None, composed).algorithm.la_tau == 2.0, composed
    semi = load_config(path)
    assert semi.algorithm.balanced.tau2 == 2.0 and semi.data.val_per_class == 10
    assert semi.train.evaluate_on == "test"
    assert "la_tau 0.5 / 1 / 2" in (CONFIGS / "digits_lt" / "_base.yaml").read_text()


@pytest.mark.parametrize("size", ["32px", "64px"])
def test_imagenet127_configs_run_cossl_as_its_authors(size):
    """Table 4's "w/ CoSSL" row: the authors' Small-ImageNet-127 script (401 FixMatch epochs of 501, max_lam
    0.6) on the shared recipe."""
    algo = load_config(CONFIGS / "imagenet127" / f"{size}.yaml", algorithm="fixmatch_cossl").algorithm
    assert (algo.pretrain_fraction, algo.max_lam, algo.threshold) == (0.8, 0.6, 0.95)
