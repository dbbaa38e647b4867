"""Figures of one run (needs the ``plots`` extra, matplotlib): learning curves, per-class accuracy
against the labeled counts, the confusion matrix, and pseudo-label use per class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cissl.data.protocol import Split
from cissl.errors import CisslError
from cissl.rundir import METRICS, RunDir, ensure_folder


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CisslError("plots need matplotlib: pip install 'cissl[plots]'") from None
    return plt


def read_evaluations(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise CisslError(f"{run_dir} has no {METRICS}")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "eval":
            records.append(record)
    return records


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the run's figures as PNG files into ``out_dir`` (default RUN_DIR/plots)."""
    plt = _pyplot()
    run = RunDir(run_dir)
    evaluations = read_evaluations(run.path)  # before the folder: a run without metrics leaves nothing behind
    out_dir = ensure_folder(Path(out_dir) if out_dir else run.plots)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    if evaluations:
        its = [r["iteration"] for r in evaluations]
        for head in evaluations[0]["test"]:
            ax.plot(its, [100 * r["test"][head]["top1"] for r in evaluations], label=f"{head} top-1")
            ax.plot(its, [100 * r["test"][head]["balanced_accuracy"] for r in evaluations], "--",
                    label=f"{head} balanced")
        ax.legend()
    else:  # a run plotted before its first evaluation (train.eval_every)
        ax.text(0.5, 0.5, "no evaluation recorded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("EMA model on the test set")
    written.append(_save(fig, out_dir / "curves.png", plt))

    if run.results.is_file():
        results = json.loads(run.results.read_text(encoding="utf-8"))
        counts = Split.load(run.split).labeled_counts
        k = len(counts)
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * k), 4))
        ax.bar(np.arange(k), [100 * a for a in results["per_class_accuracy"]])
        ax.set_xlabel("class (labeled count below)")
        ax.set_ylabel("accuracy (%)")
        if k <= 20:
            ax.set_xticks(np.arange(k), [f"{i}\n{n}" for i, n in enumerate(counts)])
        ax.set_title(f"per-class accuracy, head '{results['reported_head']}'")
        written.append(_save(fig, out_dir / "per_class_accuracy.png", plt))

        conf = np.asarray(results["confusion_matrix"], dtype=float)
        conf = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        image = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix (rows normalised)")
        fig.colorbar(image, ax=ax)
        written.append(_save(fig, out_dir / "confusion_matrix.png", plt))

    pseudo = [r["pseudo_labels"] for r in evaluations if "pseudo_labels" in r]
    if pseudo:
        last = pseudo[-1]
        k = len(last["per_class_mask_rate"])
        fig, (left, right) = plt.subplots(1, 2, figsize=(max(10, 0.7 * k), 4))
        x = np.arange(k)
        left.bar(x - 0.2, last["per_class_mask_rate"], 0.4, label="mask rate (used / seen)")
        left.bar(x + 0.2, last["per_class_used_accuracy"], 0.4, label="accuracy of used pseudo-labels")
        left.set_xlabel("true class")
        left.set_title("pseudo-labels, last evaluation interval")
        left.legend(fontsize=8)
        right.bar(x - 0.2, last["pseudo_label_distribution"], 0.4, label="used pseudo-labels (estimate)")
        right.bar(x + 0.2, last["true_distribution"], 0.4, label="true unlabeled distribution")
        right.set_xlabel("class")
        right.set_title("estimated vs true unlabeled class distribution")
        right.legend(fontsize=8)
        written.append(_save(fig, out_dir / "pseudo_labels.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
