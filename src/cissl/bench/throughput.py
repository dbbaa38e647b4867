"""Throughput of a configured training step against its floor, measured in one process.

- floor: forward + backward + SGD step of the bare network (backbone and standard head, the run's
  memory format and precision) on exactly as many images as one training step pushes through it,
  with a plain cross-entropy on random labels;
- augment: drawing and augmenting one step's batch (labeled weak, unlabeled weak, V strong views);
- step: the full training step of the configured algorithm (batch draw, augmentation, the
  algorithm's step, backward, SGD, EMA, the algorithm's after-step hook).

The three are timed in interleaved rounds and the median round is reported, so slow drifts of a
shared machine hit all three alike; ``ratio = step / floor`` is the number to compare across
machines.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from cissl import distributed
from cissl.data.protocol import Split, split_counts
from cissl.data.sources import SOURCES
from cissl.data.stream import ImagePool
from cissl.engine.assemble import build_network, build_training
from cissl.engine.data import TrainingData, prepare_rank_data
from cissl.engine.optim import build_optimizer
from cissl.engine.precision import resolve_device
from cissl.engine.trainer import Trainer
from cissl.environment import device_name
from cissl.errors import ConfigError


def synthetic_data(config, device: torch.device, max_pool: int = 20_000) -> TrainingData:
    """Random uint8 images with the data set's shape, class count and the setting's split sizes."""
    data = config.data
    info = SOURCES[data.dataset]
    if info.given_split:
        raise ConfigError(f"--synthetic needs a benchmark data set's shape; data.dataset={data.dataset} gets its "
                          f"shape from the data: drop --synthetic")
    channels, size, k = info.channels, data.image_size or info.image_size, info.num_classes
    # data.labeled_fraction (Small-ImageNet-127) takes the data's class sizes: 1300 each here (ILSVRC's most)
    labeled_counts, unlabeled_counts = split_counts(data, k, [1300] * k)
    rng = np.random.default_rng(0)
    n_l = sum(labeled_counts)
    if unlabeled_counts is None:
        n_u = max_pool
    else:
        n_u = min(max_pool, sum(unlabeled_counts) + (n_l if data.unlabeled_includes_labeled else 0))

    def pool(n, labels):
        return ImagePool(rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8), labels, device)

    labeled = pool(n_l, np.repeat(np.arange(k), labeled_counts))
    unlabeled = pool(n_u, rng.integers(0, k, n_u) if unlabeled_counts is not None else None)
    n_val = data.val_per_class * k  # the setting's balanced validation split (SEVAL fits there)
    val = pool(n_val, np.repeat(np.arange(k), data.val_per_class)) if n_val else None
    split = Split(np.arange(n_l), np.arange(n_u), np.arange(n_val), labeled_counts, unlabeled_counts)
    mean, std = (0.5,) * channels, (0.25,) * channels
    return TrainingData([str(i) for i in range(k)], channels, size, mean, std, split, labeled,
                        unlabeled, pool(256, rng.integers(0, k, 256)), val)


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn, n: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return (time.perf_counter() - start) / n


def model_label(model_config) -> str:
    """The network as the table names it: WRN-depth-widen, ResNet-50, else the backbone's registered name."""
    if model_config.name == "wrn":
        return f"WRN-{model_config.depth}-{model_config.widen}"
    return {"resnet50": "ResNet-50"}.get(model_config.name, model_config.name)


