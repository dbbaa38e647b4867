"""DARP: parity with USB's arithmetic, the solver against a direct solve, the schedule, the mask, state."""

import json

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers import FixedLogitsModel, id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.darp import Darp, DarpConfig, darp_solve, target_counts, truncate_small_entries
from cissl.config import load_config
from cissl.errors import ConfigError

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "darp.json").read_text())


def context(counts=(6, 3, 1), pool=8, iterations=100):
    return AlgorithmContext(num_classes=len(counts), labeled_counts=tuple(counts), feature_dim=4,
                            iterations=iterations, epoch_length=10, unlabeled_pool_size=pool)


def test_truncation_and_solver_match_usb():
    """tests/reference/make_fixtures.py: USB's estimate_pseudo + rescaling and opt_solver (scipy's secant)."""
    predictions = torch.tensor(FIXTURE["predictions"], dtype=torch.float32)
    target = torch.tensor(FIXTURE["target"], dtype=torch.float64)
    truncated = truncate_small_entries(predictions, target, FIXTURE["alpha"])
    assert torch.allclose(truncated, torch.tensor(FIXTURE["truncated"], dtype=torch.float32), atol=1e-6, rtol=0)
    refined = darp_solve(torch.tensor(FIXTURE["truncated"], dtype=torch.float32), target,
                         FIXTURE["solver_iterations"], FIXTURE["newton_tol"])
    assert torch.allclose(refined, torch.tensor(FIXTURE["refined"], dtype=torch.float32), atol=1e-6, rtol=0)
    # the loose root tolerance (0.1) leaves the column sums near, not at, the target
    assert torch.allclose(refined.sum(0).double(), target, rtol=1e-3)


def test_target_counts_of_the_usb_fixture():
    ctx = context(tuple(FIXTURE["labeled_counts"]), pool=len(FIXTURE["predictions"]))
    counts = target_counts(DarpConfig(), ctx)
    assert torch.allclose(counts, torch.tensor(FIXTURE["target"], dtype=torch.float64))


def weighted_kl_solution(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The DARP problem solved directly: min sum_i w_i KL(x_i || a_i), rows sum 1, columns sum c."""
    from scipy.optimize import minimize

    n, k = a.shape
    w = 1.0 / -(a * np.log(a + 1e-6)).sum(1)

    def objective(flat):
        x = flat.reshape(n, k)
        return float((w[:, None] * x * np.log(x / a)).sum())

    def gradient(flat):
        x = flat.reshape(n, k)
        return (w[:, None] * (np.log(x / a) + 1)).ravel()

    constraints = [{"type": "eq", "fun": lambda f: f.reshape(n, k).sum(1) - 1},
                   # the last column's sum follows from the others and the rows (a redundant one is singular)
                   {"type": "eq", "fun": lambda f: f.reshape(n, k).sum(0)[:-1] - c[:-1]}]
    result = minimize(objective, a.ravel(), jac=gradient, constraints=constraints, method="SLSQP",
                      bounds=[(1e-9, 1)] * (n * k), options={"ftol": 1e-14, "maxiter": 1000})
    assert result.success, result.message
    return result.x.reshape(n, k)


def test_solver_meets_the_target_column_sums_and_matches_a_direct_solve():
    """Six images, three classes, predictions biased to class 0; target counts (2, 2, 2)."""
    a = torch.tensor([[0.80, 0.15, 0.05], [0.70, 0.20, 0.10], [0.60, 0.30, 0.10],
                      [0.50, 0.40, 0.10], [0.55, 0.15, 0.30], [0.40, 0.25, 0.35]])
    c = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    refined = darp_solve(a, c, iterations=300, tol=1e-12, max_secant=100)
    assert torch.allclose(refined.sum(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(refined.sum(0).double(), c, atol=1e-4)
    direct = weighted_kl_solution(a.double().numpy(), c.numpy())
    assert np.allclose(refined.numpy(), direct, atol=2e-4)
    # the refinement moves mass from the majority class to the others, most for the least confident rows
    assert refined[:, 0].sum() < a[:, 0].sum()


def test_truncation_keeps_alpha_times_the_target_per_class():
    """alpha * c_k = 2 * 1 = 2 rows keep class k's mass; the others get (almost) none of it."""
    a = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1]])
    out = truncate_small_entries(a, torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64), alpha=2.0)
    assert torch.allclose(out.sum(1), torch.ones(4))
    assert out[2, 0] < 1e-4 and out[3, 0] < 1e-4          # class 0: rows 0, 1 keep it
    assert out[0, 1] < 1e-4 and out[2, 1] < 1e-4          # class 1: rows 3 (0.8) and 1 (0.3) keep it
    assert (out[:, 2] > 1e-3).all()                        # class 2: alpha * 2 = 4 rows keep it
    # row 0 by hand: class 0 scaled by 1 / (0.7 + 0.6), class 2 by 2 / (0.1 + 0.1 + 0.4 + 0.1), then normalised
    row = torch.tensor([0.7 / 1.3, 0.0, 0.1 * 2 / 0.7])
    assert torch.allclose(out[0], row / row.sum(), atol=1e-5)


