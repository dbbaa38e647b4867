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


@pytest.mark.parametrize("folder, cell", [("cifar10_lt", "consistent_n500_m4000_g100"), ("stl10_lt", "n150_g10"),
                                          ("fashion_lt", "consistent_n1500_m3000_g100")])
@pytest.mark.parametrize("row", sorted(ABLATIONS))
def test_table5_ablations_switch_exactly_one_component(folder, cell, row):
    import dataclasses

    full = load_config(CONFIGS / folder / f"{cell}.yaml")
    ablated = load_config(CONFIGS / folder / "ablation" / f"{row}.yaml")
    sub, key, value = ABLATIONS[row]
    target = getattr(ablated.algorithm, sub) if sub else ablated.algorithm
    assert getattr(target, key) == value
    if sub:
        restored = dataclasses.replace(ablated.algorithm, **{sub: dataclasses.replace(target, **{key: getattr(
            getattr(full.algorithm, sub), key)})})
    else:
        restored = dataclasses.replace(ablated.algorithm, **{key: getattr(full.algorithm, key)})
    assert restored == full.algorithm and ablated.data == full.data and ablated.train == full.train
