"""SEVAL (cissl.algorithms.seval): parity with its authors' code, hand-checked pieces, errors, a run.

The fixture (tests/reference/fixtures/seval.json) was written by tests/reference/make_fixtures.py, which
executes the authors' OptimizePi / OptimizeTH and their trainer's optimize_pi / optimize_threshold and
pseudo-label lines on fixed validation and weak-view logits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_config, uninterrupted_and_resumed
from test_training import assert_same_state

from cissl.algorithms import AlgorithmContext, ValidationPredictions
from cissl.algorithms.seval import (
    Seval,
    balanced_nll,
    fit_thresholds,
    log_softmax,
    mean_recall,
    softmax,
    weighted_precision,
)
from cissl.config import algorithm_defaults
from cissl.errors import ConfigError

FIXTURE = json.loads((Path(__file__).parent / "reference/fixtures/seval.json").read_text())


def make(num_classes=10, iterations=3000, **options) -> Seval:
    config = dataclasses.replace(algorithm_defaults("fixmatch_seval"), **options)
    context = AlgorithmContext(num_classes=num_classes, labeled_counts=tuple(range(num_classes, 0, -1)),
                               feature_dim=4, iterations=iterations, epoch_length=100)
    return Seval(config, context)


def options_of(authors: dict, k: int) -> dict:
    """The authors' trainer attributes as this implementation's config keys."""
    scale_min, scale_max, offset_min, offset_max = authors["pi_bounds"]
    return dict(objective=authors["opt_func"], scale_min=scale_min, scale_max=scale_max, offset_min=offset_min,
                offset_max=offset_max, offset_warmup=authors["pi_warmup_ratio"],
                offset_groups=0 if authors["pi_cls"] == k else authors["pi_cls"],
                threshold_groups=0 if authors["th_cls"] == k else authors["th_cls"],
                target_precision_start=authors["threshold_start"], target_precision_end=authors["threshold_end"],
                offset_decay=authors["pi_ema_decay"], threshold_decay=authors["th_ema_decay"])


# ----------------------------------------------------------------------------- parity with the authors' code
@pytest.mark.parametrize("case", sorted(FIXTURE["cases"]))
def test_fits_and_pseudo_labels_match_the_authors_code(case):
    k = FIXTURE["num_classes"]
    data = FIXTURE["cases"][case]
    method = make(k, FIXTURE["iterations"], **options_of(data["options"], k))
    labels = torch.tensor(FIXTURE["labels"])
    for fit in data["fits"]:
        logits = torch.tensor(fit["logits"], dtype=torch.float32)
        method.on_validation(fit["iteration"], ValidationPredictions({"main": logits}, labels))
        for ours, theirs in ((method.scale, "alpha"), (method.offset, "pi"), (method.scale_last, "alpha_current"),
                             (method.offset_last, "pi_current")):
            assert ours.double().numpy() == pytest.approx(fit[theirs], rel=1e-5, abs=1e-6), (fit["iteration"], theirs)
        assert method.thresholds.numpy() == pytest.approx(fit["thresholds"], rel=1e-9, abs=1e-12), fit["iteration"]
    probs = method.weak_probabilities(torch.tensor(data["weak_logits"], dtype=torch.float32))
    assert probs.double().numpy() == pytest.approx(np.array(data["probs"]), abs=1e-6)
    confidence, pseudo = probs.max(dim=1)
    assert pseudo.tolist() == data["pseudo_labels"]
    assert method.confidence_mask(confidence, pseudo).float().tolist() == data["mask"]


def test_the_fixture_exercises_every_rule():
    """Offsets that move, a rare class (its pi set to the smallest), thresholds fitted below 0.95 and
    at 0, the warm-up skipping a fit, and a mask that keeps some pseudo-labels but not all."""
    defaults, variant = FIXTURE["cases"]["defaults"], FIXTURE["cases"]["variant"]
    last = defaults["fits"][-1]
    assert max(last["pi"]) > 2 and last["pi"][-1] == pytest.approx(min(last["pi"]))
    assert any(t < 0.9 for t in last["thresholds"]) and any(0.9 < t < 0.95 for t in last["thresholds"])
    assert variant["fits"][0]["pi"] == [1.0] * 10  # fit 0 (iteration 499) is before the warm-up's end (1200)
    assert variant["fits"][-1]["alpha"] != pytest.approx([1.0] * 10)  # alpha learned within [0.5, 2]
    for case in (defaults, variant):
        assert 0 < sum(case["mask"]) < len(case["mask"])


def test_offsets_are_first_fitted_after_the_warm_up_as_in_the_authors_code():
    """The authors' optimize_pi fits when iter > int(max_iter * pi_warmup_ratio): with 3000 x 0.4, the
    validation at iteration 1200 leaves pi at 1 and the one at 1201 moves it."""
    k = FIXTURE["num_classes"]
    defaults = FIXTURE["cases"]["defaults"]
    method = make(k, FIXTURE["iterations"], **{**options_of(defaults["options"], k), "offset_warmup": 0.4})
    predictions = ValidationPredictions({"main": torch.tensor(defaults["fits"][-1]["logits"])},
                                        torch.tensor(FIXTURE["labels"]))
    method.on_validation(1200, predictions)
    assert method.offset.tolist() == [1.0] * k
    method.on_validation(1201, predictions)
    assert method.offset.tolist() != [1.0] * k


# ----------------------------------------------------------------------------- hand-checked pieces
def test_refinement_is_alpha_times_logits_minus_log_pi():
    method = make(2)
    method.scale, method.offset = torch.tensor([2.0, 1.0]), torch.tensor([4.0, 1.0])
    method._to_device()
    refined = method.refine(torch.tensor([[1.0, 1.0]]))
    assert refined[0].tolist() == pytest.approx([2 * (1 - math.log(4)), 1.0])
    probs = method.weak_probabilities(torch.tensor([[1.0, 1.0]]))
    e = math.exp(2 * (1 - math.log(4)))
    assert probs[0, 0].item() == pytest.approx(e / (e + math.e))


def test_balanced_nll_and_mean_recall_by_hand():
    logits = np.array([[0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]])
    labels = np.array([0, 0, 1])
    ones = np.ones(2)
    # class 0: log 0.5 + log 0.75 over N_0 K = 4 entries; class 1: log 0.5 over 2; mean over classes, negated
    expected = -((math.log(0.5) + math.log(0.75)) / 4 + math.log(0.5) / 2) / 2
    assert balanced_nll(logits, labels, ones, ones) == pytest.approx(expected)
    # pi = (1, 3) cancels row 1's lead: z - log pi = (log 3, -log 3) -> p_0 = 9 / 10
    shifted = -((math.log(0.75) + math.log(0.9)) / 4 + math.log(0.25) / 2) / 2
    assert balanced_nll(logits, labels, ones, np.array([1.0, 3.0])) == pytest.approx(shifted)
    # argmax ties go to class 0: recall 1 for class 0, 0 for class 1
    assert mean_recall(logits, labels, ones, ones) == pytest.approx(0.5)
    assert mean_recall(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), labels, ones, ones) == pytest.approx(0.75)


def test_a_class_without_validation_images_counts_as_the_authors_constant():
    """The authors' cal_ll scores a class without images as log-likelihood -2, cal_acc as recall 0."""
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels, ones = np.array([0, 1]), np.ones(3)
    log_p = math.log(math.e / (math.e + 2))  # each image's own class: e / (e + 1 + 1)
    expected = -(log_p / 3 + log_p / 3 - 2.0) / 3
    assert balanced_nll(logits, labels, ones, ones) == pytest.approx(expected)
    assert mean_recall(logits, labels, ones, ones) == pytest.approx(2 / 3)


