"""ACR: parity with the authors' step and tau1 update over three epochs; the estimate's two modes; masks
and composition by hand; state; the balanced head is reported."""

import json

import pytest
import torch
from conftest import REPO
from helpers import id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.acr import adaptive_tau, class_vector, symmetric_kl
from cissl.algorithms.base import run_hooks
from cissl.algorithms.components.logit_adjust import class_prior, logit_adjustment
from cissl.config import load_config
from cissl.models import ModelOutput

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "acr.json").read_text())


class TwoHeadTable(torch.nn.Module):
    """Logits of the main and balanced heads looked up by the id in each image's first pixel."""

    def __init__(self, main, balanced):
        super().__init__()
        self.main, self.balanced = torch.nn.Parameter(main), torch.nn.Parameter(balanced)

    def forward(self, x):
        rows = x[:, 0, 0, 0].round().long()
        return ModelOutput(self.main[rows], {"main": self.main[rows], "balanced": self.balanced[rows]})


def tables(step):
    t = {key: torch.tensor(value, dtype=torch.float32) for key, value in step.items() if key.startswith("logits")}
    main = torch.cat([t["logits_x"], t["logits_u_w"], t["logits_u_s"], t["logits_u_s1"]])
    balanced = torch.cat([t["logits_x_b"], t["logits_u_w_b"], t["logits_u_s_b"], t["logits_u_s1_b"]])
    b, bu = len(t["logits_x"]), len(t["logits_u_w"])
    batch = Batch(x=id_images(range(b)), y=torch.tensor(step["targets_x"]).long(), u_weak=id_images(range(b, b + bu)),
                  u_strong=(id_images(range(b + bu, b + 2 * bu)), id_images(range(b + 2 * bu, b + 3 * bu))))
    return TwoHeadTable(main, balanced), batch


def acr(*overrides, counts=None, epoch_length=None, iterations=9):
    config = load_config(None, ["algorithm.name=acr", *overrides])
    counts = counts or tuple(FIXTURE["labeled_counts"])
    context = AlgorithmContext(num_classes=len(counts), labeled_counts=counts, feature_dim=4, iterations=iterations,
                               epoch_length=epoch_length or FIXTURE["epoch_length"])
    return build_algorithm(config.algorithm, context)


def test_steps_and_adaptive_tau_match_the_authors_code():
    """Nine steps, three epochs of three; estimation from epoch 1 (est_epoch 0): the losses, u, the KL sums
    and the adjustment each step used, as ACR's train.py computes them (tests/reference/make_fixtures.py)."""
    algo = acr(f"algorithm.threshold={FIXTURE['threshold']}", f"algorithm.est_epoch={FIXTURE['est_epoch']}",
               f"algorithm.ema_u={FIXTURE['ema_u']}")
    for t, step in enumerate(FIXTURE["steps"]):
        used = torch.tensor(step["adjustment_l1"], dtype=torch.float64)
        assert torch.allclose(algo.adjustment(algo.tau1).double(), used, atol=1e-6)
        model, batch = tables(step)
        out = algo.step(model, batch, t)
        assert out.loss.item() == pytest.approx(step["loss"], rel=1e-5)
        assert out.metrics["loss_u"].item() == pytest.approx(step["Lu"], rel=1e-5, abs=1e-7)
        assert out.metrics["loss_u_bal"].item() == pytest.approx(step["Lu_b"], rel=1e-5, abs=1e-7)
        assert out.metrics["loss_x_bal"].item() == pytest.approx(step["Lx_b"], rel=1e-5)
        assert torch.allclose(algo.estimate, torch.tensor(step["u_py"], dtype=torch.float64), atol=1e-6)
        assert torch.allclose(algo.kl_sums, torch.tensor(step["count_KL"], dtype=torch.float64), atol=1e-5)
        run_hooks(algo, t, FIXTURE["epoch_length"])
    # the first update came from an epoch without estimation: tau1 = 2 / 3
    assert FIXTURE["steps"][3]["adjustment_l1"][0] == pytest.approx(
        logit_adjustment(class_prior(FIXTURE["labeled_counts"]), 2 / 3)[0].item(), rel=1e-6)


