"""One step's batch: the streams over the pools, the augmentation and the view layout a method declares.

:class:`BatchSource` owns the labeled and unlabeled index streams, the augmentation (eager, or on CUDA
replayed from graphs) and their state, and draws exactly the views of the method's
:class:`~cissl.algorithms.base.ViewSpec`. Between generations (CReST-style methods) the labeled pool
can be extended by unlabeled images with pseudo-labels; the extension is part of the state.

Under DistributedDataParallel every rank runs the same streams and draws the augmentation of the whole
global batch from the same seeded generators, then keeps its own block of rows (:class:`Shard`):
rank r of W takes the r-th of W equal blocks of each batch and of each view's random draws. So the
ranks train on disjoint images, the union of their batches is the batch a single process with the
global batch size draws (image for image, augmentation for augmentation), and the streams' state is
the same on every rank (a checkpoint of rank 0 resumes any rank, at any world size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.base import Batch, ViewSpec
from cissl.algorithms.components.class_weights import class_sampling_weights
from cissl.data.augment import BatchAugment
from cissl.data.augment_graph import GraphedViews
from cissl.data.stream import ClassBalancedStream, IndexStream
from cissl.engine.precision import ComputePolicy
from cissl.engine.seeds import derive_seed


@dataclass(frozen=True)
class Shard:
    """This process's rows of every global batch: rank ``rank`` of ``world`` takes the rank-th of
    ``world`` equal blocks (of each of ``copies`` consecutive copies, for stacked strong views)."""

    rank: int = 0
    world: int = 1

    def take(self, tensor: torch.Tensor, dim: int = 0, copies: int = 1) -> torch.Tensor:
        if self.world == 1:
            return tensor
        size = tensor.shape[dim] // copies
        block = size // self.world
        parts = [part.narrow(dim, self.rank * block, block) for part in tensor.split(size, dim)]
        return parts[0] if copies == 1 else torch.cat(parts, dim)


def global_batch_size(train_config, world: int) -> int:
    """Labeled images per step over all ranks: ``train.batch_size`` (batch_scope global) or that per rank."""
    return train_config.batch_size * (world if train_config.batch_scope == "per_rank" else 1)


class BatchSource:
    def __init__(self, data, train_config, augment_config, spec: ViewSpec, policy: ComputePolicy, seed: int,
                 shard: Shard = Shard()):
        tc, aug = train_config, augment_config
        self.data = data
        self.spec = spec
        self.policy = policy
        self.seed = seed
        self.shard = shard
        self.batch_size = global_batch_size(tc, shard.world)  # every stream draws the global batch
        self.strong_views = tc.strong_views
        self.labeled = data.labeled
        if spec.labeled_sampling == "class_balanced":
            weights = class_sampling_weights(data.labeled.labels, data.num_classes, spec.sampling_beta)
            self.labeled_stream = ClassBalancedStream(weights, self.batch_size, derive_seed(seed, "labeled"))
        else:
            self.labeled_stream = IndexStream(len(data.labeled), self.batch_size, derive_seed(seed, "labeled"))
        self.unlabeled_stream = IndexStream(len(data.unlabeled), self.batch_size * tc.mu,
                                            derive_seed(seed, "unlabeled"))
        self.balanced_stream = None  # ViewSpec.balanced_labeled: class-balanced labeled draws, strong view
        if spec.balanced_labeled:
            weights = class_sampling_weights(data.labeled.labels, data.num_classes, 1.0)
            self.balanced_stream = ClassBalancedStream(weights, self.batch_size, derive_seed(seed, "labeled-balanced"))
        device = policy.device
        self.augment = BatchAugment(
            data.image_size, aug.crop_padding, aug.padding_mode, aug.randaugment_ops, aug.randaugment_prob,
            aug.cutout, torch.Generator(device=device).manual_seed(derive_seed(seed, "augment")), device,
            horizontal_flip=aug.horizontal_flip)
        # the views: eager, or on CUDA replayed from graphs (bit-identical, far fewer launches)
        self.views = GraphedViews(self.augment) if tc.cuda_graphs and device.type == "cuda" else self.augment
        self.additions: dict | None = None  # pool positions and pseudo-labels added to the labeled set

    @property
    def images_per_step(self) -> int:
        """Images one step pushes through this process's network."""
        per_rank = self.batch_size // self.shard.world
        if not self.spec.unlabeled:  # (CoSSL's class-balanced batch only passes its EMA network, as DASO's
            return per_rank           # queue batch: not counted)
        unlabeled = self.unlabeled_stream.batch_size // self.shard.world
        return per_rank + unlabeled * (int(self.spec.weak) + self.strong_views)

    def _view(self, kind: str, images: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """The weak or strong view of this rank's images: the draws of the global batch, this rank's share."""
        draw = self.augment.draw_weak if kind == "weak" else self.augment.draw_strong
        params = draw(images.shape[0] * self.shard.world)
        params = {key: self.shard.take(value, -1, copies) for key, value in params.items()}  # samples: last dim
        apply = self.views.apply_weak if kind == "weak" else self.views.apply_strong
        return apply(images, params)

    def next(self) -> tuple[Batch, torch.Tensor | None]:
        """Draw and augment one step's batch (this rank's rows); returns it with the unlabeled ground
        truth (diagnostics)."""
        prepare, shard = self.policy.images, self.shard
        images, labels, _ = self.labeled.take(shard.take(self.labeled_stream.next()))
        batch = Batch(x=prepare(self._view("weak", images)), y=labels)
        truth = None
        if self.spec.unlabeled:
            u_images, truth, positions = self.data.unlabeled.take(shard.take(self.unlabeled_stream.next()))
            if self.spec.weak:
                batch.u_weak = prepare(self._view("weak", u_images))
            views = self.strong_views
            strong = self._view("strong", u_images.repeat(views, 1, 1, 1), views)  # independent draws per copy
            batch.u_strong = tuple(prepare(view) for view in strong.chunk(views))
            batch.u_index = positions
        if self.balanced_stream is not None:
            b_images, batch.y_balanced, _ = self.data.labeled.take(shard.take(self.balanced_stream.next()))
            batch.x_balanced = prepare(self._view("strong", b_images))
        return batch, truth

    # ------------------------------------------------------------------ generations
    def set_labeled_additions(self, indices: torch.Tensor, labels: torch.Tensor, generation: int) -> None:
        """The labeled pool becomes the run's labeled images plus the unlabeled images at pool positions
        ``indices`` labeled ``labels`` (replacing earlier additions); its stream starts afresh, seeded by
        the run seed and ``generation``."""
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if indices.shape != labels.shape or indices.ndim != 1:
            raise ValueError(f"labeled additions: {tuple(indices.shape)} indices for {tuple(labels.shape)} labels")
        self.additions = {"indices": indices, "labels": labels, "generation": int(generation)}
        self._apply_additions()

    def _apply_additions(self) -> None:
        extra = self.additions
        self.labeled = self.data.labeled.extended(self.data.unlabeled, extra["indices"], extra["labels"])
        self.labeled_stream = IndexStream(len(self.labeled), self.batch_size,
                                          derive_seed(self.seed, f"labeled-generation{extra['generation']}"))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {"labeled_stream": self.labeled_stream.state_dict(),
                 "unlabeled_stream": self.unlabeled_stream.state_dict(), "augment": self.augment.state_dict()}
        if self.balanced_stream is not None:
            state["balanced_stream"] = self.balanced_stream.state_dict()
        if self.additions is not None:
            state["additions"] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                                  for k, v in self.additions.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if "additions" in state:
            self.additions = dict(state["additions"])
            self._apply_additions()
        self.labeled_stream.load_state_dict(state["labeled_stream"])
        self.unlabeled_stream.load_state_dict(state["unlabeled_stream"])
        self.augment.load_state_dict(state["augment"])
        if self.balanced_stream is not None:
            self.balanced_stream.load_state_dict(state["balanced_stream"])