def test_weighted_precision_by_hand():
    labels, predicted = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert weighted_precision(labels, predicted, np.ones(2)) == pytest.approx(3 / 4, rel=1e-5)
    assert weighted_precision(labels, predicted, np.array([1.0, 3.0])) == pytest.approx(7 / 8, rel=1e-5)
    assert weighted_precision(labels[:0], predicted[:0], np.ones(2)) == 0.0


def test_thresholds_zero_when_precise_fitted_when_not_and_rare_classes():
    """Class 0: 12 images, every prediction right -> 0. Class 1: 12 images, predicted for all 24 images
    of classes 1 and 2 (half wrong) but right ones more confident -> a threshold in (0, 1) whose
    confident predictions are precise. Class 2: never predicted -> rare (and fit 0)."""
    rows = []
    for label, predicted, confidence_logit in [(0, 0, 3.0)] * 12 + [(1, 1, 4.0)] * 12 + [(2, 1, 0.5)] * 12:
        z = np.zeros(3, dtype=np.float32)
        z[predicted] = confidence_logit
        rows.append((z, label))
    logits = np.stack([r[0] for r in rows]).astype(np.float32)
    labels = np.array([r[1] for r in rows])
    fits, rare = fit_thresholds(logits, labels, target=0.9, groups=0)
    assert fits[0] == 0.0 and rare == [2] and fits[2] == 0.0
    low, high = 1 / (1 + 2 * math.exp(-0.5)), 1 / (1 + 2 * math.exp(-4.0))  # the wrong and the right confidences
    assert 0.0 < fits[1] < 1.0
    above = logits.max(axis=1)  # the fitted threshold keeps predictions whose precision is nearest 0.9
    kept = [i for i in range(len(labels)) if logits[i].argmax() == 1 and
            np.exp(above[i]) / np.exp(logits[i]).sum() > fits[1]]
    assert all(labels[i] == 1 for i in kept) and len(kept) == 12 and low < fits[1] < high


