"""The algorithm contract (v2): what the engine gives a method, what the method gives back, when it is called.

``docs/algorithms.md`` is the guide (how to add a method). In short:

- The engine draws a :class:`Batch` of the views the method declares (:meth:`Algorithm.views`),
  calls :meth:`Algorithm.step` (under the run's precision policy), back-propagates the returned
  loss, steps the optimizer, the LR schedule and the EMA, then calls the hooks: :meth:`after_step`
  every step, each :class:`Periodic` hook every ``every`` steps, :meth:`on_epoch_end` after the
  last step of every epoch (``train.epoch_length`` steps), then :meth:`on_epoch_pool` with the EMA
  model's predictions on the unlabeled pool (methods that ask for them: SAW, ADSH), every
  :meth:`validation_every` steps :meth:`on_validation` with the EMA model's predictions on the
  validation split (SEVAL), at :meth:`stage_iterations` :meth:`on_stage` with its predictions on the
  labeled images and the pool, which may return new head weights (CoSSL), and
  :meth:`on_generation_end` between generations (methods that declare more than one, like CReST).
- Evaluation scores the logits :meth:`evaluation_logits` returns (default: every head's raw
  logits) and reports :attr:`reported_head`.
- A method never builds data, models, optimizers or loggers; it owns its own state (banks,
  queues, estimates, generators) through ``state_dict`` / ``load_state_dict``, which the engine
  checkpoints, so a resumed run continues bit for bit on CPU. Unlabeled ground truth never
  reaches it: the engine scores the pseudo-labels it reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from cissl.models import Classifier


@dataclass(frozen=True)
class ViewSpec:
    """The views of a step's images a method takes (checked against the config before a run starts).

    ``unlabeled``: whether it takes unlabeled images at all (``mu * B`` per step, each with its pool
    position). ``weak``: one weakly augmented view per unlabeled image. ``strong_views``: the
    numbers of strong views per unlabeled image it accepts (``train.strong_views`` must be one of
    them; None: any). ``weak_pass``: ``joint`` puts the weak view into the one forward with
    gradients (BN sees the whole batch), ``no_grad`` runs it in a separate forward without
    gradients first (:func:`cissl.algorithms.components.views.forward_views` does either).
    ``labeled_sampling``: ``shuffled`` walks permutations of the labeled set; ``class_balanced`` draws
    each labeled image with replacement, with probability proportional to its class's weight
    (1 / N_k, or the effective number's (1 - beta) / (1 - beta^N_k) for ``sampling_beta`` < 1; cRT).
    ``balanced_labeled``: a second labeled batch of B images every step, drawn class-balanced with
    replacement (weights 1 / N_k) from its own stream and strongly augmented (``Batch.x_balanced``,
    ``Batch.y_balanced``; CoSSL's tail-class feature enhancement).
    """

    unlabeled: bool = True
    weak: bool = True
    strong_views: tuple[int, ...] | None = None
    weak_pass: str = "joint"
    labeled_sampling: str = "shuffled"
    sampling_beta: float = 1.0
    balanced_labeled: bool = False

    def __post_init__(self):
        if self.weak_pass not in ("joint", "no_grad"):
            raise ValueError(f"ViewSpec.weak_pass must be 'joint' or 'no_grad', got {self.weak_pass!r}")
        if self.labeled_sampling not in ("shuffled", "class_balanced"):
            raise ValueError(f"ViewSpec.labeled_sampling must be 'shuffled' or 'class_balanced', "
                             f"got {self.labeled_sampling!r}")


@dataclass
class Batch:
    """One step's views; images are float in [0, 1] on the training device.

    ``u_strong`` holds V views of the same unlabeled images, each an independent draw; row i of
    ``u_weak``, of every ``u_strong[v]`` and of ``u_index`` belongs to the same image. ``u_index`` is
    that image's position in the unlabeled pool (0 .. ``context.unlabeled_pool_size`` - 1), for
    methods that keep per-image state over the pool (DARP, CReST, SAW, ...).
    """

    x: torch.Tensor
    y: torch.Tensor
    u_weak: torch.Tensor | None = None
    u_strong: tuple[torch.Tensor, ...] = ()
    u_index: torch.Tensor | None = None
    x_balanced: torch.Tensor | None = None  # ViewSpec.balanced_labeled: class-balanced labeled images, strong view
    y_balanced: torch.Tensor | None = None


@dataclass
class StepOutput:
    """``loss`` to back-propagate; ``metrics`` (0-d tensors or floats) to log; pseudo-labels for diagnostics."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)
    pseudo_labels: torch.Tensor | None = None  # (B_u,) predicted class per unlabeled image
    mask: torch.Tensor | None = None           # (B_u,) bool, which pseudo-labels the loss used


@dataclass(frozen=True)
class AlgorithmContext:
    """What a method may know about the run (never the unlabeled labels)."""

    num_classes: int
    labeled_counts: tuple[int, ...]
    feature_dim: int
    iterations: int
    epoch_length: int
    unlabeled_pool_size: int = 0
    generations: int = 1  # of the run (``iterations / generations`` steps each)
    device: torch.device = torch.device("cpu")
    seed: int = 0  # for a method's own random draws (derived from the run seed)


@dataclass(frozen=True)
class Periodic:
    """A hook the engine runs after every ``every``-th step: ``run(iteration)`` with the 0-based
    iteration just finished, when ``(iteration + 1) % every == 0``."""

    every: int
    run: Callable[[int], None]


@dataclass
class PoolPredictions:
    """The EMA model's predictions on the whole unlabeled pool (no augmentation, eval mode), row i =
    pool position i: every head's logits and the embeddings, as float32 CPU tensors."""

    logits: dict[str, torch.Tensor]
    features: torch.Tensor


@dataclass
class LabeledPredictions(PoolPredictions):
    """The EMA model's predictions on the labeled images (as :class:`PoolPredictions`), with their labels
    (int64, CPU), row for row."""

    labels: torch.Tensor


@dataclass
class HeadWeights:
    """New weights for one head, which the engine loads into the network (``weights``) and into its EMA
    (``ema_weights``): a ``Linear``'s ``state_dict`` each (``weight`` (K, D), ``bias`` (K,))."""

    head: str
    weights: dict[str, torch.Tensor]
    ema_weights: dict[str, torch.Tensor]


@dataclass
class ValidationPredictions:
    """The EMA model's predictions on the validation split (``data.val_per_class`` images of every
    class, held out of training; eval mode, no augmentation): every head's logits as float32 CPU
    tensors, and the images' labels (int64, CPU), row for row."""

    logits: dict[str, torch.Tensor]
    labels: torch.Tensor


@dataclass
class GenerationUpdate:
    """What a method asks of the engine between two generations.

    ``labeled_indices`` (pool positions) with ``labels`` join the labeled set for the next
    generation, replacing the previous generation's additions; the LR schedule restarts; with
    ``reinitialize_model`` the network, its EMA and the optimizer start afresh (seeded by the
    run seed and the generation).
    """

    labeled_indices: torch.Tensor
    labels: torch.Tensor
    reinitialize_model: bool = False


class Hooks:
    """The per-step, periodic and per-epoch hooks and the state of anything that takes part in a step
    (a method, or a part a method is composed of). All default to doing nothing."""

    def after_step(self, iteration: int) -> None:
        """Called after the optimizer, LR-schedule and EMA updates of ``iteration`` (0-based)."""

    def periodic(self) -> list[Periodic]:
        """Hooks to run every N steps (after :meth:`after_step`, in this order)."""
        return []

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last step of epoch ``epoch`` (0-based), after the periodic hooks."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state but the checkpoint holds {list(state)}")


class Algorithm(Hooks):
    """Base class of a method. Subclasses implement :meth:`step`; the rest has defaults."""

    def __init__(self, config, context: AlgorithmContext):
        self.check_installed(config)  # here too for what builds a method without a training run (evaluate)
        self.config = config
        self.context = context
        # the EMA network, attached by the engine for methods that extract features with it (DASO's queue);
        # its weights follow the engine's EMA update after every step; None outside training
        self.ema_model: Classifier | None = None

    # ------------------------------------------------------------------ declarations (from the config alone)
    @classmethod
    def views(cls, config) -> ViewSpec:
        """The views this method takes; the default: labeled, weak and any number of strong views."""
        return ViewSpec()

    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        """Heads the model must have for this config (built in this order after ``main``)."""
        return ("main",)

    @classmethod
    def generations(cls, config) -> int:
        """Generations of the run (``train.iterations`` split evenly between them); 1 for most methods."""
        return 1

    @classmethod
    def trains_backbone(cls, config) -> bool:
        """False for methods that train only the heads on a frozen network started from another run
        (``train.init_from``; cRT): the backbone gets no gradient and stays in eval mode."""
        return True

    @classmethod
    def pool_each_epoch(cls, config) -> bool:
        """Whether the method sees the EMA model's predictions on the whole unlabeled pool after every
        epoch (:meth:`on_epoch_pool`; SAW's class weights, ADSH's thresholds); False for most methods."""
        return False

    @classmethod
    def validation_every(cls, config) -> int:
        """Every how many steps the method sees the EMA model's predictions on the validation split
        (:meth:`on_validation`; SEVAL fits its offsets and thresholds there), 0 for never (most methods).
        A method that returns more than 0 needs ``data.val_per_class >= 1`` (checked up front)."""
        return 0

    @classmethod
    def check_installed(cls, config) -> None:
        """Raise a ``ConfigError`` naming the package to install when one this method needs for ``config``
        is missing (SEVAL: scipy). A training run calls it before it reads its data or writes anything, and
        the constructor calls it; nothing by default."""

    # ------------------------------------------------------------------ training and evaluation
    @property
    def reported_head(self) -> str:
        """The key of :meth:`evaluation_logits` whose accuracy the run reports as its result."""
        return "main"

    def step(self, model: Classifier, batch: Batch, iteration: int) -> StepOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def evaluation_logits(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The logits evaluation scores, by name, from every head's raw logits (default: those)."""
        return logits

    def on_epoch_pool(self, epoch: int, pool: PoolPredictions) -> None:
        """After :meth:`on_epoch_end` of epoch ``epoch`` (0-based), for methods whose
        :meth:`pool_each_epoch` is true: the EMA model's predictions on the whole unlabeled pool."""

    def on_validation(self, iteration: int, predictions: ValidationPredictions) -> None:
        """After step ``iteration`` (0-based) when ``(iteration + 1) % validation_every(config) == 0``,
        after the other hooks: the EMA model's predictions on the validation split."""

    def stage_iterations(self) -> tuple[int, ...]:
        """Iterations (0-based) after whose step the engine calls :meth:`on_stage`; -1 means before the
        first step. Empty for most methods (CoSSL: where its co-learning stage starts)."""
        return ()

    def on_stage(self, iteration: int, labeled: LabeledPredictions, pool: PoolPredictions) -> list[HeadWeights]:
        """At the :meth:`stage_iterations`, after the other hooks: the EMA model's predictions on the
        labeled images and on the unlabeled pool. Returns new weights for heads (loaded into the network
        and its EMA; CoSSL's classifier warm-up), or nothing."""
        return []

    def on_generation_end(self, generation: int, pool: PoolPredictions) -> GenerationUpdate | None:
        """Called after the last step of every generation but the last (methods with generations)."""
        return None


def run_hooks(part: Hooks, iteration: int, epoch_length: int, periodic: list[Periodic] | None = None) -> None:
    """The hooks due after step ``iteration`` (0-based), in the contract's order: ``after_step``, each
    periodic hook whose period ends here, ``on_epoch_end`` at an epoch's last step. ``periodic``:
    the part's periodic hooks, if the caller keeps them (the engine asks once per run)."""
    part.after_step(iteration)
    for hook in part.periodic() if periodic is None else periodic:
        if (iteration + 1) % hook.every == 0:
            hook.run(iteration)
    if (iteration + 1) % epoch_length == 0:
        part.on_epoch_end((iteration + 1) // epoch_length - 1)


def hooks_state(parts: dict[str, Hooks]) -> dict:
    """The states of named parts, for a composite's ``state_dict``."""
    return {name: part.state_dict() for name, part in parts.items()}


def load_hooks_state(parts: dict[str, Hooks], state: dict) -> None:
    if set(state) != set(parts):
        raise ValueError(f"checkpoint holds the state of {sorted(state)}, this run has {sorted(parts)}")
    for name, part in parts.items():
        part.load_state_dict(state[name])
