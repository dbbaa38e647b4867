"""The algorithm contract: one training step in, a scalar loss and metrics out.

An algorithm never builds data, models, optimizers or loggers; it receives a :class:`Batch` of
augmented views (and the model) and returns a :class:`StepOutput`. It owns its own state
(queues, banks, running estimates) through ``state_dict`` / ``load_state_dict``. Unlabeled
ground truth never reaches it: the trainer scores the pseudo-labels an algorithm reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cissl.models import Classifier


@dataclass
class Batch:
    """One step's views; images are float in [0, 1]. ``u_strong`` holds V views of the same images."""

    x: torch.Tensor
    y: torch.Tensor
    u_weak: torch.Tensor | None = None
    u_strong: tuple[torch.Tensor, ...] = ()
    u_index: torch.Tensor | None = None  # positions in the unlabeled pool


@dataclass
class StepOutput:
    """``loss`` to back-propagate; ``metrics`` (0-d tensors or floats) to log; pseudo-labels for diagnostics."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)
    pseudo_labels: torch.Tensor | None = None  # (B_u,) predicted class per unlabeled image
    mask: torch.Tensor | None = None           # (B_u,) bool, which pseudo-labels the loss used


@dataclass(frozen=True)
class AlgorithmContext:
    """What an algorithm may know about the run (never the unlabeled labels)."""

    num_classes: int
    labeled_counts: tuple[int, ...]
    feature_dim: int
    iterations: int
    epoch_length: int
    device: torch.device = torch.device("cpu")
    seed: int = 0  # for an algorithm's own random draws (derived from the run seed)


@dataclass
class Views:
    """Features and logits of one concatenated forward, sliced into the blocks of the batch."""

    labeled: torch.Tensor
    weak: torch.Tensor | None
    strong: tuple[torch.Tensor, ...]
    labeled_logits: dict[str, torch.Tensor]
    weak_logits: dict[str, torch.Tensor]
    strong_logits: tuple[dict[str, torch.Tensor], ...]


def forward_views(model: Classifier, batch: Batch) -> Views:
    """One forward of [x; u_w; u_s1; ...; u_sV] (BN sees the whole batch, spec 5.1).

    Features and logits are cut with the same row ranges, so row i of every block belongs to the
    same image - the alignment the authors' released code breaks (spec 5.1).
    """
    blocks = [batch.x]
    if batch.u_weak is not None:
        blocks.append(batch.u_weak)
        blocks.extend(batch.u_strong)
    sizes = [len(b) for b in blocks]
    out = model(torch.cat(blocks) if len(blocks) > 1 else blocks[0])
    feats = out.features.split(sizes)
    logits = {name: value.split(sizes) for name, value in out.logits.items()}
    per_block = [{name: parts[i] for name, parts in logits.items()} for i in range(len(sizes))]
    if batch.u_weak is None:
        return Views(feats[0], None, (), per_block[0], {}, ())
    return Views(feats[0], feats[1], tuple(feats[2:]), per_block[0], per_block[1], tuple(per_block[2:]))


def masked_view_loss(strong_logits: list[torch.Tensor] | tuple[torch.Tensor, ...], targets: torch.Tensor,
                     weights: torch.Tensor) -> torch.Tensor:
    """(1 / (V * B_u)) * sum_v sum_i w_i * CE(logits_v,i, target_i)  (FixMatch Eq. 2; SeMi Eqs. 5, 9, 11).

    ``weights`` already include the mask (0 for unused samples); every strong view of an image
    shares its target and weight.
    """
    total = strong_logits[0].new_zeros(())
    for logits in strong_logits:
        total = total + (F.cross_entropy(logits, targets, reduction="none") * weights).sum()
    return total / (len(strong_logits) * len(targets))


class Algorithm:
    """Base class. Subclasses set ``head_names`` and implement :meth:`step`."""

    head_names: tuple[str, ...] = ("main",)
    uses_unlabeled: bool = True

    def __init__(self, config, context: AlgorithmContext):
        self.config = config
        self.context = context

    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        """Heads the model must have for this config (built in this order after ``main``)."""
        return cls.head_names

    @property
    def reported_head(self) -> str:
        """The head whose accuracy the run reports as its result."""
        return "main"

    def step(self, model: Classifier, batch: Batch, iteration: int) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """Called after the optimizer and EMA updates of ``iteration`` (0-based)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but the checkpoint holds {list(state)}")