def test_thresholds_weigh_each_image_by_the_inverse_share_of_its_class():
    """Validation with 20 images of class 0 and 10 of class 1: weights max share / share = (1, 2). Class 0
    is predicted for its 20 (confident) and for 2 images of class 1 (not): precision 20 / 22 = 0.909
    unweighted, 20 / (20 + 2 * 2) = 0.833 weighted, so against a target of 0.95 it needs a threshold, one
    between the wrong and the right confidences. Class 1's 8 other images are all right: no threshold."""
    rows = [(0, 0, 4.0)] * 20 + [(1, 0, 0.5)] * 2 + [(1, 1, 4.0)] * 8
    logits = np.zeros((len(rows), 2), dtype=np.float32)
    for i, (_, predicted, logit) in enumerate(rows):
        logits[i, predicted] = logit
    labels = np.array([label for label, _, _ in rows])
    fits, rare = fit_thresholds(logits, labels, target=0.95, groups=0)
    low, high = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(-4.0))
    assert rare == [] and fits[1] == 0.0
    assert low < fits[0] < high


@pytest.mark.parametrize("predicted_as_1, rare", [(2, [1]), (3, [])])
def test_a_group_is_rare_at_a_tenth_of_its_share_of_the_validation_mass(predicted_as_1, rare):
    """22 validation images a class (weights 1): a group's minimum mass is 44 / 2 groups / 10 = 2.2. Class 1
    predicted for 2 images (mass 2 + 1e-6) is rare; for 3, it is not (class 0 takes the rest)."""
    labels = np.array([0] * 22 + [1] * 22)
    predicted = np.zeros(44, dtype=np.int64)
    predicted[22:22 + predicted_as_1] = 1
    logits = np.eye(2, dtype=np.float32)[predicted] * 3.0
    assert fit_thresholds(logits, labels, target=0.5, groups=0)[1] == rare


