"""Classification metrics for imbalanced problems, from a confusion matrix."""

from __future__ import annotations

import math

import numpy as np


def confusion_matrix(predictions, labels, num_classes: int) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as j."""
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_groups(labeled_counts) -> dict[str, list[int]]:
    """Many / medium / few: classes sorted by labeled count (descending, ties by index) cut into
    three near-equal thirds (10 classes: 4 / 3 / 3; 100 classes: 34 / 33 / 33)."""
    counts = np.asarray(labeled_counts)
    order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))
    many, medium, few = np.array_split(np.asarray(order, dtype=np.int64), 3)
    return {"many": many.tolist(), "medium": medium.tolist(), "few": few.tolist()}


def summarize_confusion(conf: np.ndarray, labeled_counts=None) -> dict:
    """top-1, balanced accuracy (mean per-class recall), per-class recall, geometric mean of the
    recalls, many / medium / few accuracy (mean recall within each third), confusion matrix."""
    conf = np.asarray(conf, dtype=np.int64)
    total = conf.sum()
    support = conf.sum(axis=1)
    recall = np.divide(np.diag(conf), support, out=np.zeros(len(conf)), where=support > 0)
    present = support > 0
    report = {
        "top1": float(np.trace(conf) / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": [float(r) for r in recall],
        "geometric_mean": geometric_mean(recall[present]),
        "confusion_matrix": conf.tolist(),
    }
    if labeled_counts is not None:
        for group, classes in class_groups(labeled_counts).items():
            members = [k for k in classes if present[k]]
            report[f"{group}_accuracy"] = float(recall[members].mean()) if members else 0.0
    return report


def geometric_mean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or (values <= 0).any():
        return 0.0
    return float(math.exp(np.log(values).mean()))