def measure(config, *, steps: int, warmup: int, rounds: int, synthetic: bool = False,
            device: torch.device | None = None) -> dict:
    """Time floor, augmentation and full step of ``config``; returns the JSON-able summary. Inside a
    process group (torchrun) the step is one DDP rank's: its share of the batch, gradients all-reduced.
    The counts' defaults are :func:`cissl.api.throughput`'s (``cissl bench throughput``'s)."""
    for flag, value, least in (("--steps", steps, 1), ("--rounds", rounds, 1), ("--warmup", warmup, 0)):
        if value < least:  # before the data load and the model
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    device = device or resolve_device(config.train.device)
    data = synthetic_data(config, device) if synthetic else prepare_rank_data(config, device)
    parts = build_training(config, data, device)
    trainer = Trainer(parts)
    policy = parts.policy
    tc = config.train
    images_per_step = parts.batches.images_per_step

    # floor: a fresh copy of the network with only the standard head, same layout / precision
    bare = build_network(config, data, policy, stream="bench-floor")
    if tc.compile:
        bare.compile_backbone(mode=tc.compile_mode)
    bare.train()
    optimizer = build_optimizer(bare, config.optim)
    gen = torch.Generator(device=device).manual_seed(0)
    x = policy.images(torch.rand(images_per_step, data.channels, data.image_size, data.image_size, generator=gen,
                                 device=device))
    y = torch.randint(0, data.num_classes, (images_per_step,), generator=gen, device=device)

    def floor_step():
        with policy.autocast():
            loss = torch.nn.functional.cross_entropy(bare(x).logits["main"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def augment_step():
        parts.batches.next()

    timer = _Timer(device)
    for _ in range(warmup):
        floor_step()
        trainer.train_step()
    per_round = max(1, steps // rounds)
    floors, augments, full = [], [], []
    for _ in range(rounds):
        floors.append(timer.time(floor_step, per_round))
        augments.append(timer.time(augment_step, per_round))
        full.append(timer.time(trainer.train_step, per_round))
    floor_s, augment_s, step_s = (statistics.median(v) for v in (floors, augments, full))
    return {
        "algorithm": config.algorithm.name,
        "setting": config.name,
        "model": model_label(config.model),
        "image_shape": [data.channels, data.image_size, data.image_size],
        "images_per_step": images_per_step,
        "precision": tc.precision,
        "channels_last": tc.channels_last,
        "compile": tc.compile,
        "compile_mode": tc.compile_mode if tc.compile else None,
        "fused_sgd": config.optim.fused,
        "cuda_graphs": parts.batches.views is not parts.batches.augment,
        "device": device_name(device),
        "rounds": rounds,
        "steps_per_round": per_round,
        "steps_timed": per_round * rounds,
        "floor_s": floor_s,
        "augment_s": augment_s,
        "step_s": step_s,
        "ratio": step_s / floor_s,
        "augment_fraction": augment_s / step_s,
        "images_per_s": images_per_step / step_s,
        "it_per_s": 1.0 / step_s,
        "synthetic_data": synthetic,
        "ddp_ranks": distributed.world_size() if distributed.active() else None,  # None: no process group
    }


def format_table(result: dict) -> str:
    rows = [
        (f"floor: network fwd+bwd+SGD on {result['images_per_step']} images", f"{result['floor_s']:.4f} s/step"),
        ("augmentation of one step's batch",
         f"{result['augment_s']:.4f} s/step ({100 * result['augment_fraction']:.1f} % of the step)"),
        (f"full {result['algorithm']} training step", f"{result['step_s']:.4f} s/step"),
        ("ratio step / floor", f"{result['ratio']:.3f}"),
        ("throughput", f"{result['images_per_s']:.1f} images/s, {result['it_per_s']:.2f} it/s"),
    ]
    width = max(len(name) for name, _ in rows)
    head = (f"{result['algorithm']} on {result['setting'] or 'the configured data'}: {result['model']}, "
            f"{'x'.join(map(str, result['image_shape']))}, {result['precision']}, "
            f"channels_last={result['channels_last']}, compile={result['compile_mode'] or False}, "
            f"cuda_graphs={result['cuda_graphs']}, fused_sgd={result['fused_sgd']}\n"
            f"device: {result['device']}; median of {result['rounds']} interleaved rounds of "
            f"{result['steps_per_round']} steps each ({result['steps_timed']} steps of each timed)"
            + (f"; the step of one of {result['ddp_ranks']} DDP ranks" if result.get("ddp_ranks") else ""))
    return head + "\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
