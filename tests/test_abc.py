"""ABC: parity with USB's loss for given masks, soft targets by hand, mask rates and schedule, head, state."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from helpers import FixedLogitsModel, id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.abc_head import AbcConfig, AbcHead, abc_loss, balanced_keep_rates, unlabeled_keep_rates
from cissl.algorithms.components.views import forward_views
from cissl.config import load_config

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "abc.json").read_text())


def t(key):
    return torch.tensor(FIXTURE[key], dtype=torch.float32)


def test_keep_rates_match_usb():
    """Labeled: N_min / N_y; unlabeled at epoch 3 of 10: 1 - 0.3 (1 - N_min / N_c) of the head's argmax c."""
    keep = balanced_keep_rates(FIXTURE["labeled_counts"])
    assert torch.allclose(keep[torch.tensor(FIXTURE["labels"])], t("labeled_rates"))
    rates = unlabeled_keep_rates(keep, FIXTURE["epoch"] / FIXTURE["epochs"])
    assert torch.allclose(rates[t("weak_logits").argmax(1)], t("unlabeled_rates"))


def test_hard_target_loss_matches_usb_for_the_same_masks():
    weak = torch.softmax(t("weak_logits"), 1)
    unlabeled_mask = (weak.max(1).values >= FIXTURE["threshold"]).float() * t("unlabeled_bernoulli")
    labeled, unlabeled = abc_loss(t("labeled_logits"), torch.tensor(FIXTURE["labels"]), t("labeled_mask"), weak,
                                  [torch.tensor(s) for s in FIXTURE["strong_logits"]], unlabeled_mask,
                                  soft_targets=False)
    assert (labeled + unlabeled).item() == pytest.approx(FIXTURE["loss"], rel=1e-6)


def test_soft_targets_by_hand():
    """Two unlabeled images, one strong view; mask (1, 0): the loss is -sum_k q_0k log s_0k / 2."""
    q = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    strong = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labeled_logits = torch.tensor([[2.0, 0.0]])
    labeled, unlabeled = abc_loss(labeled_logits, torch.tensor([1]), torch.tensor([1.0]), q, [strong, strong],
                                  torch.tensor([1.0, 0.0]))
    assert labeled.item() == pytest.approx(F.cross_entropy(labeled_logits, torch.tensor([1])).item())
    log_s = torch.log_softmax(strong[0], 0)
    by_hand = -(0.7 * log_s[0] + 0.3 * log_s[1]).item() / 2
    assert unlabeled.item() == pytest.approx(2 * by_hand, rel=1e-6)  # summed over the two strong views
    hard = abc_loss(labeled_logits, torch.tensor([1]), torch.tensor([0.0]), q, [strong], torch.tensor([1.0, 0.0]),
                    soft_targets=False)
    assert hard[0].item() == 0.0 and hard[1].item() == pytest.approx(-log_s[0].item() / 2, rel=1e-6)


def context(counts=(8, 2), iterations=100, epoch_length=10):
    return AlgorithmContext(num_classes=len(counts), labeled_counts=counts, feature_dim=2, iterations=iterations,
                            epoch_length=epoch_length, unlabeled_pool_size=8)


def run_head(head, table, iteration=0, y=(0, 1), weak=(2,), strong=(3,)):
    model = FixedLogitsModel(table, heads=("main", "abc"))
    batch = Batch(x=id_images(list(range(len(y)))), y=torch.tensor(y), u_weak=id_images(list(weak)),
                  u_strong=(id_images(list(strong)),))
    return head.loss(model, forward_views(model, batch), batch, None, iteration)


def test_masks_follow_the_rates_threshold_and_schedule():
    """Counts (8, 2): labeled class 0 kept with probability 1/4, class 1 always. Unlabeled images predicted
    class 0: kept always at epoch 0, with 1 - (5/10)(3/4) = 0.625 at epoch 5; never under the threshold."""
    head = AbcHead(AbcConfig(), context())
    sure0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 0.0], [0.0, 1.0]])
    kept = [run_head(head, sure0, y=(1,))[1]["abc_mask_rate"].item() for _ in range(50)]
    assert kept == [1.0] * 50
    rates = [run_head(head, sure0, iteration=55)[1]["abc_mask_rate"].item() for _ in range(2000)]
    assert abs(sum(rates) / len(rates) - 0.625) < 0.04
    unsure = sure0.clone()
    unsure[2] = torch.tensor([1.0, 0.0])
    assert run_head(head, unsure)[1]["abc_mask_rate"].item() == 0.0
    labeled_kept = []
    for _ in range(2000):
        before = head.generator.get_state()
        loss, _ = run_head(head, unsure, y=(0,))
        labeled_kept.append(loss.item() > 0)
    assert abs(sum(labeled_kept) / len(labeled_kept) - 0.25) < 0.04
    assert not torch.equal(before, head.generator.get_state())


