"""A run's summary (``results.json``) from its evaluation history and a final evaluation."""

from __future__ import annotations

import statistics

import numpy as np

from cissl.evaluation.metrics import class_groups


def row_name(config, parent_algorithm: str | None) -> str:
    """A run's method name in results.json and the tables: ``algorithm.name``, or, for a run started
    from another run's network (``train.init_from``), ``parent+name`` (e.g. ``fixmatch_darp+crt``)."""
    return f"{parent_algorithm}+{config.algorithm.name}" if parent_algorithm else config.algorithm.name


def summarize_run(config, history: list[dict], final: dict, reported_head: str, labeled_counts, iterations: int,
                  wall_time_s: float, device: str, parent_algorithm: str | None = None,
                  environments: list[dict] | None = None, last_generation_start: int = 0) -> dict:
    """Final EMA metrics of the reported head and of every head, median / mean of the last
    ``train.report_last`` evaluations, best-on-test under its own key (labelled as selected on test).
    ``parent_algorithm``: the method of the run ``train.init_from`` started this one from (:func:`row_name`);
    ``environments``: the code and machines it trained on (:mod:`cissl.environment`), in order;
    ``last_generation_start``: for a method with generations (CReST), the iteration its last generation
    starts from. The last-k window is then the tail of the evaluations after it, at most half of them (as
    the config allows at most half of a run's): a network an earlier generation trained is not the run's
    result, and the last generation's first evaluations score a network that has just restarted from fresh
    weights. So ``last_k`` can be less than ``train.report_last``."""
    tc = config.train
    head = reported_head
    report = final["test"][head]
    curve = [r["test"][head]["top1"] for r in history]
    curve_bal = [r["test"][head]["balanced_accuracy"] for r in history]
    candidates = [i for i, r in enumerate(history) if r["iteration"] > last_generation_start]
    k = tc.report_last if last_generation_start == 0 else min(tc.report_last, max(1, len(candidates) // 2))
    window = candidates[-k:]  # k >= 1, so an empty history gives an empty window
    last, last_bal = [curve[i] for i in window], [curve_bal[i] for i in window]
    best = int(np.argmax(curve)) if curve else None
    results = {
        "setting": config.name,
        "algorithm": row_name(config, parent_algorithm),
        "seed": tc.seed,
        "iterations": iterations,
        "evaluated_on": tc.evaluate_on,
        "reported_head": head,
        **report,
        "class_groups": class_groups(labeled_counts),
        "heads": final["test"],
        "last_k": len(last),
        "median_last_top1": statistics.median(last) if last else None,
        "mean_last_top1": statistics.fmean(last) if last else None,
        "median_last_balanced_accuracy": statistics.median(last_bal) if last_bal else None,
        "mean_last_balanced_accuracy": statistics.fmean(last_bal) if last_bal else None,
        "best_on_test_top1": None if best is None else {
            "value": curve[best], "iteration": history[best]["iteration"],
            "note": "selected on the test set; not a fair model-selection number" if tc.evaluate_on == "test"
            else "selected on the validation split"},
        "wall_time_s": wall_time_s,
        "device": device,
        "environments": list(environments or []),
    }
    if "val" in final:
        results["val"] = final["val"]
    pseudo = [r["pseudo_labels"] for r in history if "pseudo_labels" in r]
    if pseudo:
        results["pseudo_labels"] = pseudo[-1]
    return results