def test_truncation_adds_its_1e6_to_the_count_and_to_the_kept_mass():
    """The weight (c_k + 1e-6) / (kept mass + 1e-6) by hand where the 1e-6 matter: class 1's target is 0.01
    (alpha 100 keeps int(100 x 0.01) = 1 row) and its kept entry is 2e-7, so the weight is 0.010001 / 1.2e-6."""
    a = torch.tensor([[0.6, 2e-7], [0.4, 1e-7]])
    out = truncate_small_entries(a, torch.tensor([1.0, 0.01], dtype=torch.float64), alpha=100.0)
    a64 = a.double()
    weight = torch.tensor([(1.0 + 1e-6) / (a64[:, 0].sum() + 1e-6), (0.01 + 1e-6) / (a64[0, 1] + 1e-6)])
    scaled = a64 * torch.tensor([[1.0, 1.0], [1.0, 0.0]]) * weight + 1e-6  # class 1 keeps row 0 only
    assert torch.allclose(out.double(), scaled / scaled.sum(1, keepdim=True), rtol=1e-5, atol=0)


def test_targets_labeled_uniform_given_and_errors():
    ctx = context((6, 3, 1), pool=20)
    assert torch.allclose(target_counts(DarpConfig(), ctx), torch.tensor([12.0, 6.0, 2.0], dtype=torch.float64))
    uniform = target_counts(DarpConfig(target="uniform"), ctx)
    assert torch.allclose(uniform, torch.full((3,), 20 / 3, dtype=torch.float64))
    given = DarpConfig(target="given", target_distribution=[1, 1, 2])
    assert torch.allclose(target_counts(given, ctx), torch.tensor([5.0, 5.0, 10.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="target_distribution"):
        target_counts(DarpConfig(target="given", target_distribution=[1, 2]), ctx)
    with pytest.raises(ValueError, match="no unlabeled pool"):
        Darp(DarpConfig(), context(pool=0))
    with pytest.raises(ConfigError, match="algorithm.refiner.target"):
        load_config(None, ["algorithm.name=fixmatch_darp", "algorithm.refiner.target=estimated"])


class Views:
    weak = None


def test_schedule_warmup_first_solve_and_kept_labels():
    """iterations 20, warm-up 0.25 -> 5 steps; period 3: solves inside steps t = 5 and 8 ((t + 1) % 3 == 0)."""
    darp = Darp(DarpConfig(warmup_fraction=0.25, period=3, solver_iterations=5), context(pool=6, iterations=20))
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]])
    batch = Batch(x=None, y=None, u_index=torch.tensor([4, 1]))
    assert torch.equal(darp.refine(probs, Views, batch, 4), probs)  # warm-up: unchanged, but recorded
    with pytest.raises(ValueError, match=r"^DARP needs each unlabeled image's pool position \(batch.u_index\)$"):
        darp.refine(probs, Views, Batch(x=None, y=None), 4)
    assert torch.equal(darp.predictions[[4, 1]], probs)
    # t = 5: the first step after the warm-up, and (5 + 1) % 3 == 0 -> solve
    other = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    solved = darp.refine(other, Views, Batch(x=None, y=None, u_index=torch.tensor([0, 2])), 5)
    assert darp.solves == 1
    assert torch.equal(darp.predictions[[0, 2]], other)  # this step's predictions took part in the solve
    expected = darp_solve(truncate_small_entries(darp.predictions, darp.counts, 2.0), darp.counts, 5)
    assert torch.allclose(solved, expected[[0, 2]])
    assert torch.allclose(darp.refined, expected)
    # t = 6, 7: the kept labels of the batch's own pool positions, no new solve
    kept = darp.refine(probs, Views, Batch(x=None, y=None, u_index=torch.tensor([3, 0])), 6)
    assert darp.solves == 1 and torch.equal(kept, expected[[3, 0]])
    darp.refine(probs, Views, batch, 8)
    assert darp.solves == 2


