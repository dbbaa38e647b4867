"""CoSSL (cissl.algorithms.cossl): parity with its authors' code, hand-checked pieces, the engine's
class-balanced labeled view and stage hook, a run that resumes bit for bit.

The fixture (tests/reference/fixtures/cossl.json) was written by tests/reference/make_fixtures.py, which
executes the authors' weight imprinting, TFE and classifier training (utils/tfe_init.py) and the
co-learning block of train_cifar_fix_cossl.py on fixed embeddings, recording their random draws.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config, uninterrupted_and_resumed
from test_training import assert_same_state

from cissl.algorithms.components.pseudo_label import threshold_pseudo_labels
from cissl.algorithms.cossl import (
    beta_draws,
    default_linear,
    imprinted_probabilities,
    tfe_features,
    tfe_mix,
    train_classifier,
    warmup_batches,
)
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.run import start_run
from cissl.engine.trainer import Trainer
from cissl.evaluation.evaluate import predict_with_features

FIXTURE = json.loads((Path(__file__).parent / "reference/fixtures/cossl.json").read_text())


def tensor(key, dtype=torch.float32):
    return torch.tensor(FIXTURE[key], dtype=dtype)


# ----------------------------------------------------------------------------- parity with the authors' code
def test_imprinted_probabilities_match_the_authors_weight_imprint():
    labeled, labels, pool = tensor("labeled_features"), tensor("labels", torch.long), tensor("pool_features")
    k = len(FIXTURE["counts"])
    assert imprinted_probabilities(labeled, labels, labeled, k).numpy() == pytest.approx(
        tensor("imprinted_labeled").numpy(), abs=1e-6)
    assert imprinted_probabilities(labeled, labels, pool, k).numpy() == pytest.approx(
        tensor("imprinted_pool").numpy(), abs=1e-6)


def test_tfe_features_match_the_authors_tfe_given_their_draws():
    counts = FIXTURE["counts"]
    short = [c for c, n in enumerate(counts) if n < max(counts)]  # the classes TFE fills up, in order
    draws = {c: (torch.tensor(FIXTURE["choices"][i]), torch.tensor(FIXTURE["lambdas"][i], dtype=torch.float64))
             for i, c in enumerate(short)}
    features, labels = tfe_features(tensor("labeled_features"), tensor("labels", torch.long), tensor("pool_features"),
                                    tensor("imprinted_labeled"), tensor("imprinted_pool"), draws)
    assert labels.tolist() == FIXTURE["tfe_labels"]
    assert features.numpy() == pytest.approx(tensor("tfe_features").numpy(), abs=1e-6)
    # every class now has N_max embeddings
    assert torch.bincount(labels).tolist() == [max(counts)] * len(counts)


def test_classifier_training_matches_the_authors_adam_and_average():
    initial = {name: torch.tensor(value) for name, value in FIXTURE["initial"].items()}
    batches = [torch.tensor(rows) for rows in FIXTURE["batches"]]
    weights, average = train_classifier(tensor("tfe_features"), torch.tensor(FIXTURE["tfe_labels"]), initial,
                                        batches, FIXTURE["lr"], FIXTURE["weight_decay"], FIXTURE["ema_decay"])
    for name in ("weight", "bias"):
        assert weights[name].numpy() == pytest.approx(torch.tensor(FIXTURE["trained"][name]).numpy(), abs=1e-6)
        assert average[name].numpy() == pytest.approx(torch.tensor(FIXTURE["trained_ema"][name]).numpy(), abs=1e-6)
    assert not torch.allclose(weights["weight"], initial["weight"])  # it learned


def test_colearning_pseudo_labels_tfe_and_teacher_loss_match_the_authors_step():
    b = len(FIXTURE["step_labels"])
    table = tensor("step_features")
    teacher = torch.nn.Linear(table.shape[1], len(FIXTURE["counts"]))
    teacher.load_state_dict({name: torch.tensor(value) for name, value in FIXTURE["teacher"].items()})
    with torch.no_grad():
        _, labels, mask = threshold_pseudo_labels(torch.softmax(teacher(table[:b]), dim=1), FIXTURE["tau"])
    assert labels.tolist() == FIXTURE["pseudo_labels"] and mask.float().tolist() == FIXTURE["mask"]
    step_labels = torch.tensor(FIXTURE["step_labels"])
    mix_prob = torch.tensor(FIXTURE["mix_prob"])
    draws = torch.tensor(FIXTURE["random"])
    uniform = iter(value[0] for value in FIXTURE["uniform"])  # drawn only for the rows that mix
    lams = torch.tensor([next(uniform) if float(d) < float(mix_prob[y]) else 1.0 for d, y in zip(draws, step_labels)])
    assert len(FIXTURE["uniform"]) > 0 and next(uniform, None) is None
    mixed = tfe_mix(table[b:2 * b], step_labels, table[2 * b:], mix_prob, draws, lams)
    assert mixed.numpy() == pytest.approx(tensor("mixed_features").numpy(), abs=1e-6)
    loss = F.cross_entropy(teacher(mixed), step_labels)
    assert float(loss.detach()) == pytest.approx(FIXTURE["teacher_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- hand-checked pieces
def test_tfe_mix_by_hand():
    fx, fu = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    mixed = tfe_mix(fx, torch.tensor([0, 1]), fu, torch.tensor([0.0, 0.5]), torch.tensor([0.1, 0.1]),
                    torch.tensor([0.7, 0.7]))
    # class 0 never mixes (probability 0); class 1 mixes since 0.1 < 0.5: 0.7 fx + 0.3 fu
    assert mixed[0].tolist() == [1.0, 0.0] and mixed[1].tolist() == pytest.approx([0.7, 0.3])


def test_imprinting_is_the_normalised_class_mean():
    labeled = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    probs = imprinted_probabilities(labeled, labels, torch.tensor([[1.0, 1.0], [2.0, 0.0]]), 2)
    # W = [[1, 0], [0, 1]]: the logits are the embeddings themselves
    assert probs[0].tolist() == pytest.approx([0.5, 0.5])
    assert probs[1, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1))


def test_beta_draws_have_the_beta_moments_and_follow_the_generator():
    draws = beta_draws(0.75, 40000, torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() <= 1
    assert draws.mean().item() == pytest.approx(0.5, abs=0.01)
    assert draws.var().item() == pytest.approx(1 / (4 * (2 * 0.75 + 1)), abs=0.004)  # 1 / (4 (2 alpha + 1)) = 0.1
    again = beta_draws(0.75, 40000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_warmup_batches_walk_a_fresh_permutation_each_epoch():
    batches = warmup_batches(10, 4, epochs=2, steps_per_epoch=3, generator=torch.Generator().manual_seed(1))
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    for epoch in (batches[:3], batches[3:]):
        assert len(set(torch.cat(epoch[:2]).tolist())) == 8  # the first two batches: one permutation, no repeat
    # a permutation is used to its last full batch: 8 rows in batches of 4 give one permutation of all 8
    exact = warmup_batches(8, 4, epochs=1, steps_per_epoch=2, generator=torch.Generator().manual_seed(2))
    assert sorted(torch.cat(exact).tolist()) == list(range(8))
    again = warmup_batches(10, 4, epochs=2, steps_per_epoch=3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # from the generator alone


def test_default_linear_is_uniform_within_one_over_root_d():
    weights = default_linear(16, 3, torch.Generator().manual_seed(0))
    assert weights["weight"].shape == (3, 16) and weights["bias"].shape == (3,)
    assert weights["weight"].abs().max() <= 0.25 and weights["bias"].abs().max() <= 0.25
    wide = default_linear(16, 400, torch.Generator().manual_seed(0))  # U(-1/4, 1/4): mean 0, variance 1/48
    for values in (wide["weight"], wide["bias"]):
        assert values.min() < -0.2 and values.max() > 0.2 and abs(values.mean().item()) < 0.02
    assert wide["weight"].var().item() == pytest.approx(1 / 48, rel=0.05)


# ----------------------------------------------------------------------------- the engine's parts
def test_the_balanced_labeled_view_draws_classes_equally_with_a_strong_view():
    config = tiny_config(algorithm="fixmatch_cossl")
    data = prepare_data(config, torch.device("cpu"))
    trainer = Trainer.from_config(config, data)
    drawn = torch.cat([trainer.batches.next()[0].y_balanced for _ in range(60)])
    shares = torch.bincount(drawn, minlength=10).double() / len(drawn)
    assert torch.allclose(shares, torch.full((10,), 0.1, dtype=torch.float64), atol=0.035)
    batch, _ = trainer.batches.next()
    assert batch.x_balanced.shape == batch.x.shape and batch.y_balanced.shape == batch.y.shape
    state = trainer.batches.state_dict()
    ahead = trainer.batches.next()[0].y_balanced
    trainer.batches.load_state_dict(state)
    assert torch.equal(trainer.batches.next()[0].y_balanced, ahead)


OVERRIDES = ["train.iterations=12", "train.epoch_length=4", "train.eval_every=4", "train.checkpoint_every=4",
             "train.keep_checkpoints=3",
             "algorithm.pretrain_fraction=0.5", "algorithm.warmup_epochs=2", "algorithm.threshold=0.5"]


def test_the_stage_loads_the_warmed_up_teacher_and_evaluation_reports_it(tmp_path):
    config = tiny_config(*OVERRIDES, algorithm="fixmatch_cossl")
    said = io.StringIO()
    start_run(config, tmp_path / "run", stream=said)
    # the run says when, counted as metrics.jsonl and the checkpoints count the steps
    assert ("[cissl] stage of fixmatch_cossl after iteration 6: EMA model's predictions on 159 labeled and 323 "
            "unlabeled images") in said.getvalue().splitlines()
    before = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt")
    after = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000008.pt")
    assert not before["algorithm"]["teacher_ready"] and after["algorithm"]["teacher_ready"]
    # the warm-up ran at the stage (after iteration 5, 0-based) from the EMA network of step 6
    data = prepare_data(config, torch.device("cpu"))
    trainer = Trainer.from_config(config, data)
    trainer.load_state_dict(before)
    for _ in range(2):
        trainer.train_step()
    teacher = dict(trainer.model.heads["teacher"].state_dict())
    ema_teacher = dict(trainer.ema.model.heads["teacher"].state_dict())
    assert trainer.algorithm.teacher_ready and not torch.equal(teacher["weight"], ema_teacher["weight"])
    assert not torch.equal(before["model"]["heads.teacher.weight"], teacher["weight"])
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["reported_head"] == "teacher" and set(results["heads"]) == {"main", "teacher"}


def test_evaluation_scores_the_main_head_under_the_teachers_name_until_the_stage():
    config = tiny_config(algorithm="fixmatch_cossl")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    main, teacher = torch.zeros(2, 10), torch.ones(2, 10)
    assert trainer.algorithm.evaluation_logits({"main": main, "teacher": teacher})["teacher"] is main
    trainer.algorithm.teacher_ready = True
    assert trainer.algorithm.evaluation_logits({"main": main, "teacher": teacher})["teacher"] is teacher


def test_a_resumed_run_equals_an_uninterrupted_one_across_the_stage(tmp_path):
    config = tiny_config(*OVERRIDES, algorithm="fixmatch_cossl")
    whole, resumed = uninterrupted_and_resumed(config, tmp_path, 12, dropped=(8, 12))  # cut before the stage
    assert_same_state(whole, resumed)


def test_pretrain_fraction_zero_warms_up_before_the_first_step(tmp_path):
    config = tiny_config("train.iterations=4", "train.checkpoint_every=4", "train.eval_every=4",
                         "algorithm.pretrain_fraction=0", "algorithm.warmup_epochs=1", algorithm="fixmatch_cossl")
    said = io.StringIO()
    start_run(config, tmp_path / "run", stream=said)
    assert load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt")["algorithm"]["teacher_ready"]
    assert said.getvalue().splitlines()[1].startswith("[cissl] stage of fixmatch_cossl before the first step: ")


def test_the_stage_loads_its_weights_into_the_network_and_the_ema_and_drops_the_heads_momentum(monkeypatch):
    """After the stage's step (iteration 5, 0-based) the teacher head holds the warm-up's weights, its EMA
    the warm-up's average, and SGD keeps no momentum of the head's earlier weights (it had some). The stage
    saw the EMA model's logits and embeddings of the labeled images, row for row with their labels, and of
    the pool."""
    config = tiny_config(*OVERRIDES, algorithm="fixmatch_cossl")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    returned = []
    stage = trainer.algorithm.on_stage

    def recorded_stage(iteration, labeled, pool):
        for seen, images in ((labeled, trainer.data.labeled.images), (pool, trainer.data.unlabeled.images)):
            logits, features = predict_with_features(trainer.ema.model, images, 64, trainer.parts.policy)
            assert torch.allclose(seen.features, features, atol=1e-5)
            assert all(torch.allclose(seen.logits[h], logits[h], atol=1e-5) for h in logits)
        assert torch.equal(labeled.labels, trainer.data.labeled.labels.cpu())
        updates = stage(iteration, labeled, pool)
        returned.extend(updates)
        return updates
    monkeypatch.setattr(trainer.algorithm, "on_stage", recorded_stage)
    for _ in range(5):
        trainer.train_step()
    head = trainer.model.heads["teacher"]
    assert all(trainer.optimizer.state.get(p) for p in head.parameters())  # momentum before the stage
    trainer.train_step()
    (update,) = returned
    assert update.head == "teacher"
    for key in ("weight", "bias"):
        assert torch.equal(head.state_dict()[key], update.weights[key])
        assert torch.equal(trainer.ema.model.heads["teacher"].state_dict()[key], update.ema_weights[key])
    assert not any(p in trainer.optimizer.state for p in head.parameters())


def test_a_run_warmed_up_before_its_first_step_resumes_without_warming_up_again(tmp_path):
    config = tiny_config("train.iterations=4", "train.checkpoint_every=2", "train.eval_every=2",
                         "algorithm.pretrain_fraction=0", "algorithm.warmup_epochs=1", algorithm="fixmatch_cossl")
    whole, resumed = uninterrupted_and_resumed(config, tmp_path, 4)
    assert_same_state(whole, resumed)
