"""Assembling a run from its config: the network, its EMA, the method, the optimizer and schedule, the batches.

Every random stream gets its own seed from the run seed (:func:`cissl.engine.seeds.derive_seed`), so
the shared parameters, the streams and the augmentation are the same whatever method runs. torch's
global generator is seeded from it too (for a method or backbone that draws without a generator of its
own; the shipped ones do not), and the trainer checkpoints its state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl import distributed
from cissl.algorithms import ALGORITHMS, Algorithm, AlgorithmContext, build_algorithm
from cissl.config import Config
from cissl.engine.batches import BatchSource, Shard
from cissl.engine.data import TrainingData
from cissl.engine.ema import EMA
from cissl.engine.optim import build_optimizer, build_scheduler
from cissl.engine.precision import ComputePolicy, configure_backends
from cissl.engine.replicas import ReplicatedModel, wrap_for_ranks
from cissl.engine.seeds import derive_seed
from cissl.models import Classifier, build_model
from cissl.models.sync_batchnorm import synchronise_batchnorm


def method_class(config: Config) -> type[Algorithm]:
    return ALGORITHMS.entry(config.algorithm.name).target


def build_network(config: Config, data: TrainingData, policy: ComputePolicy, heads=("main",),
                  stream: str = "model") -> Classifier:
    """Backbone and heads, seeded by the run seed and ``stream``, on the policy's device and layout."""
    seed = derive_seed(config.train.seed, stream) % (2 ** 31)
    model = build_model(config.model, data.channels, data.num_classes, data.mean, data.std, seed, heads)
    return policy.place(model)


def build_method(config: Config, data: TrainingData, feature_dim: int, device: torch.device) -> Algorithm:
    context = AlgorithmContext(
        num_classes=data.num_classes, labeled_counts=tuple(data.split.labeled_counts), feature_dim=feature_dim,
        iterations=config.train.iterations, epoch_length=config.train.epoch_length,
        unlabeled_pool_size=len(data.unlabeled), generations=method_class(config).generations(config.algorithm),
        device=device, seed=derive_seed(config.train.seed, "algorithm"))
    return build_algorithm(config.algorithm, context)


def generation_length(config: Config) -> int:
    """Iterations per generation (the whole run for methods without generations)."""
    return config.train.iterations // method_class(config).generations(config.algorithm)


def last_generation_start(config: Config) -> int:
    """The iteration the last generation starts from (0 for methods without generations)."""
    return config.train.iterations - generation_length(config)


@dataclass
class RunParts:
    """Everything a training loop needs, built from one config."""

    config: Config
    data: TrainingData
    policy: ComputePolicy
    model: Classifier
    ema: EMA
    algorithm: Algorithm
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: BatchSource
    step_model: Classifier | ReplicatedModel  # what the method's step calls: the network, or under DDP its replica

    def restart_schedule(self) -> None:
        """A fresh LR schedule over one generation (CReST-style generations restart it): a new LambdaLR sets
        each group's lr from its ``initial_lr`` (kept in the group since the first schedule) times factor(0)."""
        self.scheduler = build_scheduler(self.optimizer, self.config.optim, generation_length(self.config))

    def reinitialize_model(self, generation: int) -> None:
        """New weights for the network (seeded by the generation), the EMA copied from them, no momentum."""
        fresh = build_network(self.config, self.data, self.policy, self.algorithm.required_heads(self.config.algorithm),
                              stream=f"model-generation{generation}")
        self.model.load_state_dict(fresh.state_dict())
        self.ema.model.load_state_dict(fresh.state_dict())
        self.optimizer.state.clear()


def build_training(config: Config, data: TrainingData, device: torch.device) -> RunParts:
    """The parts of a training run on ``device`` (the order of construction fixes the random streams)."""
    tc = config.train
    configure_backends(tc, device)
    torch.manual_seed(derive_seed(tc.seed, "torch-global"))  # a run's draws without a generator repeat
    policy = ComputePolicy.from_config(tc, device)
    method = method_class(config)
    model = build_network(config, data, policy, method.required_heads(config.algorithm))
    if distributed.active() and tc.sync_batchnorm:  # before the EMA copy: DASO's EMA forward syncs too
        model = synchronise_batchnorm(model, device)
    ema = EMA(model, tc.ema_decay)
    if tc.compile:
        model.compile_backbone(mode=tc.compile_mode)
    algorithm = build_method(config, data, model.feature_dim, device)
    algorithm.ema_model = ema.model
    if not method.trains_backbone(config.algorithm):  # cRT: only the heads learn (the optimizer skips the rest)
        model.backbone.requires_grad_(False)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, generation_length(config))
    shard = Shard(distributed.rank(), distributed.world_size())
    batches = BatchSource(data, tc, config.augment, method.views(config.algorithm), policy, tc.seed, shard)
    return RunParts(config, data, policy, model, ema, algorithm, optimizer, scheduler, batches,
                    wrap_for_ranks(model, device))


def build_evaluation(config: Config, data: TrainingData, device: torch.device) -> tuple[Classifier, Algorithm,
                                                                                       ComputePolicy]:
    """What evaluating a checkpoint needs: the network (to load the EMA weights into), the method (its
    evaluation logits) and the policy. No optimizer, streams or augmentation."""
    policy = ComputePolicy.from_config(config.train, device)
    model = build_network(config, data, policy, method_class(config).required_heads(config.algorithm))
    model.eval()
    return model, build_method(config, data, model.feature_dim, device), policy