def test_labels_stay_uniform_between_warmup_and_first_solve():
    """As in the reference: t = 4 is past a 4-step warm-up but (4 + 1) % 3 != 0 -> the initial uniform labels."""
    darp = Darp(DarpConfig(warmup_fraction=0.2, period=3), context(pool=4, iterations=20))
    out = darp.refine(torch.tensor([[0.9, 0.05, 0.05]]), Views, Batch(x=None, y=None, u_index=torch.tensor([2])), 4)
    assert torch.allclose(out, torch.full((1, 3), 1 / 3))


def test_fixmatch_darp_masks_and_labels_from_the_refined_labels():
    """Image 2's weak prediction is confident for class 0 but DARP's kept label says class 1 at 0.6: the
    pseudo-label is 1 and the mask (threshold 0.5) is taken on 0.6; image 3's kept label is uniform: masked."""
    config = load_config(None, ["algorithm.name=fixmatch_darp", "algorithm.threshold=0.5",
                                "algorithm.refiner.warmup_fraction=0.0", "algorithm.refiner.period=1000"])
    algo = build_algorithm(config.algorithm, context(pool=4))
    algo.refiner.refined = torch.tensor([[1 / 3] * 3, [1 / 3] * 3, [0.3, 0.6, 0.1], [1 / 3] * 3])
    table = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [9.0, 0, 0], [0, 9.0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2, 3]),
                  u_strong=(id_images([4, 5]),), u_index=torch.tensor([2, 3]))
    out = algo.step(FixedLogitsModel(table), batch, 0)
    assert out.pseudo_labels.tolist() == [1, 0] and out.mask.tolist() == [True, False]
    strong = torch.log_softmax(table[4], 0)[1]
    assert out.metrics["loss_u"].item() == pytest.approx(-strong.item() / 2, rel=1e-6)


def test_state_round_trip_and_shape_check():
    darp = Darp(DarpConfig(), context(pool=5))
    darp.predictions[2] = torch.tensor([0.2, 0.3, 0.5])
    darp.solves = 3
    other = Darp(DarpConfig(), context(pool=5))
    darp.refined[1] = torch.tensor([0.1, 0.1, 0.8])
    other.load_state_dict(darp.state_dict())
    assert torch.equal(other.predictions, darp.predictions) and other.solves == 3
    assert torch.equal(other.refined, darp.refined)
    with pytest.raises(ValueError, match="shape"):
        Darp(DarpConfig(), context(pool=6)).load_state_dict(darp.state_dict())


# ----------------------------------------------------------------------------- the estimation variant
ESTIMATE = json.loads((REPO / "tests" / "reference" / "fixtures" / "darp_estimate.json").read_text())


def test_estimate_matches_the_daso_framework():
    from cissl.evaluation.distribution import estimate_class_counts

    estimate = estimate_class_counts(torch.tensor(ESTIMATE["val_probs"]), torch.tensor(ESTIMATE["val_labels"]).long(),
                                     torch.tensor(ESTIMATE["pool_probs"]))
    assert torch.allclose(estimate.counts, torch.tensor(ESTIMATE["counts"], dtype=torch.float64), atol=1e-4)
    assert estimate.condition == pytest.approx(ESTIMATE["condition"], rel=1e-5)
    assert estimate.accepted


