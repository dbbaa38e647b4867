"""CReST / CReST+: selection (parity with USB), progressive alignment (parity with the DASO framework),
LA following the labeled set, and generations inside one run with a bit-exact resume mid-generation."""

import json

import pytest
import torch
from conftest import REPO
from helpers import logged_records, tiny_config
from test_training import assert_same_state

from cissl.algorithms import AlgorithmContext, PoolPredictions, build_algorithm
from cissl.algorithms.components.logit_adjust import class_prior, logit_adjustment
from cissl.algorithms.crest import select_pseudo_labeled, selection_rates
from cissl.algorithms.dist_align import DistAlign, DistAlignConfig, RunningMean, align, alignment_temperature
from cissl.config import load_config
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.run import evaluate_run, resume_run, start_run
from cissl.evaluation.summary import summarize_run

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "crest.json").read_text())


def test_selection_matches_usb():
    rates = selection_rates(FIXTURE["labeled_counts"], FIXTURE["alpha"])
    positions, labels = select_pseudo_labeled(torch.tensor(FIXTURE["probs"]), rates)
    assert positions.tolist() == FIXTURE["picked_positions"]
    assert labels.tolist() == FIXTURE["picked_labels"]


def test_selection_rates_by_hand_and_by_rank():
    """Counts (16, 4, 1), alpha 3: mu = ((1/16)^(1/3), (4/16)^(1/3), 1); the same counts in another class
    order get the same rates by frequency rank."""
    expected = torch.tensor([(1 / 16) ** (1 / 3), (4 / 16) ** (1 / 3), 1.0], dtype=torch.float64)
    assert torch.allclose(selection_rates([16, 4, 1], 3.0), expected)
    assert torch.allclose(selection_rates([1, 16, 4], 3.0), expected[[2, 0, 1]])


def test_selection_rates_rank_ties_by_class_index():
    """Counts (4, 4, 1): ranks 1, 2, 3 by frequency, the tie broken by the lower class index, so class 0
    (rank 1) takes N_(3) / N_max = 1 / 4 and class 1 (rank 2) takes N_(2) / N_max = 1, as the module says."""
    expected = torch.tensor([(1 / 4) ** (1 / 3), 1.0, 1.0], dtype=torch.float64)
    assert torch.allclose(selection_rates([4, 4, 1], 3.0), expected)
    assert torch.allclose(selection_rates([1, 4, 4], 3.0), torch.tensor([1.0, (1 / 4) ** (1 / 3), 1.0],
                                                                         dtype=torch.float64))


def test_selection_takes_the_most_confident_of_each_predicted_class():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    positions, labels = select_pseudo_labeled(probs, torch.tensor([0.5, 1.0]))
    # class 0 is predicted for 3 images: floor(0.5 * 3) = 1 joins (0.9); class 1 keeps both, most confident first
    assert positions.tolist() == [0, 3, 4] and labels.tolist() == [0, 1, 1]
    # class 0 takes floor(0.5 * 1) = 0 images: the classes after it still take theirs
    positions, labels = select_pseudo_labeled(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0.5, 1.0]))
    assert positions.tolist() == [1] and labels.tolist() == [1]
    empty = select_pseudo_labeled(torch.tensor([[0.9, 0.1]]), torch.tensor([0.5, 1.0]))
    assert [(part.numel(), part.dtype) for part in empty] == [(0, torch.long)] * 2


def test_selection_breaks_ties_of_confidence_by_the_lower_pool_position():
    """20 images predicted as class 0, all at 0.7: half of them join, positions 0-9 (torch's default sort on
    the CPU reorders equal values from about 20 elements on)."""
    probs = torch.tensor([[0.7, 0.3]] * 20)
    positions, labels = select_pseudo_labeled(probs, torch.tensor([0.5, 1.0]))
    assert positions.tolist() == list(range(10)) and labels.tolist() == [0] * 10


