"""results.json's numbers from a hand-built evaluation history: the final EMA metrics of the reported
head, the median / mean of the last-k window (and its CReST form, the tail of the last generation),
the best-on-test number labelled as selected on the test set, the latest pseudo-label statistics."""

from __future__ import annotations

import pytest
from conftest import CONFIGS

from cissl.config import load_config
from cissl.evaluation.summary import row_name, summarize_run

TOP1 = [0.1, 0.5, 0.3, 0.4, 0.2]
BALANCED = [0.05, 0.45, 0.25, 0.35, 0.15]


def history(pseudo_at=(20, 30, 40)) -> list[dict]:
    """Evaluations at iterations 10..50; the balanced head scores half of the main head's top-1."""
    records = []
    for i, (top1, bal) in enumerate(zip(TOP1, BALANCED)):
        iteration = 10 * (i + 1)
        record = {"iteration": iteration, "test": {"main": {"top1": top1, "balanced_accuracy": bal},
                                                   "balanced": {"top1": top1 / 2, "balanced_accuracy": bal / 2}}}
        if iteration in pseudo_at:
            record["pseudo_labels"] = {"mask_rate": iteration / 100}
        records.append(record)
    return records


FINAL = {"test": {"main": {"top1": 0.25, "balanced_accuracy": 0.125, "per_class_accuracy": [0.5, 0.0, 0.0]},
                  "balanced": {"top1": 0.375, "balanced_accuracy": 0.5, "per_class_accuracy": [0.5, 0.5, 0.5]}}}


def summary(evaluations=None, *overrides, **options) -> dict:
    config = load_config(CONFIGS / "quickstart.yaml", ["train.report_last=3", "train.seed=4", *overrides])
    arguments = {"reported_head": "main", "labeled_counts": [40, 20, 4], "iterations": 50, "wall_time_s": 12.5,
                 "device": "cpu", **options}
    return summarize_run(config, history() if evaluations is None else evaluations, FINAL, **arguments)


def test_the_summary_holds_the_final_metrics_and_the_last_k_window_of_the_reported_head():
    results = summary()
    assert {key: results[key] for key in ("setting", "algorithm", "seed", "iterations", "evaluated_on",
                                          "reported_head", "top1", "balanced_accuracy", "per_class_accuracy",
                                          "class_groups", "heads", "wall_time_s", "device", "environments")} == {
        "setting": "quickstart", "algorithm": "fixmatch", "seed": 4, "iterations": 50, "evaluated_on": "test",
        "reported_head": "main", "top1": 0.25, "balanced_accuracy": 0.125, "per_class_accuracy": [0.5, 0.0, 0.0],
        "class_groups": {"many": [0], "medium": [1], "few": [2]}, "heads": FINAL["test"], "wall_time_s": 12.5,
        "device": "cpu", "environments": []}
    # the last 3 evaluations (iterations 30, 40, 50): top-1 0.3, 0.4, 0.2; balanced 0.25, 0.35, 0.15
    assert results["last_k"] == 3
    assert results["median_last_top1"] == 0.3 and results["mean_last_top1"] == pytest.approx(0.3)
    assert results["median_last_balanced_accuracy"] == 0.25
    assert results["mean_last_balanced_accuracy"] == pytest.approx(0.25)
    assert results["best_on_test_top1"] == {"value": 0.5, "iteration": 20, "note": "selected on the test set; not "
                                                                                   "a fair model-selection number"}
    assert results["pseudo_labels"] == {"mask_rate": 0.4}  # the latest evaluation that recorded them
    assert "val" not in results


def test_another_reported_head_is_summarised_from_its_own_numbers():
    results = summary(reported_head="balanced")
    assert (results["top1"], results["balanced_accuracy"], results["reported_head"]) == (0.375, 0.5, "balanced")
    assert results["median_last_top1"] == 0.15 and results["median_last_balanced_accuracy"] == 0.125
    assert results["best_on_test_top1"]["value"] == 0.25


@pytest.mark.parametrize("start, last_k, median", [(0, 3, 0.3), (5, 2, 0.3), (25, 1, 0.2), (45, 1, 0.2),
                                                    (50, 0, None)])
def test_a_run_with_generations_reports_the_tail_of_its_last_generation(start, last_k, median):
    """CReST: the evaluations after the last generation's start, at most half of them (at least one):
    from iteration 5, the last 2 of 5 (0.4, 0.2); from 25, 1 of 3; from 50, none is left."""
    results = summary(last_generation_start=start)
    assert results["last_k"] == last_k
    assert results["median_last_top1"] == (None if median is None else pytest.approx(median))
    assert results["best_on_test_top1"]["iteration"] == 20  # over the whole run, as labelled


def test_an_empty_history_reports_no_window_and_no_best():
    results = summary([])
    assert results["last_k"] == 0 and "pseudo_labels" not in results
    assert all(results[key] is None for key in ("median_last_top1", "mean_last_top1", "median_last_balanced_accuracy",
                                                "mean_last_balanced_accuracy", "best_on_test_top1"))


def test_validation_runs_label_their_best_and_keep_the_validation_metrics():
    final = {**FINAL, "val": {"main": {"top1": 0.75}}}
    config = load_config(CONFIGS / "quickstart.yaml", ["data.val_per_class=1", "train.evaluate_on=val"])
    results = summarize_run(config, history(pseudo_at=()), final, "main", [40, 20, 4], 50, 1.0, "cpu",
                            environments=[{"host": "a"}])
    assert results["best_on_test_top1"]["note"] == "selected on the validation split"
    assert results["val"] == {"main": {"top1": 0.75}} and results["evaluated_on"] == "val"
    assert results["environments"] == [{"host": "a"}] and "pseudo_labels" not in results


def test_a_run_started_from_another_is_named_after_both():
    config = load_config(CONFIGS / "quickstart.yaml", [], "supervised")
    assert row_name(config, None) == "supervised" and row_name(config, "fixmatch_darp") == "fixmatch_darp+supervised"
    assert summary(parent_algorithm="fixmatch_darp")["algorithm"] == "fixmatch_darp+fixmatch"