def test_estimate_recovers_known_counts_by_hand():
    """Validation: class 0 predicted (0.8, 0.2), class 1 (0.3, 0.7). A pool of 100 class-0 and 300 class-1
    images predicted the same way sums to q = (0.8 * 100 + 0.3 * 300, 0.2 * 100 + 0.7 * 300) = (170, 230)."""
    from cissl.evaluation.distribution import estimate_class_counts

    val = torch.tensor([[0.8, 0.2], [0.8, 0.2], [0.3, 0.7]])
    pool = torch.cat([torch.tensor([[0.8, 0.2]]).repeat(100, 1), torch.tensor([[0.3, 0.7]]).repeat(300, 1)])
    estimate = estimate_class_counts(val, torch.tensor([0, 0, 1]), pool)
    assert torch.allclose(estimate.counts, torch.tensor([100.0, 300.0], dtype=torch.float64))
    flipped = estimate_class_counts(val, torch.tensor([0, 0, 1]), torch.tensor([[0.0, 1.0]] * 10))
    assert not flipped.accepted and (flipped.counts < 0).any()  # (0, 10) lies outside what C can produce
    with pytest.raises(ValueError, match="classes \\[1\\]"):
        estimate_class_counts(val[:2], torch.tensor([0, 0]), pool)



def test_an_estimate_is_accepted_with_zero_counts_and_below_the_condition_limit_only():
    """A zero count is no negative count (accepted); the condition number must stay strictly below the
    limit, 100 by default (the DASO framework's). C = [[a, 1 - a], [1 - a, a]] has condition 1 / (2a - 1)."""
    from cissl.evaluation.distribution import estimate_class_counts

    one_hot = torch.eye(2)
    exact = estimate_class_counts(one_hot, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0]] * 7))
    assert exact.counts.tolist() == [7.0, 0.0] and exact.condition == pytest.approx(1.0) and exact.accepted
    assert not estimate_class_counts(one_hot, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0]] * 7),
                                     max_condition=exact.condition).accepted  # at the limit: refused
    for a, accepted in ((0.5 + 1 / 199, True), (0.5 + 1 / 201, False)):  # condition 99.5 and 100.5
        val = torch.tensor([[a, 1 - a], [1 - a, a]], dtype=torch.float64)
        estimate = estimate_class_counts(val, torch.tensor([0, 1]), val.repeat(5, 1))
        assert estimate.condition == pytest.approx(1 / (2 * a - 1)) and estimate.accepted == accepted
        assert torch.allclose(estimate.counts, torch.tensor([5.0, 5.0], dtype=torch.float64))


MEAN = json.loads((REPO / "tests" / "reference" / "fixtures" / "darp_estimate_mean.json").read_text())


def test_mean_of_accepted_estimates_matches_the_daso_framework():
    """Four evaluations (accepted, a negative count, an ill-conditioned confusion matrix, accepted)
    through DARP_ESTIM.evaluate; the framework's final estimate is the mean of the accepted two."""
    from cissl.evaluation.distribution import average_accepted, estimate_class_counts

    labels = torch.tensor(MEAN["val_labels"]).long()
    estimates = [estimate_class_counts(torch.tensor(e["val_probs"]), labels, torch.tensor(e["pool_probs"]),
                                       MEAN["max_condition"]) for e in MEAN["evaluations"]]
    assert [e.accepted for e in estimates] == [e["accepted"] for e in MEAN["evaluations"]] == [True, False, False, True]
    negative, ill = estimates[1], estimates[2]
    assert (negative.counts < 0).any() and negative.condition < MEAN["max_condition"]
    assert (ill.counts >= 0).all() and ill.condition > MEAN["max_condition"]  # rejected for its condition alone
    assert sum(e.accepted for e in estimates) == MEAN["n_infer"]
    assert torch.allclose(average_accepted(estimates), torch.tensor(MEAN["final_q"], dtype=torch.float64), atol=1e-4)