def test_alignment_matches_the_daso_framework():
    """Window 3, temperature 0.75, five steps (the window wraps around)."""
    target = class_prior(FIXTURE["labeled_counts"])
    running = RunningMean(FIXTURE["window"], 3, "cpu")
    for batch, expected in zip(FIXTURE["batches"], FIXTURE["aligned"]):
        probs = torch.tensor(batch)
        out = align(probs, target, running.push(probs), FIXTURE["temperature"])
        assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_progressive_temperature_by_generation():
    assert [alignment_temperature(g, 5, 0.5) for g in range(5)] == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5])
    assert alignment_temperature(0, 1, 0.5) == 1.0
    assert alignment_temperature(1, 2, 0.5) == 0.5  # two generations: the second is the last
    context = AlgorithmContext(num_classes=2, labeled_counts=(3, 1), feature_dim=2, iterations=20, epoch_length=5,
                               generations=4)
    refiner = DistAlign(DistAlignConfig(t_min=0.25), context)
    assert [refiner.temperature(t) for t in (0, 4, 5, 14, 15, 19)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25, 0.25])
    # the first step's running mean is its own batch mean: a batch at the mean maps to the target^t
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    out = refiner.refine(probs, None, None, 19)
    target = torch.tensor([0.75, 0.25]) ** 0.25
    assert torch.allclose(out[0], target / target.sum(), atol=1e-5)


def crest_context(counts=(6, 2)):
    return AlgorithmContext(num_classes=len(counts), labeled_counts=counts, feature_dim=2, iterations=20,
                            epoch_length=5, unlabeled_pool_size=4, generations=2)


def test_generation_end_adds_rebalanced_images_and_la_follows_the_labeled_set():
    config = load_config(None, ["algorithm.name=fixmatch_la_crest_plus", "algorithm.generations=2"])
    algo = build_algorithm(config.algorithm, crest_context())
    assert torch.allclose(algo.adjustment, logit_adjustment(class_prior([6, 2]), 1.0))
    logits = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    update = algo.on_generation_end(0, PoolPredictions({"main": logits}, torch.zeros(4, 2)))
    # mu = ((2/6)^(1/3), 1): floor(0.69 * 2) = 1 of class 0 (the most confident, position 0); both of class 1
    assert update.labeled_indices.tolist() == [0, 3, 2] and update.labels.tolist() == [0, 1, 1]
    assert update.reinitialize_model
    assert torch.allclose(algo.adjustment, logit_adjustment(class_prior([7, 4]), 1.0))
    restored = build_algorithm(config.algorithm, crest_context())
    restored.load_state_dict(algo.state_dict())
    assert torch.equal(restored.adjustment, algo.adjustment)


def test_crest_rows_are_presets():
    plus = load_config(None, ["algorithm.name=fixmatch_crest_plus"]).algorithm
    assert plus.refiner.name == "dist_align" and plus.refiner.t_min == 0.5 and plus.generations == 5
    assert load_config(None, ["algorithm.name=fixmatch_crest"]).algorithm.refiner.name == "none"
    assert load_config(None, ["algorithm.name=fixmatch_la_crest_plus"]).algorithm.logit_adjust


def test_crest_plus_resumes_mid_generation_bit_for_bit(tmp_path):
    """12 steps in 3 generations of 4; cut at 6 (inside generation 1), the resumed run is the same run."""
    config = tiny_config("train.iterations=12", "train.eval_every=6", "train.checkpoint_every=6",
                         "train.keep_checkpoints=5", "algorithm.generations=3", "algorithm.threshold=0.3",
                         algorithm="fixmatch_la_crest_plus")
    start_run(config, tmp_path / "straight", quiet=True)
    reference = load_checkpoint(tmp_path / "straight/checkpoints/ckpt_00000012.pt")
    assert reference["batches"]["additions"]["generation"] == 2
    run = tmp_path / "cut"
    start_run(config, run, quiet=True)
    (run / "checkpoints/ckpt_00000012.pt").unlink()
    (run / "results.json").unlink()
    resume_run(run, quiet=True)
    assert_same_state(reference, load_checkpoint(run / "checkpoints/ckpt_00000012.pt"))


