"""Predict a pool of uint8 images with a model and summarise the predictions per head."""

from __future__ import annotations

import numpy as np
import torch

from cissl import distributed
from cissl.evaluation.metrics import confusion_matrix, summarize_confusion


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int, policy) -> dict[str, torch.Tensor]:
    """Logits of every head for uint8 images (N, C, H, W) under a :class:`~cissl.engine.precision.ComputePolicy`;
    returns head -> (N, K) CPU float tensor."""
    logits, _ = predict_with_features(model, images, batch_size, policy, features=False)
    return logits


@torch.no_grad()
def predict_with_features(model, images: torch.Tensor, batch_size: int, policy, features: bool = True):
    """(head -> (N, K) logits, (N, D) embeddings or None), on the CPU, model in eval mode. Under DDP each
    rank predicts its share of the images and every rank gets all predictions (the ranks' models agree)."""
    count = len(images)
    first, stop = distributed.shard_bounds(count)
    was_training = model.training
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    embeddings: list[torch.Tensor] = []
    try:
        for start in range(first, stop, batch_size) or [first]:  # an empty share still gives its shapes
            x = policy.images(images[start:min(start + batch_size, stop)].float().div_(255.0))
            with policy.autocast():
                out = model(x)
            for name, logits in out.logits.items():
                outputs.setdefault(name, []).append(logits.float().cpu())
            if features:
                embeddings.append(out.features.float().cpu())
    finally:
        model.train(was_training)
    logits = {name: distributed.gather_shards(torch.cat(parts), count) for name, parts in outputs.items()}
    return logits, distributed.gather_shards(torch.cat(embeddings), count) if features else None


BRIEF_KEYS = ("top1", "balanced_accuracy")  # what a periodic evaluation records of each head's report
SPLITS = ("test", "val")  # the pools evaluate_model scores, and its record's keys


def _brief_report(report: dict) -> dict:
    return {k: report[k] for k in BRIEF_KEYS}


def brief(record: dict) -> dict:
    """An :func:`evaluate_model` record cut to the periodic one: each split's heads keep ``BRIEF_KEYS``;
    other entries (e.g. ``iteration``) are kept as they are."""
    return {key: {head: _brief_report(report) for head, report in value.items()} if key in SPLITS else value
            for key, value in record.items()}


def evaluate_logits(logits: dict[str, torch.Tensor], labels, num_classes: int, labeled_counts,
                    full: bool = False) -> dict[str, dict]:
    """Per head: top-1 and balanced accuracy (the full report with ``full``)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    result = {}
    for name, head_logits in logits.items():
        conf = confusion_matrix(head_logits.argmax(dim=1).numpy(), labels, num_classes)
        report = summarize_confusion(conf, labeled_counts)
        result[name] = report if full else _brief_report(report)
    return result


def evaluate_model(model, algorithm, data, policy, batch_size: int, full: bool = False) -> dict:
    """The model on the test pool (and the validation pool, if the run holds one out): every logits
    the method's ``evaluation_logits`` returns, scored; keyed ``test`` / ``val``. Under
    ``train.evaluate_on: val`` the test pool is the validation split, scored once, under ``test``."""
    record = {}
    for split_name, pool in zip(SPLITS, (data.test, data.val)):
        if pool is None or (split_name == "val" and pool is data.test):
            continue
        logits = algorithm.evaluation_logits(predict(model, pool.images, batch_size, policy))
        record[split_name] = evaluate_logits(logits, pool.labels, data.num_classes, data.split.labeled_counts, full)
    return record