def test_head_is_reported_and_required():
    config = load_config(None, ["algorithm.name=fixmatch_abc"])
    algo = build_algorithm(config.algorithm, context())
    assert type(algo).required_heads(config.algorithm) == ("main", "abc")
    assert algo.reported_head == "abc"


def test_generator_state_round_trip():
    head = AbcHead(AbcConfig(), context())
    torch.bernoulli(torch.full((5,), 0.5), generator=head.generator)
    state = head.state_dict()
    other = AbcHead(AbcConfig(), context())
    other.load_state_dict(state)
    draw = torch.bernoulli(torch.full((20,), 0.5), generator=head.generator)
    assert torch.equal(torch.bernoulli(torch.full((20,), 0.5), generator=other.generator), draw)


def test_abc_with_daso_targets_come_from_the_refiners_blend():
    config = load_config(None, ["algorithm.name=fixmatch_abc_daso", "algorithm.refiner.pretrain_fraction=0.0",
                                "algorithm.refiner.dist_aware=false", "algorithm.refiner.interp_alpha=1.0",
                                "algorithm.aux_head.threshold=0.0"])
    algo = build_algorithm(config.algorithm, context())
    assert algo.aux_head.refiner is algo.refiner
    calls = []
    original = algo.refiner.refine_auxiliary
    algo.refiner.refine_auxiliary = lambda probs: calls.append(probs) or original(probs)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    model = FixedLogitsModel(table, feature_dim=2, heads=("main", "abc"))
    algo.ema_model = model
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2]), u_strong=(id_images([3]),),
                  u_index=torch.tensor([0]))
    algo.step(model, batch, 0)
    assert len(calls) == 1 and torch.allclose(calls[0], torch.softmax(table[2:3], 1))
    config_off = load_config(None, ["algorithm.name=fixmatch_abc_daso", "algorithm.aux_head.refined_targets=false"])
    assert not config_off.algorithm.aux_head.refined_targets


def test_head_loss_draws_from_its_own_generator_and_adds_both_terms():
    """The step's masks are the head's own Bernoulli draws (labeled first, then unlabeled) from a generator
    seeded by the run; the loss is weight * (labeled + unlabeled) with soft targets by default."""
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [6.0, 0.0], [0.5, 1.5]])
    for soft in (True, False):
        head = AbcHead(AbcConfig(soft_targets=soft, loss_weight=0.5), context())
        state = torch.get_rng_state()
        loss, metrics = run_head(head, table, iteration=55, y=(0, 1))
        assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
        replica = torch.Generator().manual_seed(head.context.seed)
        keep = balanced_keep_rates((8, 2))
        labeled_mask = torch.bernoulli(keep[torch.tensor([0, 1])], generator=replica)
        probs = torch.softmax(table[2:3], 1)
        rates = unlabeled_keep_rates(keep, 5 / 10)[probs.argmax(1)]
        unlabeled_mask = (probs.max(1).values >= 0.95).float() * torch.bernoulli(rates, generator=replica)
        labeled, unlabeled = abc_loss(table[:2], torch.tensor([0, 1]), labeled_mask, probs, [table[3:4]],
                                      unlabeled_mask, soft_targets=soft)
        assert loss.item() == pytest.approx(0.5 * (labeled + unlabeled).item(), rel=1e-6)
        assert set(metrics) == {"loss_abc", "abc_mask_rate"}
        assert metrics["loss_abc"].item() == pytest.approx((labeled + unlabeled).item(), rel=1e-6)


def test_schedule_counts_whole_epochs_of_the_run():
    """25 steps in epochs of 10: the run has 2 whole epochs, so epoch 1 is halfway (keep rate 1 - 0.5 (1 - 1/4))."""
    head = AbcHead(AbcConfig(), context(iterations=25, epoch_length=10))
    assert head.epochs == 2
    sure0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 0.0], [0.0, 1.0]])
    rates = [run_head(head, sure0, iteration=15)[1]["abc_mask_rate"].item() for _ in range(2000)]
    assert abs(sum(rates) / len(rates) - 0.625) < 0.04


def test_threshold_is_inclusive_and_a_run_shorter_than_two_epochs_has_one():
    sure0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 0.0], [0.0, 1.0]])
    at = torch.softmax(sure0[2], 0).max().item()
    head = AbcHead(AbcConfig(threshold=at), context())
    assert run_head(head, sure0)[1]["abc_mask_rate"].item() == 1.0  # confidence == tau is kept (epoch 0: rate 1)
    # 15 steps in epochs of 10: one whole epoch, so step 12 (epoch 1) is at progress 1: class 0 kept at 1/4
    short = AbcHead(AbcConfig(), context(iterations=15, epoch_length=10))
    rates = [run_head(short, sure0, iteration=12)[1]["abc_mask_rate"].item() for _ in range(2000)]
    assert abs(sum(rates) / len(rates) - 0.25) < 0.04
