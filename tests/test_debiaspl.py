"""DebiasPL: parity with USB over three steps, the estimate, debiasing and loss offset by hand, state."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from helpers import FixedLogitsModel, id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.debiaspl import update_frequency_estimate
from cissl.config import load_config

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "debiaspl.json").read_text())


def make(k=4, *overrides):
    config = load_config(None, ["algorithm.name=fixmatch_debiaspl", *overrides])
    context = AlgorithmContext(num_classes=k, labeled_counts=(4,) * k, feature_dim=4, iterations=10, epoch_length=5)
    return build_algorithm(config.algorithm, context)


def step(algo, weak, strong, labeled=None):
    """One step on a lookup model: rows 0-1 labeled, then the weak views, then the strong views."""
    labeled = torch.zeros(2, weak.shape[1]) if labeled is None else labeled
    model = FixedLogitsModel(torch.cat([labeled, weak, strong]))
    n = len(weak)
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images(range(2, 2 + n)),
                  u_strong=(id_images(range(2 + n, 2 + 2 * n)),))
    return algo.step(model, batch, 0)


def test_three_steps_match_usb():
    """p_hat, the pseudo-labels, the mask and the consistency loss (with the updated p_hat) of each step."""
    algo = make(FIXTURE["num_classes"], f"algorithm.debias_strength={FIXTURE['tau']}",
                f"algorithm.momentum={FIXTURE['momentum']}", f"algorithm.threshold={FIXTURE['threshold']}")
    for record in FIXTURE["steps"]:
        out = step(algo, torch.tensor(record["weak_logits"]), torch.tensor(record["strong_logits"]))
        assert torch.allclose(algo.p_hat, torch.tensor(record["p_hat"]), atol=1e-7)
        assert out.pseudo_labels.tolist() == record["labels"]
        assert out.mask.float().tolist() == record["mask"]
        assert out.metrics["loss_u"].item() == pytest.approx(record["loss"], rel=1e-6, abs=1e-7)
    # USB's own loss (the p_hat of before the step) is a (1 - m) share away: the fixture proves the two differ
    assert FIXTURE["steps"][0]["loss_usb"] != FIXTURE["steps"][0]["loss"]


def test_frequency_estimate_by_hand():
    """m = 0.5: p_hat (0.5, 0.5) and two rows softmax (1, 0) and (0, 1) -> mean (0.5, 0.5): unchanged;
    a row softmax(ln 3, 0) = (0.75, 0.25) -> 0.5 (0.5, 0.5) + 0.5 (0.75, 0.25) = (0.625, 0.375)."""
    half = torch.tensor([0.5, 0.5])
    both = torch.tensor([[30.0, 0.0], [0.0, 30.0]])
    assert torch.allclose(update_frequency_estimate(half, both, 0.5), half)
    one = torch.tensor([[math.log(3.0), 0.0]])
    assert torch.allclose(update_frequency_estimate(half, one, 0.5), torch.tensor([0.625, 0.375]))
    assert torch.equal(update_frequency_estimate(half, one, 1.0), half)


def test_debiasing_and_loss_offset_by_hand():
    """m = 1 keeps p_hat; set p_hat = (0.8, 0.2), lambda = 0.5: equal weak logits give probabilities
    proportional to p_hat^-0.5 = (1, 2) / 3; the strong view's loss is CE((0, 0) + 0.5 log p_hat, label)."""
    algo = make(2, "algorithm.momentum=1", "algorithm.debias_strength=0.5", "algorithm.threshold=0.6")
    algo.p_hat = torch.tensor([0.8, 0.2])
    probs = algo.weak_probabilities(torch.zeros(1, 2))
    assert torch.allclose(probs, torch.tensor([[1 / 3, 2 / 3]]))
    # T = 0.5 divides the debiased logits by T: softmax(-log p_hat) = (1 / 0.8, 1 / 0.2) / 6.25 = (0.2, 0.8)
    sharp = make(2, "algorithm.momentum=1", "algorithm.debias_strength=0.5", "algorithm.temperature=0.5")
    sharp.p_hat = torch.tensor([0.8, 0.2])
    assert torch.allclose(sharp.weak_probabilities(torch.zeros(1, 2)), torch.tensor([[0.2, 0.8]]))
    out = step(algo, torch.zeros(1, 2), torch.zeros(1, 2))
    assert out.pseudo_labels.tolist() == [1] and out.mask.tolist() == [True]  # 2/3 >= 0.6
    expected = -math.log(0.2 ** 0.5 / (0.8 ** 0.5 + 0.2 ** 0.5))
    assert out.metrics["loss_u"].item() == pytest.approx(expected, rel=1e-6)


def test_no_debiasing_is_fixmatch():
    """lambda = 0 gives FixMatch's pseudo-labels, mask and loss on the same rows."""
    gen = torch.Generator().manual_seed(0)
    weak, strong = torch.randn(6, 3, generator=gen) * 4, torch.randn(6, 3, generator=gen)
    debiased = step(make(3, "algorithm.debias_strength=0", "algorithm.threshold=0.7"), weak, strong)
    fixmatch = build_algorithm(load_config(None, ["algorithm.name=fixmatch", "algorithm.threshold=0.7"]).algorithm,
                               AlgorithmContext(num_classes=3, labeled_counts=(4,) * 3, feature_dim=4, iterations=10,
                                                epoch_length=5))
    plain = step(fixmatch, weak, strong)
    assert debiased.mask.any() and not debiased.mask.all()
    assert torch.equal(debiased.mask, plain.mask) and torch.equal(debiased.pseudo_labels, plain.pseudo_labels)
    assert debiased.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)


def test_labeled_loss_is_plain_ce_and_the_state_round_trips():
    algo = make(2)
    labeled = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    out = step(algo, torch.zeros(1, 2), torch.zeros(1, 2), labeled=labeled)
    assert out.metrics["loss_x"].item() == pytest.approx(F.cross_entropy(labeled, torch.tensor([0, 1])).item())
    algo.p_hat = torch.tensor([0.7, 0.3])
    other = make(2)
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.p_hat, algo.p_hat)


def test_composes_with_the_logit_adjusted_labeled_loss():
    """fixmatch_debiaspl with logit_adjust: the labeled loss is CE(f + log pi, y) of the labeled counts."""
    config = load_config(None, ["algorithm.name=fixmatch_debiaspl", "algorithm.logit_adjust=true"])
    algo = build_algorithm(config.algorithm, AlgorithmContext(num_classes=2, labeled_counts=(3, 1), feature_dim=4,
                                                              iterations=10, epoch_length=5))
    labeled = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    out = step(algo, torch.zeros(1, 2), torch.zeros(1, 2), labeled=labeled)
    adjusted = labeled + torch.log(torch.tensor([0.75, 0.25]))
    assert out.metrics["loss_x"].item() == pytest.approx(F.cross_entropy(adjusted, torch.tensor([0, 1])).item(),
                                                         rel=1e-6)
