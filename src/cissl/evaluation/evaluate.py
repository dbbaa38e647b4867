"""Predict a pool of uint8 images with a model and summarise the predictions per head."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cissl.evaluation.metrics import confusion_matrix, summarize_confusion


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int, autocast=None, channels_last: bool = False):
    """Logits of every head for uint8 images (N, C, H, W); returns head -> (N, K) CPU float tensor."""
    was_training = model.training
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float().div_(255.0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(x)
            for name, logits in out.logits.items():
                outputs.setdefault(name, []).append(logits.float().cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in outputs.items()}


def evaluate_logits(logits: dict[str, torch.Tensor], labels, num_classes: int, labeled_counts,
                    full: bool = False) -> dict[str, dict]:
    """Per head: top-1 and balanced accuracy (the full report with ``full``)."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    result = {}
    for name, head_logits in logits.items():
        conf = confusion_matrix(head_logits.argmax(dim=1).numpy(), labels, num_classes)
        report = summarize_confusion(conf, labeled_counts)
        if not full:
            report = {k: report[k] for k in ("top1", "balanced_accuracy")}
        result[name] = report
    return result