def test_a_new_generation_starts_every_head_afresh_the_abc_head_too(tmp_path):
    """CReST with an ABC head (algorithm.aux_head=abc): at a generation's end the network is rebuilt with
    all its heads, seeded by the generation, and the checkpoint at the boundary holds exactly that network.
    (Rebuilt with the main head alone, the ABC head's weights would be missing.)"""
    from cissl.engine.assemble import build_network, method_class
    from cissl.engine.precision import ComputePolicy

    config = tiny_config("train.iterations=8", "train.eval_every=4", "train.checkpoint_every=4",
                         "algorithm.generations=2", "algorithm.aux_head=abc", algorithm="fixmatch_crest")
    start_run(config, tmp_path / "run", quiet=True)
    heads = method_class(config).required_heads(config.algorithm)
    assert heads == ("main", "abc")
    data = prepare_data(config, torch.device("cpu"))
    policy = ComputePolicy.from_config(config.train, torch.device("cpu"))
    fresh = build_network(config, data, policy, heads, stream="model-generation1").state_dict()
    saved = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt")  # right after generation 0's end
    assert any(key.startswith("heads.abc") for key in fresh) and saved["model"].keys() == fresh.keys()
    assert all(torch.equal(saved[part][key], value) for part in ("model", "ema") for key, value in fresh.items()
               if value.is_floating_point())


def test_last_k_window_is_the_later_half_of_the_last_generation():
    """Evaluations at 2, 4, ..., 12 (top-1 0.5, 0.6, 0.5, 0.2, 0.7, 0.9), report_last = 3.
    Last generation from 4: its evaluations are 6..12, the later half 10, 12: mean and median 0.8.
    Last generation from 8: 10 and 12, the later half 12 alone: 0.9.
    One generation: the run's tail 8, 10, 12 (the config keeps report_last within half): mean 0.6, median 0.7;
    a checkpoint's shorter history (2..8, `cissl evaluate --checkpoint`) keeps report_last: 4, 6, 8."""
    config = load_config(None, ["train.iterations=12", "train.eval_every=2", "train.report_last=3"])
    history = [{"iteration": t, "test": {"main": {"top1": top1, "balanced_accuracy": top1 - 0.1}}}
               for t, top1 in ((2, 0.5), (4, 0.6), (6, 0.5), (8, 0.2), (10, 0.7), (12, 0.9))]
    final = {"test": {"main": {"top1": 0.9, "balanced_accuracy": 0.8}}}

    def summary(start):
        return summarize_run(config, history, final, "main", [6, 2], 12, 1.0, "cpu", last_generation_start=start)

    from4, from8, whole = summary(4), summary(8), summary(0)
    assert from4["last_k"] == 2 and from4["mean_last_top1"] == pytest.approx(0.8)
    assert from4["median_last_top1"] == pytest.approx(0.8)
    assert from4["mean_last_balanced_accuracy"] == pytest.approx(0.7)
    assert from8["last_k"] == 1 and from8["mean_last_top1"] == pytest.approx(0.9)
    # from 6: the evaluation at 6 scores the network the generation before trained; 8, 10, 12 remain -> 12
    from6 = summary(6)
    assert from6["last_k"] == 1 and from6["mean_last_top1"] == pytest.approx(0.9)
    assert whole["last_k"] == 3 and whole["mean_last_top1"] == pytest.approx(0.6)
    assert whole["median_last_top1"] == pytest.approx(0.7)
    assert whole["mean_last_balanced_accuracy"] == pytest.approx(0.5)
    assert whole["median_last_balanced_accuracy"] == pytest.approx(0.6)  # of 0.1, 0.6, 0.8
    best = whole["best_on_test_top1"]  # the highest top-1 of the history, labelled as chosen on test
    assert (best["value"], best["iteration"]) == (0.9, 12) and best["note"].startswith("selected on the test set")
    early = summarize_run(config, history[:4], final, "main", [6, 2], 8, 1.0, "cpu")
    assert early["last_k"] == 3 and early["mean_last_top1"] == pytest.approx((0.6 + 0.5 + 0.2) / 3)


