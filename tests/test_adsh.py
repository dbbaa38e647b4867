"""ADSH: parity with USB's thresholds and masks, the authors' rule by hand, the majority class, state."""

import json
import math

import pytest
import torch
from conftest import REPO

from cissl.algorithms import AlgorithmContext, PoolPredictions, build_algorithm
from cissl.algorithms.adsh import Adsh, authors_thresholds, sorted_confidences, usb_scores
from cissl.config import load_config

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "adsh.json").read_text())


def make(counts, *overrides):
    config = load_config(None, ["algorithm.name=fixmatch_adsh", *overrides])
    context = AlgorithmContext(num_classes=len(counts), labeled_counts=tuple(counts), feature_dim=4, iterations=10,
                               epoch_length=5)
    return build_algorithm(config.algorithm, context)


def pool(logits):
    return PoolPredictions({"main": torch.as_tensor(logits, dtype=torch.float32)}, torch.zeros(len(logits), 4))


def masks(algo, probs):
    confidence, labels = probs.max(1)
    return algo.confidence_mask(confidence, labels).float().tolist()


def hand_lists():
    """C_0 .. C_3 of the hand-checked cases (class 3 never predicted)."""
    values = ([0.99, 0.97, 0.9, 0.5], [0.8, 0.6, 0.4, 0.2], [0.7, 0.3], [])
    return [torch.tensor(v, dtype=torch.float64) for v in values]


@pytest.mark.parametrize("case", range(4))
def test_thresholds_and_masks_match_usb(case):
    """A confident head; a class predicted once; no head prediction at tau_1; index -1 and an empty class."""
    record = FIXTURE["cases"][case]
    algo = make([8, 4, 2, 1], f"algorithm.threshold={FIXTURE['tau_1']}")
    assert Adsh.pool_each_epoch(algo.config)
    probs = torch.tensor(record["probs"], dtype=torch.float32)
    assert masks(algo, probs) == record["mask_before"]  # thresholds exp(-tau_1) before the first update
    algo.on_epoch_pool(0, pool(record["pool_logits"]))
    assert torch.allclose(-torch.log(algo.thresholds), torch.tensor(record["scores"], dtype=torch.float64), atol=1e-6)
    assert masks(algo, probs) == record["mask_after"]


def test_usb_rule_by_hand():
    """Majority list (0.99, 0.97, 0.9, 0.5): m = 2 at tau 0.95, rho = 1/4. Class 1 (0.8, 0.6, 0.4, 0.2):
    floor(4/4) - 1 = 0 -> 0.8; class 2 (0.7, 0.3): floor(0.5) - 1 = -1 -> the last, 0.3; class 0 itself:
    floor(1) - 1 = 0 -> 0.99; class 3 empty: unchanged. No majority entry at tau: rho = 1, each class's last."""
    lists = hand_lists()
    scores = usb_scores(lists, torch.full((4,), 0.95, dtype=torch.float64), 0.95, majority=0)
    assert torch.allclose(scores, -torch.log(torch.tensor([0.99, 0.8, 0.3, math.exp(-0.95)], dtype=torch.float64)))
    low = usb_scores(lists, torch.zeros(4, dtype=torch.float64), 0.999, majority=0)
    assert torch.allclose(low[:3], -torch.log(torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)))


def test_authors_rule_by_hand():
    """Same lists: m = 2, rho = 2/4. Class 1: round(2 - 1) = 1 -> 0.6; class 2: round(1 - 1) = 0 -> 0.7; the
    majority class keeps tau; every threshold at most tau (class 1 with (0.99, 0.98) would give 0.95)."""
    lists = hand_lists()
    start = torch.full((4,), 0.95, dtype=torch.float64)
    assert authors_thresholds(lists, start, 0.95, majority=0).tolist() == pytest.approx([0.95, 0.6, 0.7, 0.95])
    lists[1] = torch.tensor([0.99, 0.98], dtype=torch.float64)
    assert authors_thresholds(lists, start, 0.95, majority=0)[1].item() == pytest.approx(0.95)
    algo = make([8, 4, 2, 1], "algorithm.rule=authors")
    assert torch.allclose(algo.thresholds, torch.full((4,), 0.95, dtype=torch.float64))


def test_majority_class_is_the_most_labeled_one():
    """With the head at index 2 its list sets rho; ties go to the lower index."""
    algo = make([1, 2, 8, 4])
    assert algo.majority == 2 and make([3, 5, 5]).majority == 1
    # pool: class 2 confident twice of four, class 0 (0.8, 0.6)
    logits = torch.log(torch.tensor([[0.01, 0.01, 0.97, 0.01], [0.01, 0.01, 0.96, 0.02], [0.1, 0.1, 0.7, 0.1],
                                     [0.1, 0.1, 0.6, 0.2], [0.8, 0.1, 0.05, 0.05], [0.6, 0.2, 0.1, 0.1]]))
    algo.on_epoch_pool(0, pool(logits))
    lists = sorted_confidences(torch.softmax(logits.double(), 1))
    assert torch.allclose(-torch.log(algo.thresholds), usb_scores(lists, torch.full((4,), 0.95, dtype=torch.float64),
                                                                   0.95, majority=2))
    # rho = (2 - 1) / 4 from class 2's list; class 0 (0.8, 0.6): floor(2 / 4) - 1 = -1 -> its last entry
    assert algo.thresholds[0].item() == pytest.approx(0.6)