def test_softmax_and_log_softmax_are_stable_row_by_row():
    """Each row shifted by its own maximum: logits of 1000 do not overflow, and a row far below another's
    maximum does not underflow to 0 / 0."""
    z = np.array([[1000.0, 999.0], [0.0, -1.0]])
    share = 1 / (1 + math.exp(-1.0))
    assert softmax(z) == pytest.approx(np.array([[share, 1 - share]] * 2))
    assert log_softmax(z) == pytest.approx(np.log(np.array([[share, 1 - share]] * 2)))


def test_threshold_groups_share_one_fit():
    gen = np.random.default_rng(0)
    logits = (gen.normal(size=(120, 4)) + np.eye(4)[np.arange(120) % 4] * 1.5).astype(np.float32)
    labels = np.arange(120) % 4
    fits, _ = fit_thresholds(logits, labels, target=0.95, groups=2)
    assert fits[0] == fits[1] and fits[2] == fits[3]


def test_mask_uses_each_predicted_classs_threshold():
    method = make(3)
    method.thresholds = torch.tensor([0.9, 0.5, 0.99], dtype=torch.float64)
    method._to_device()
    mask = method.confidence_mask(torch.tensor([0.9, 0.6, 0.6, 0.98]), torch.tensor([0, 1, 0, 2]))
    assert mask.tolist() == [True, True, False, False]


def test_state_round_trips_and_the_averages_move_by_the_decay():
    method = make(10, offset_decay=0.5, threshold_decay=0.25)
    data = FIXTURE["cases"]["defaults"]["fits"][0]
    method.on_validation(499, ValidationPredictions({"main": torch.tensor(data["logits"])},
                                                    torch.tensor(FIXTURE["labels"])))
    assert method.offset.numpy() == pytest.approx(0.5 + 0.5 * method.offset_last.numpy(), rel=1e-6)
    copy = make(10, offset_decay=0.5, threshold_decay=0.25)
    copy.load_state_dict(method.state_dict())
    for key in ("scale", "offset", "scale_last", "offset_last", "thresholds", "class_thresholds"):
        assert torch.equal(getattr(copy, key), getattr(method, key))


# ----------------------------------------------------------------------------- errors
def test_bounds_and_groups_are_checked():
    with pytest.raises(ConfigError, match=r"^config key 'algorithm.offset_min': must be <= algorithm.offset_max"):
        tiny_config("data.val_per_class=2", "algorithm.offset_min=4", algorithm="fixmatch_seval")
    with pytest.raises(ConfigError, match=r"^config key 'algorithm.threshold_groups': 3 groups do not divide the "
                                          r"10 classes$"):
        make(10, threshold_groups=3)
    with pytest.raises(ConfigError, match=r"^config key 'algorithm.offset_groups': 4 groups do not divide the "
                                          r"10 classes$"):
        make(10, offset_groups=4)
    with pytest.raises(ConfigError, match="data.val_per_class"):
        tiny_config(algorithm="fixmatch_seval")


def test_missing_scipy_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    with pytest.raises(ConfigError, match=r"pip install 'cissl\[seval\]'"):
        make(10)


# ----------------------------------------------------------------------------- in a run
def test_a_run_fits_on_the_validation_split_and_resumes_exactly(tmp_path):
    overrides = ["data.val_per_class=10", "data.labeled_head=30", "algorithm.fit_every=4", "algorithm.offset_decay=0.5",
                 "algorithm.threshold_decay=0.5", "algorithm.threshold=0.5", "train.iterations=12",
                 "train.checkpoint_every=4", "train.eval_every=4"]
    config = tiny_config(*overrides, algorithm="fixmatch_seval")
    whole, resumed = uninterrupted_and_resumed(config, tmp_path, 12)  # cut after iteration 8
    assert not torch.equal(whole["algorithm"]["offset"], torch.ones(10))  # three fits happened
    assert not torch.equal(whole["algorithm"]["thresholds"], torch.full((10,), 0.5, dtype=torch.float64))
    assert_same_state(whole, resumed)