def test_crest_run_reports_the_last_generation_window_and_each_generations_additions(tmp_path):
    """12 steps in 3 generations of 4, evaluations every 2: report_last = 3 would reach back to iteration 8,
    the second generation's network; the window is the later half of the last generation's evaluations (10
    and 12): 12 alone, after training and after `cissl evaluate`.
    metrics.jsonl has one record per generation's end: the images added and how many carry their true label
    (checked against the last generation's additions in the final checkpoint and the pool's labels)."""
    config = tiny_config("train.iterations=12", "train.eval_every=2", "train.checkpoint_every=12",
                         "train.report_last=3", "algorithm.generations=3", algorithm="fixmatch_crest")
    run = tmp_path / "run"
    results = start_run(config, run, quiet=True)
    records = logged_records(run)
    last = [r["test"]["main"]["top1"] for r in records if r["kind"] == "eval" and r["iteration"] == 12]
    assert results["last_k"] == 1 and results["mean_last_top1"] == pytest.approx(last[0])
    again = evaluate_run(run)
    assert again["last_k"] == 1 and again["mean_last_top1"] == pytest.approx(last[0])

    ends = [r for r in records if r["kind"] == "generation"]
    assert [(r["generation"], r["iteration"]) for r in ends] == [(0, 4), (1, 8)]
    additions = load_checkpoint(run / "checkpoints/ckpt_00000012.pt")["batches"]["additions"]
    truth = prepare_data(config, torch.device("cpu")).unlabeled.labels[torch.as_tensor(additions["indices"])]
    assert ends[-1]["added"] == len(additions["indices"]) > 0
    assert ends[-1]["added_correct"] == int((truth == torch.as_tensor(additions["labels"])).sum())


def test_running_mean_is_the_mean_of_the_last_window_batch_means():
    running = RunningMean(2, 2, "cpu")
    a, b, c = torch.tensor([[0.2, 0.8]]), torch.tensor([[0.6, 0.4], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(running.push(a), torch.tensor([0.2, 0.8]))
    assert torch.allclose(running.push(b), torch.tensor([0.5, 0.5]))        # (0.2 + 0.8) / 2, (0.8 + 0.2) / 2
    assert torch.allclose(running.push(c), torch.tensor([0.4, 0.6]))        # a left the window
    assert running.steps == 3


def test_align_normalises_the_target_and_guards_zero_means_by_hand():
    """A zero in the target or in the running mean meets the 1e-6 guard: target (3, 1, 0) -> (0.75, 0.25, 0);
    p (0.5, 0.25, 0.25) over running mean (0.5, 0.5, 0): (0.5 * 0.750001 / 0.500001, 0.25 * 0.250001 / 0.500001,
    0.25 * 1e-6 / 1e-6), renormalised."""
    probs = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    out = align(probs, torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64),
                torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), 1.0)
    raw = torch.tensor([0.5 * 0.750001 / 0.500001, 0.25 * 0.250001 / 0.500001, 0.25], dtype=torch.float64)
    assert torch.allclose(out[0], raw / raw.sum(), rtol=1e-9, atol=0)


def test_generations_of_uneven_length_keep_their_temperature_to_the_end():
    """10 iterations, 3 generations: each is 10 // 3 = 3 steps, and the leftover step 9 stays in the last."""
    context = AlgorithmContext(num_classes=2, labeled_counts=(3, 1), feature_dim=2, iterations=10, epoch_length=5,
                               generations=3)
    refiner = DistAlign(DistAlignConfig(t_min=0.5), context)
    assert [refiner.temperature(t) for t in (2, 3, 5, 6, 9)] == pytest.approx([1.0, 0.75, 0.75, 0.5, 0.5])


def test_dist_align_state_round_trip_and_shape_check():
    running = RunningMean(3, 2, "cpu")
    running.push(torch.tensor([[0.2, 0.8]]))
    other = RunningMean(3, 2, "cpu")
    other.load_state_dict(running.state_dict())
    assert torch.equal(other.push(torch.tensor([[0.6, 0.4]])), running.push(torch.tensor([[0.6, 0.4]])))
    with pytest.raises(ValueError, match="window"):
        RunningMean(4, 2, "cpu").load_state_dict(running.state_dict())