def test_state_round_trip():
    algo = make([8, 4, 2, 1])
    algo.on_epoch_pool(0, pool(FIXTURE["cases"][0]["pool_logits"]))
    other = make([8, 4, 2, 1])
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.thresholds, algo.thresholds) and torch.equal(other.class_thresholds, algo.class_thresholds)
    assert not torch.equal(other.thresholds, make([8, 4, 2, 1]).thresholds)


def test_boundaries_are_inclusive():
    """A majority confidence equal to tau_1 counts as at or above it (both rules); a confidence equal to
    its class's threshold passes the mask."""
    lists = [torch.tensor([0.95, 0.9], dtype=torch.float64), torch.tensor([0.8, 0.6], dtype=torch.float64)]
    start = torch.full((2,), 0.95, dtype=torch.float64)
    # usb: m = 1 -> rho = 0 -> index -1 for both; with m = 0 rho would be 1 and give the same, so check class 0
    # through the authors' rule: m = 1 -> rho = 1/2 -> class 1 index round(0) = 0 -> 0.8 (m = 0 would give 0.6)
    assert authors_thresholds(lists, start, 0.95, majority=0)[1].item() == pytest.approx(0.8)
    lists[0] = torch.tensor([0.99, 0.95, 0.9, 0.5], dtype=torch.float64)  # usb: m = 2 -> rho = 1/4 (m = 1: 0)
    lists[1] = torch.tensor([0.8, 0.6, 0.4, 0.2], dtype=torch.float64)
    assert math.exp(-usb_scores(lists, start, 0.95, majority=0)[1].item()) == pytest.approx(0.8)
    algo = make([2, 1])
    algo.class_thresholds = torch.tensor([0.5, 0.9])
    assert algo.confidence_mask(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])).tolist() == [True, False]


def test_authors_rule_without_a_confident_majority_takes_each_class_last():
    """No majority entry reaches tau: rho = 1, so round(n_k - 1) is each list's last entry (capped at tau)."""
    lists = [torch.tensor([0.9, 0.8], dtype=torch.float64), torch.tensor([0.7, 0.6, 0.3], dtype=torch.float64)]
    start = torch.full((2,), 0.95, dtype=torch.float64)
    assert authors_thresholds(lists, start, 0.95, majority=0).tolist() == pytest.approx([0.95, 0.3])


def test_the_step_masks_each_pseudo_label_at_its_own_class_threshold():
    """Through FixMatch's step: two weak views with confidence 0.6, one predicted 0 (threshold 0.5), one
    predicted 1 (threshold 0.9): only the first is used."""
    from helpers import FixedLogitsModel, id_images

    from cissl.algorithms import Batch

    algo = make([2, 1])
    algo.class_thresholds = torch.tensor([0.5, 0.9])
    p = math.log(0.6 / 0.4)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [p, 0.0], [0.0, p], [0.0, 0.0], [0.0, 0.0]])
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2, 3]), u_strong=(id_images([4, 5]),))
    out = algo.step(FixedLogitsModel(table), batch, 0)
    assert out.pseudo_labels.tolist() == [0, 1] and out.mask.tolist() == [True, False]


def test_the_authors_rule_refits_at_each_pool_from_the_tempered_predictions():
    """rule=authors through on_epoch_pool: the thresholds are authors_thresholds of the pool's confidence
    lists at the config's temperature, from the previous thresholds; masks then use them per class."""
    algo = make([8, 4, 2, 1], "algorithm.rule=authors", "algorithm.temperature=2.0")
    logits = torch.log(torch.tensor([[0.97, 0.01, 0.01, 0.01], [0.90, 0.05, 0.03, 0.02], [0.2, 0.6, 0.1, 0.1],
                                     [0.1, 0.1, 0.2, 0.6], [0.6, 0.3, 0.05, 0.05]]))
    start = algo.thresholds.clone()
    algo.on_epoch_pool(0, pool(logits))
    lists = sorted_confidences(torch.softmax(logits.double() / 2.0, dim=1))
    expected = authors_thresholds(lists, start, 0.95, majority=0)
    assert torch.equal(algo.thresholds, expected) and torch.equal(algo.class_thresholds, expected.float())
    assert not torch.equal(expected, start)  # the refit moved some threshold
    assert not torch.equal(expected, authors_thresholds(sorted_confidences(torch.softmax(logits.double(), 1)), start,
                                                        0.95, majority=0))  # the temperature matters here