def test_average_accepted_by_hand():
    from cissl.evaluation.distribution import DistributionEstimate, average_accepted

    def estimate(counts, accepted):
        return DistributionEstimate(torch.tensor(counts, dtype=torch.float64), 1.0, accepted)

    mean = average_accepted([estimate([1.0, 3.0], True), estimate([5.0, 5.0], False), estimate([3.0, 1.0], True)])
    assert torch.equal(mean, torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert average_accepted([estimate([1.0, 3.0], False)]) is None


def test_estimate_distribution_command(tmp_path, capsys):
    from conftest import run_cli
    from helpers import tiny_config

    from cissl.engine.run import start_run

    start_run(tiny_config(algorithm="supervised"), tmp_path / "noval", quiet=True)
    code, _, err = run_cli(["estimate-distribution", tmp_path / "noval"], capsys)
    assert code == 2 and "data.val_per_class = 0" in err and len(err.strip().splitlines()) == 1
    start_run(tiny_config("data.val_per_class=1", algorithm="supervised"), tmp_path / "run", quiet=True)  # enough
    code, out, _ = run_cli(["estimate-distribution", tmp_path / "run"], capsys)
    saved = json.loads((tmp_path / "run" / "unlabeled_distribution.json").read_text())
    assert len(saved["estimates"][0]["counts"]) == 10 and saved["pool_size"] == 323 and saved["head"] == "main"
    assert code == (0 if saved["accepted"] else 1)
    assert ("algorithm.refiner.target=given" in out) == saved["accepted"]
    code, out, _ = run_cli(["estimate-distribution", tmp_path / "run", "--max-condition", "1e12"], capsys)
    again = json.loads((tmp_path / "run" / "unlabeled_distribution.json").read_text())
    (only,) = again["estimates"]
    assert again["accepted"] == bool(min(only["counts"]) >= 0) and again["max_condition"] == 1e12
    assert only["checkpoint"].endswith("ckpt_00000020.pt")  # the newest
    assert again["counts"] == (only["counts"] if again["accepted"] else None)


def test_the_estimate_is_that_of_the_methods_evaluation_probabilities_on_the_val_split_and_the_pool(tmp_path,
                                                                                                   monkeypatch):
    """estimate-distribution's counts are estimate_class_counts of the checkpoint's EMA model through the
    method's evaluation logits (here shifted by a class offset), on the validation images and the pool; a
    checkpoint of another run among those named is refused."""
    from helpers import tiny_config

    from cissl.algorithms.supervised import Supervised
    from cissl.engine.checkpoint import list_checkpoints
    from cissl.engine.run import estimate_run_distribution, load_run, start_run
    from cissl.errors import CheckpointError, ConfigError
    from cissl.evaluation.distribution import estimate_class_counts
    from cissl.evaluation.evaluate import predict

    offset = torch.linspace(-1.0, 1.0, 10)
    monkeypatch.setattr(Supervised, "evaluation_logits",
                        lambda self, logits: {head: value + offset for head, value in logits.items()})
    config = tiny_config("data.val_per_class=3", algorithm="supervised")
    start_run(config, tmp_path / "run", quiet=True)
    result = estimate_run_distribution(tmp_path / "run", None, 1e12)
    trained = load_run(tmp_path / "run")
    probs = [torch.softmax(predict(trained.model, images, 500, trained.policy)["main"] + offset, dim=1)
             for images in (trained.data.val.images, trained.data.unlabeled.images)]
    expected = estimate_class_counts(probs[0], trained.data.val.labels.cpu(), probs[1], 1e12)
    assert torch.allclose(torch.tensor(result["estimates"][0]["counts"]), expected.counts.float(), atol=1e-3)
    assert estimate_run_distribution(tmp_path / "run")["max_condition"] == 100.0  # the default limit
    split = json.loads((tmp_path / "run/split.json").read_text())
    val_labels = trained.data.val.labels.tolist()
    kept = {**split, "val_indices": [i for i, label in zip(split["val_indices"], val_labels) if label != 0]}
    (tmp_path / "run/split.json").write_text(json.dumps(kept))
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'run'}: the validation images hold no image of classes "
                                          r"\[0\]: set data.val_per_class >= 1$"):
        estimate_run_distribution(tmp_path / "run")
    (tmp_path / "run/split.json").write_text(json.dumps(split))
    start_run(tiny_config("data.val_per_class=3", "train.seed=1", algorithm="supervised"), tmp_path / "other",
              quiet=True)
    foreign = list_checkpoints(tmp_path / "other/checkpoints")[-1]
    own = list_checkpoints(tmp_path / "run/checkpoints")[-1]
    with pytest.raises(CheckpointError, match=rf"^checkpoint {foreign} belongs to another run"):
        estimate_run_distribution(tmp_path / "run", [own, foreign])
    state = torch.load(own, weights_only=True)  # one that records no config and lacks a weight
    del state["config"], state["ema"][next(iter(state["ema"]))]
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {tmp_path / 'bare.pt'} does not match this run's config"):
        estimate_run_distribution(tmp_path / "run", [own, tmp_path / "bare.pt"])
    for checkpoint in list_checkpoints(tmp_path / "run/checkpoints"):
        checkpoint.unlink()
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'run'} has no checkpoint to estimate with$"):
        estimate_run_distribution(tmp_path / "run")