def test_class_vector_indicator_as_acr_writes_it_and_counts():
    labels = torch.tensor([0, 2, 0, 2, 1])
    mask = torch.tensor([True, True, False, True, False])
    # indicator: class 0's last row (2) is unmasked -> 0; class 2's last (3) masked -> 1; class 1 -> 0
    assert class_vector(labels, mask, 4, "indicator").tolist() == [0.0, 0.0, 1.0, 0.0]
    assert class_vector(labels, mask, 4, "counts").tolist() == [1.0, 0.0, 2.0, 0.0]
    # what ACR's line computes on the CPU
    reference = torch.zeros(4)
    reference[labels] += mask.float()
    assert class_vector(labels, mask, 4, "indicator").tolist() == reference.tolist()


def test_adaptive_tau_and_kl_by_hand():
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.75, 0.25], dtype=torch.float64)
    by_hand = 0.5 * (0.5 * torch.log(p / q)).sum() + 0.5 * (q * torch.log(q / p)).sum()
    assert symmetric_kl(p, q).item() == pytest.approx(by_hand.item())
    sums = torch.tensor([3.0, 0.0, 6.0], dtype=torch.float64)  # / 3 steps -> (1, 0, 2)
    expected = 2.0 * torch.exp(torch.tensor(1.0)) / (torch.exp(torch.tensor(1.0)) + 1 + torch.exp(torch.tensor(2.0)))
    assert adaptive_tau(sums, 3, 2.0).item() == pytest.approx(expected.item())


def test_masks_or_their_two_confidences_and_the_loss_is_the_sum_of_four_terms():
    """Counts (3, 1), tau 0.9, one unlabeled image, one strong view. Weak main logits (0, 2): raw confidence
    softmax = .881 < .9, adjusted by A_2 = log(.5625, .0625) -> (0 - log .5625, 2 - log .0625) -> class 1 at .98:
    both branches use class 1 (h = p with tau12 = tau1), the standard mask from p, the balanced from h."""
    algo = acr("algorithm.threshold=0.9", "algorithm.adaptive=false", counts=(3, 1), epoch_length=1, iterations=1)
    main = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.3, 0.1]])
    balanced = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.2, 0.4]])
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1]), u_strong=(id_images([2]),))
    out = algo.step(TwoHeadTable(main, balanced), batch, 0)
    adjust = logit_adjustment(class_prior([3, 1]), 2.0)
    assert torch.softmax(main[1], 0).max() < 0.9 and torch.softmax(main[1] - adjust, 0).max() > 0.9
    assert out.mask.tolist() == [True] and out.pseudo_labels.tolist() == [1]
    ce = torch.nn.functional.cross_entropy
    terms = [ce(main[:1], torch.tensor([0])), ce(main[2:], torch.tensor([1])),
             ce(balanced[:1] + adjust, torch.tensor([0])), ce(balanced[2:], torch.tensor([1]))]
    assert out.loss.item() == pytest.approx(sum(t.item() for t in terms), rel=1e-6)
    algo_low = acr("algorithm.threshold=0.99", "algorithm.adaptive=false", counts=(3, 1), epoch_length=1,
                   iterations=1)
    assert algo_low.step(TwoHeadTable(main, balanced), batch, 0).mask.tolist() == [False]


def test_no_estimation_before_est_epoch_and_state_round_trip():
    algo = acr("algorithm.est_epoch=1", "algorithm.threshold=0.0")
    step = FIXTURE["steps"][0]
    model, batch = tables(step)
    for t in range(3):  # epoch 0 and... epoch 1 is not > est_epoch either
        algo.step(model, batch, t)
    assert torch.equal(algo.estimate, torch.full((4,), 0.25, dtype=torch.float64))
    algo.step(model, batch, 6)  # epoch 2 > 1: estimation runs
    assert not torch.equal(algo.estimate, torch.full((4,), 0.25, dtype=torch.float64))
    other = acr("algorithm.est_epoch=1")
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.estimate, algo.estimate) and torch.equal(other.kl_sums, algo.kl_sums)
    assert algo.reported_head == "balanced" and type(algo).required_heads(algo.config) == ("main", "balanced")


