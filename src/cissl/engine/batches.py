"""One step's batch: the streams over the pools, the augmentation and the view layout a method declares.

:class:`BatchSource` owns the labeled and unlabeled index streams, the augmentation (eager, or on CUDA
replayed from graphs) and their state, and draws exactly the views of the method's
:class:`~cissl.algorithms.base.ViewSpec`. Between generations (CReST-style methods) the labeled pool
can be extended by unlabeled images with pseudo-labels; the extension is part of the state.
"""

from __future__ import annotations

import torch

from cissl.algorithms.base import Batch, ViewSpec
from cissl.algorithms.components.class_weights import class_sampling_weights
from cissl.data.augment import BatchAugment
from cissl.data.augment_graph import GraphedViews
from cissl.data.stream import ClassBalancedStream, ImagePool, IndexStream
from cissl.engine.precision import ComputePolicy
from cissl.engine.seeds import derive_seed


class BatchSource:
    def __init__(self, data, train_config, augment_config, spec: ViewSpec, policy: ComputePolicy, seed: int):
        tc, aug = train_config, augment_config
        self.data = data
        self.spec = spec
        self.policy = policy
        self.seed = seed
        self.batch_size = tc.batch_size
        self.strong_views = tc.strong_views
        self.labeled = data.labeled
        if spec.labeled_sampling == "class_balanced":
            weights = class_sampling_weights(data.labeled.labels, data.num_classes, spec.sampling_beta)
            self.labeled_stream = ClassBalancedStream(weights, tc.batch_size, derive_seed(seed, "labeled"))
        else:
            self.labeled_stream = IndexStream(len(data.labeled), tc.batch_size, derive_seed(seed, "labeled"))
        self.unlabeled_stream = IndexStream(len(data.unlabeled), tc.batch_size * tc.mu, derive_seed(seed, "unlabeled"))
        device = policy.device
        self.augment = BatchAugment(
            data.image_size, aug.crop_padding, aug.padding_mode, aug.randaugment_ops, aug.randaugment_prob,
            aug.cutout, torch.Generator(device=device).manual_seed(derive_seed(seed, "augment")), device)
        # the views: eager, or on CUDA replayed from graphs (bit-identical, far fewer launches)
        self.views = GraphedViews(self.augment) if tc.cuda_graphs and device.type == "cuda" else self.augment
        self.additions: dict | None = None  # pool positions and pseudo-labels added to the labeled set

    @property
    def images_per_step(self) -> int:
        """Images one step pushes through the network."""
        if not self.spec.unlabeled:
            return self.batch_size
        return self.batch_size + self.unlabeled_stream.batch_size * (int(self.spec.weak) + self.strong_views)

    def next(self) -> tuple[Batch, torch.Tensor | None]:
        """Draw and augment one step's batch; returns it with the unlabeled ground truth (diagnostics)."""
        prepare = self.policy.images
        images, labels, _ = self.labeled.take(self.labeled_stream.next())
        batch = Batch(x=prepare(self.views.weak(images)), y=labels)
        truth = None
        if self.spec.unlabeled:
            u_images, truth, positions = self.data.unlabeled.take(self.unlabeled_stream.next())
            if self.spec.weak:
                batch.u_weak = prepare(self.views.weak(u_images))
            views = self.strong_views
            strong = self.views.strong(u_images.repeat(views, 1, 1, 1))  # independent draws per copy
            batch.u_strong = tuple(prepare(view) for view in strong.chunk(views))
            batch.u_index = positions
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
        base, extra = self.data.labeled, self.additions
        device = base.images.device
        images = torch.cat([base.images, self.data.unlabeled.images[extra["indices"].to(device)]])
        labels = torch.cat([base.labels, extra["labels"].to(device)])
        self.labeled = ImagePool.from_tensors(images, labels)
        self.labeled_stream = IndexStream(len(self.labeled), self.batch_size,
                                          derive_seed(self.seed, f"labeled-generation{extra['generation']}"))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = {"labeled_stream": self.labeled_stream.state_dict(),
                 "unlabeled_stream": self.unlabeled_stream.state_dict(), "augment": self.augment.state_dict()}
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