def test_estimate_distribution_over_several_checkpoints(tmp_path, capsys):
    """Each checkpoint's estimate is that checkpoint's alone (its weights are loaded in turn), and the
    written counts are the mean of the accepted ones."""
    from conftest import run_cli
    from helpers import tiny_config

    from cissl.engine.checkpoint import list_checkpoints
    from cissl.engine.run import estimate_run_distribution, start_run

    start_run(tiny_config("data.val_per_class=3", "train.checkpoint_every=5", "train.keep_checkpoints=4",
                          algorithm="supervised"), tmp_path / "run", quiet=True)
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(checkpoints) == 4
    alone = [estimate_run_distribution(tmp_path / "run", [c], 1e12)["estimates"][0] for c in checkpoints]
    assert len({tuple(e["counts"]) for e in alone}) == 4  # the weights differ from checkpoint to checkpoint
    code, out, _ = run_cli(["estimate-distribution", tmp_path / "run", "--all-checkpoints", "--max-condition", "1e12"],
                           capsys)
    every = json.loads((tmp_path / "run" / "unlabeled_distribution.json").read_text())
    assert every["estimates"] == alone
    accepted = [e["counts"] for e in alone if e["accepted"]]
    assert every["accepted_estimates"] == len(accepted) and code == (0 if accepted else 1)
    if accepted:
        assert torch.allclose(torch.tensor(every["counts"]), torch.tensor(accepted).mean(0))
        assert "DARP toward it" in out  # the mean line only where it averages (test_cli_output pins both cases)
        assert (f"mean of the {len(accepted)} accepted estimates" in out) == (len(accepted) > 1)
    reverse = estimate_run_distribution(tmp_path / "run", checkpoints[::-1] + checkpoints[:1], 1e12)
    assert reverse["estimates"] == alone[::-1] + alone[:1]
    code, _, err = run_cli(["estimate-distribution", tmp_path / "run", "--all-checkpoints",
                            "--checkpoint", str(checkpoints[0])], capsys)
    assert (code, err) == (2, "cissl: error: name checkpoints or ask for every checkpoint of the run, not both\n")
    code, _, _ = run_cli(["estimate-distribution", tmp_path / "run", "--max-condition=1"], capsys)
    assert code in (0, 1)  # 1 is allowed: only a perfectly conditioned confusion matrix passes
    written = (tmp_path / "run" / "unlabeled_distribution.json").read_bytes()
    for limit in ("0.5", "-1", "nan"):  # would reject every estimate (a condition number is at least 1)
        code, out, err = run_cli(["estimate-distribution", tmp_path / "run", f"--max-condition={limit}"], capsys)
        assert (code, out) == (2, "") and err == (f"cissl: error: the condition number limit must be 1 or more, "
                                                  f"got {float(limit)}\n")
    assert (tmp_path / "run" / "unlabeled_distribution.json").read_bytes() == written