def test_temperature_and_inclusive_thresholds():
    """T = 0.5 sharpens both branches' pseudo-labels; a confidence equal to tau is kept (>=)."""
    main = torch.tensor([[1.0, 0.0], [0.0, 0.7], [0.3, 0.1]])
    balanced = torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.2, 0.4]])
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1]), u_strong=(id_images([2]),))
    model = TwoHeadTable(main, balanced)
    raw_sharp = torch.softmax(main[1] / 0.5, 0).max().item()  # 0.80 at T = 0.5, 0.67 at T = 1
    algo = acr("algorithm.adaptive=false", f"algorithm.threshold={raw_sharp}", "algorithm.temperature=0.5",
               "algorithm.tau1=0", "algorithm.tau12=0", counts=(3, 1), epoch_length=1, iterations=1)
    out = algo.step(model, batch, 0)
    assert out.mask.tolist() == [True] and out.metrics["mask_rate_bal"].item() == 1.0
    assert out.metrics["confidence"].item() == pytest.approx(raw_sharp, rel=1e-6)
    assert set(out.metrics) == {"loss_x", "loss_u", "loss_x_bal", "loss_u_bal", "mask_rate", "mask_rate_bal",
                                "confidence", "tau1"}
    plain = acr("algorithm.adaptive=false", f"algorithm.threshold={raw_sharp}", "algorithm.tau1=0",
                "algorithm.tau12=0", counts=(3, 1), epoch_length=1, iterations=1)
    assert plain.step(model, batch, 0).mask.tolist() == [False]


def test_estimate_update_skips_empty_steps_and_follows_the_mode():
    algo = acr("algorithm.ema_u=0.5", counts=(3, 1), epoch_length=1, iterations=10)
    start = algo.estimate.clone()
    algo._update_estimate(torch.zeros(2))  # no confident balanced pseudo-label: nothing changes
    assert torch.equal(algo.estimate, start) and torch.equal(algo.kl_sums, torch.zeros(3, dtype=torch.float64))
    algo._update_estimate(torch.tensor([1.0, 0.0]))  # a vector summing to exactly 1 counts
    assert torch.allclose(algo.estimate, torch.tensor([0.75, 0.25], dtype=torch.float64))
    # the step passes the configured mode: counts (2, 1) -> u = 0.5 * 0.5 + 0.5 * (2/3, 1/3)
    counted = acr("algorithm.ema_u=0.5", "algorithm.estimate=counts", "algorithm.est_epoch=0",
                  "algorithm.threshold=0.5", counts=(3, 1), epoch_length=1, iterations=10)
    main = torch.zeros(5, 2)
    balanced = torch.tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1, 2, 3]), u_strong=(id_images([4, 4, 4]),))
    counted.step(TwoHeadTable(main, balanced), batch, 1)
    assert torch.allclose(counted.estimate, torch.tensor([0.25 + 1 / 3, 0.25 + 1 / 6], dtype=torch.float64))


def test_tau1_updates_only_when_adaptive_and_after_est_epoch():
    algo = acr("algorithm.est_epoch=1", counts=(3, 1), epoch_length=1, iterations=10)
    algo.on_epoch_end(0)  # the next epoch (1) is not after est_epoch
    assert algo.tau1.item() == 2.0
    algo.on_epoch_end(1)  # epoch 2 > 1: tau1 from the (zero) KL sums -> 2 / 3
    assert algo.tau1.item() == pytest.approx(2 / 3)
    fixed = acr("algorithm.adaptive=false", "algorithm.est_epoch=0", counts=(3, 1), epoch_length=1, iterations=10)
    fixed.on_epoch_end(5)
    assert fixed.tau1.item() == 2.0


def test_unadjusted_confidence_at_tau_keeps_an_image_the_adjusted_one_drops():
    """Counts (3, 1), tau1 = 2: weak main logits (2.2, 0) give r = 0.900 for class 0 but p close to (0.5, 0.5);
    with tau equal to r the OR term on r keeps the image (>=)."""
    main = torch.tensor([[1.0, 0.0], [2.2, 0.0], [0.3, 0.1]])
    balanced = torch.zeros(3, 2)
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1]), u_strong=(id_images([2]),))
    r = torch.softmax(main[1], 0).max().item()
    algo = acr("algorithm.adaptive=false", f"algorithm.threshold={r}", counts=(3, 1), epoch_length=1, iterations=1)
    out = algo.step(TwoHeadTable(main, balanced), batch, 0)
    assert out.metrics["confidence"].item() < r and out.mask.tolist() == [True]
