"""SAW: parity with USB's class weights and losses, the effective-number weights by hand, the epoch update."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from cissl.algorithms import AlgorithmContext, PoolPredictions, build_algorithm
from cissl.algorithms.components.pseudo_label import PseudoLabels
from cissl.algorithms.saw import Saw, effective_number_weights
from cissl.config import load_config

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "saw.json").read_text())


def t(key):
    return torch.tensor(FIXTURE[key], dtype=torch.float32)


def make(counts, *overrides):
    config = load_config(None, ["algorithm.name=fixmatch_saw", *overrides])
    context = AlgorithmContext(num_classes=len(counts), labeled_counts=tuple(counts), feature_dim=4, iterations=10,
                               epoch_length=5, unlabeled_pool_size=FIXTURE["pool_size"])
    return build_algorithm(config.algorithm, context)


def pool(logits):
    return PoolPredictions({"main": logits}, torch.zeros(len(logits), 4))


def pseudo(labels, mask):
    n = len(labels)
    return PseudoLabels(torch.zeros(n, 1), torch.ones(n), torch.tensor(labels), torch.as_tensor(mask).bool())


def test_weights_and_losses_match_usb():
    algo = make(FIXTURE["labeled_counts"])
    assert Saw.pool_each_epoch(algo.config)
    assert torch.allclose(algo.labeled_weights, t("labeled_weights"), rtol=1e-6)
    assert torch.allclose(algo.unlabeled_weights, t("initial_unlabeled_weights"), rtol=1e-6)
    algo.on_epoch_pool(0, pool(t("pool_logits")))  # class 3 is never predicted there: counted as 1
    assert torch.allclose(algo.unlabeled_weights, t("unlabeled_weights"), rtol=1e-6)
    labeled = algo.labeled_term(t("labeled_logits"), torch.tensor(FIXTURE["labels"]))
    assert labeled.item() == pytest.approx(FIXTURE["labeled_loss"], rel=1e-6)
    unlabeled = algo.unlabeled_term([t("strong_logits")], pseudo(FIXTURE["targets"], t("mask")))
    assert unlabeled.item() == pytest.approx(FIXTURE["unlabeled_loss"], rel=1e-6)


def test_effective_number_weights_by_hand():
    """Counts (3, 1): N = 2, beta = 1/2; (1 - beta) / (1 - beta^n) = (4/7, 1), scaled to sum 2: (8/11, 14/11).
    Equal counts give ones; a zero count is taken as 1 (so (1, 0) gives ones too)."""
    assert torch.allclose(effective_number_weights([3, 1]), torch.tensor([8 / 11, 14 / 11]))
    assert torch.allclose(effective_number_weights([5, 5, 5]), torch.ones(3))
    assert torch.allclose(effective_number_weights([1, 0]), torch.ones(2))
    weights = effective_number_weights([100, 10, 1])
    assert weights[0] < weights[1] < weights[2] and weights.sum().item() == pytest.approx(3.0)


def test_losses_weight_each_sample_by_its_class():
    """Counts (3, 1) -> labeled weights (8/11, 14/11): a class-0 and a class-1 sample with equal logits
    give mean(8/11, 14/11) * ln 2; with LA the adjusted logits enter the same weighted CE."""
    algo = make([3, 1])
    logits = torch.zeros(2, 2)
    assert algo.labeled_term(logits, torch.tensor([0, 1])).item() == pytest.approx(math.log(2) * 1.0, rel=1e-6)
    assert algo.labeled_term(logits, torch.tensor([1, 1])).item() == pytest.approx(math.log(2) * 14 / 11, rel=1e-6)
    la = make([3, 1], "algorithm.logit_adjust=true")
    expected = F.cross_entropy(logits[:1] + torch.log(torch.tensor([0.75, 0.25])), torch.tensor([1])).item() * 14 / 11
    assert la.labeled_term(logits[:1], torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)
    # unlabeled: pool predictions 3 x class 0, 1 x class 1 -> the same weights on the masked rows only
    algo.on_epoch_pool(0, pool(torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])))
    strong = torch.zeros(3, 2)
    loss = algo.unlabeled_term([strong], pseudo([0, 1, 1], [True, True, False]))
    assert loss.item() == pytest.approx(math.log(2) * (8 / 11 + 14 / 11) / 3, rel=1e-6)


def test_state_round_trip():
    algo = make([3, 1])
    algo.on_epoch_pool(0, pool(torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]])))
    other = make([3, 1])
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.unlabeled_weights, algo.unlabeled_weights)
    assert not torch.equal(other.unlabeled_weights, torch.ones(2))