# ----------------------------------------------------------------------------- the root finder, step for step
def _exp_residual(v):
    """f_k(v) = sum_i b_ik exp(-v / w_i) - c_k for three classes: DARP's dual residual on fixed numbers."""
    b = torch.tensor([[0.9, 0.3, 0.2], [0.4, 0.8, 0.1], [0.2, 0.5, 1.5]], dtype=torch.float64)
    w = torch.tensor([0.7, 1.3, 2.1], dtype=torch.float64)
    c = torch.tensor([0.6, 0.9, 0.4], dtype=torch.float64)
    return (b * torch.exp(-v[None, :] / w[:, None])).sum(0) - c


@pytest.mark.parametrize("start", [0.0, 0.5, 2.0, -0.7])
@pytest.mark.parametrize("tol", [0.1, 1e-9])
def test_secant_roots_step_for_step_as_scipy(start, tol):
    """The same iterates as scipy.optimize.newton without fprime (its second point x0 (1 + 1e-4) +- 1e-4,
    the sign taken at >= 0, the swap when |f(x1)| < |f(x0)|), so the loose tolerance 0.1 stops at the
    same point: a zero, a positive start below and above 1, and a negative one."""
    from scipy.optimize import newton

    from cissl.algorithms.darp import _secant_roots

    starts = torch.full((3,), start, dtype=torch.float64)
    ours = _secant_roots(_exp_residual, starts, tol, 50)
    for k in range(3):
        def scalar(v, k=k):
            return float(_exp_residual(torch.full((3,), v, dtype=torch.float64))[k])
        expected = newton(scalar, start, tol=tol, maxiter=50)
        assert float(ours[k]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_secant_roots_stall_returns_the_midpoint():
    """f(x0) == f(x1) (a flat function): where scipy raises, the solver stops at (x0 + x1) / 2; start 1 ->
    x1 = 1.0001 + 0.0001 = 1.0002, midpoint 1.0001."""
    from cissl.algorithms.darp import _secant_roots

    out = _secant_roots(lambda v: torch.ones_like(v), torch.tensor([1.0], dtype=torch.float64), 0.1, 30)
    assert float(out[0]) == pytest.approx(1.0001, abs=1e-9)


def test_solver_uses_the_configured_secant_iterations():
    darp = Darp(DarpConfig(warmup_fraction=0.0, period=1, newton_max_iterations=1, newton_tol=1e-9, alpha=10.0,
                           solver_iterations=1, target="uniform"), context(pool=3, iterations=10))
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4]])
    out = darp.refine(probs, Views, Batch(x=None, y=None, u_index=torch.tensor([0, 1, 2])), 0)
    truncated = truncate_small_entries(probs, darp.counts, 10.0)
    assert torch.equal(out, darp_solve(truncated, darp.counts, 1, 1e-9, 1))
    assert not torch.allclose(out, darp_solve(truncated, darp.counts, 1, 1e-9, 30), atol=1e-6)


@pytest.mark.parametrize("weights", [[1.0, -0.5, 2.0], [0.0, 0.0, 0.0]])
def test_given_target_refuses_negative_weights_and_a_zero_sum(weights):
    with pytest.raises(ValueError, match="non-negative weights with a positive sum"):
        target_counts(DarpConfig(target="given", target_distribution=weights), context((6, 3, 1), pool=20))


def test_given_target_accepts_zero_and_fractional_weights():
    """A class the pool lacks (weight 0) and weights summing to less than 1 are both valid."""
    counts = target_counts(DarpConfig(target="given", target_distribution=[0.5, 0.0, 0.3]), context((6, 3, 1), pool=16))
    assert torch.allclose(counts, torch.tensor([10.0, 0.0, 6.0], dtype=torch.float64))


def test_a_pool_of_one_image_is_a_pool():
    assert Darp(DarpConfig(), context(pool=1)).predictions.shape == (1, 3)
