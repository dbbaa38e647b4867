"""SEVAL on FixMatch: pseudo-label refinement and per-class thresholds learned on a held-out validation split.

Li, Zheng, Chen & Jbabdi, "Learning Label Refinement and Threshold Adjustment for Imbalanced
Semi-Supervised Learning" (arXiv 2407.05370, 2024; the SeMi paper's Table 2 row "w/ SEVAL"). The
arithmetic follows the authors' code (github ZerojumpLine/SEVAL: ``lib/algorithm/seval.py``,
``lib/models/losses/optimizepi.py`` and ``optimizeth.py``); ``tests/test_seval.py`` checks it against
values that code computed (``tests/reference/make_fixtures.py``).

- **Refinement**: the weak view's logits z become z'_k = alpha_k (z_k - log pi_k) before the softmax
  that gives the pseudo-label and its confidence; alpha = pi = 1 at the start (no change).
- **Thresholds**: the mask is [max p' >= t_c] with c = argmax p', one threshold per class, all starting
  at ``threshold`` (0.95).
- Every ``fit_every`` steps (the authors fit at every evaluation, 500 steps), on the EMA model's logits of
  the validation split (``data.val_per_class``, held out of the training images):

  1. *offsets* (from ``offset_warmup`` x the run on): (alpha, pi) minimise the class-balanced negative
     log-likelihood of softmax(alpha (z - log pi)) on the validation labels (``objective: nll``: the mean
     over classes of sum_i log p'_{y_i} / (N_c K), as the authors' code scales it, which fixes where the
     solver stops), or maximise the mean class recall (``acc``). scipy's ``minimize`` (``solver``,
     Nelder-Mead by default, tol 1e-7) from alpha = pi = 1 within [scale_min, scale_max] x
     [offset_min, offset_max] (alpha stays 1 with the authors' bounds [1, 1]). The kept values move
     there by an exponential average, pi <- d pi + (1 - d) pi_fit with d = ``offset_decay``;
  2. *thresholds*, with the updated refinement, per group of classes (one class by default): among the
     validation images predicted in the group, the precision P (each image weighs 1 / its class's share
     of the validation split relative to the largest, 1 for a balanced split). If P is below the target
     precision t (``target_precision_start`` to ``target_precision_end``, linear in the iteration), the
     fit is the threshold s in [0, 1] whose confident predictions (max p' > s) come closest to
     precision t (Nelder-Mead from 0.95, tol 1e-7); otherwise 0 (no threshold needed). The kept
     thresholds move there with d = ``threshold_decay``. A group is *rare* when its predictions weigh
     at most a tenth of an even share (N / G / 10) or it has fewer than 10 validation images: its fit
     is 0 and its classes' pi (kept and last fitted) become the smallest pi.

  ``offset_groups`` / ``threshold_groups`` share one value among consecutive classes (the authors'
  PI_CLS / TH_CLS; their CIFAR-100 config has 10 threshold groups of 10 classes); 0: one per class.

Evaluation scores the network's own logits (the authors report those; their refined logits are logged
beside them). What this implementation leaves out of the authors' code, on purpose: the two-run
"estim / load" variant (parameters fitted on half of the labeled set in a first run, replayed in a
second), SEVAL combined with ABC or DASO, and the diagnostics of their ``PERIODS.RECORD``. The fits
need scipy (``pip install 'cissl[seval]'``), as the authors' do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cissl.algorithms.components.pseudo_label import class_probabilities
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.registry import register
from cissl.errors import ConfigError
from cissl.schema import option

SOLVER_TOL = 1e-7  # the authors' tolerance of every fit
MIN_GROUP_IMAGES = 10  # validation images a threshold group needs (the authors' constant)


@dataclass(frozen=True)
class SevalConfig(FixMatchConfig):
    name: str = option("fixmatch_seval", help="algorithm name")
    fit_every: int = option(500, min=1, help="steps between two fits on the validation split (the authors' "
                                             "evaluation period)")
    objective: str = option("nll", choices=("nll", "acc"),
                            help="what the offsets optimise on the validation split: the class-balanced NLL or "
                                 "the mean class recall")
    fit_offsets: bool = option(True, help="learn the refinement alpha (z - log pi)")
    fit_thresholds: bool = option(True, help="learn the per-class thresholds")
    offset_min: float = option(1e-3, min=0.0, min_exclusive=True, help="lower bound of pi")
    offset_max: float = option(3.0, min=0.0, min_exclusive=True, help="upper bound of pi")
    scale_min: float = option(1.0, min=0.0, min_exclusive=True, help="lower bound of alpha")
    scale_max: float = option(1.0, min=0.0, min_exclusive=True, help="upper bound of alpha")
    offset_decay: float = option(0.999, min=0.0, max=1.0, help="exponential average of (alpha, pi) over fits")
    threshold_decay: float = option(0.999, min=0.0, max=1.0, help="exponential average of the thresholds over fits")
    offset_warmup: float = option(0.0, min=0.0, max=1.0, help="fraction of the run before the offsets are fitted")
    target_precision_start: float = option(0.9, min=0.0, max=1.0, help="target precision of the thresholds at "
                                                                       "the start")
    target_precision_end: float = option(0.9, min=0.0, max=1.0, help="target precision at the end (linear)")
    offset_groups: int = option(0, min=0, help="groups of consecutive classes sharing alpha and pi; 0: one per class")
    threshold_groups: int = option(0, min=0, help="groups of consecutive classes sharing a threshold; 0: one per class")
    solver: str = option("Nelder-Mead", choices=("Nelder-Mead", "Powell"), help="scipy's method for the offsets")

    def __post_init__(self):
        for low, high in (("offset_min", "offset_max"), ("scale_min", "scale_max")):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(f"config key 'algorithm.{low}': must be <= algorithm.{high} "
                                  f"({getattr(self, high)}), got {getattr(self, low)}")


def _scipy_minimize():
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise ConfigError("algorithm fixmatch_seval fits its offsets and thresholds with scipy's optimizers: "
                          "pip install 'cissl[seval]' (scipy >= 1.9)") from None
    return minimize


def group_size(num_classes: int, groups: int, key: str) -> int:
    """Classes per group (consecutive classes share a value); ``groups`` 0 means one per class."""
    if groups == 0:
        return 1
    if num_classes % groups:
        raise ConfigError(f"config key 'algorithm.{key}': {groups} groups do not divide the {num_classes} classes")
    return num_classes // groups


def adjusted_logits(logits: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """alpha (z - log pi), row-wise for (N, K) logits."""
    return scale * (logits - np.log(offset))


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def balanced_nll(logits, labels, scale, offset) -> float:
    """The mean over classes of -sum_{i in c} log p'_{y_i} / (N_c K), p' = softmax(alpha (z - log pi))
    (the authors' ``cal_ll``: a mean over the N_c x K entries of log p' times the one-hot labels)."""
    num_classes = logits.shape[1]
    picked = log_softmax(adjusted_logits(logits, scale, offset))[np.arange(len(labels)), labels]
    per_class = np.bincount(labels, weights=picked, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    # a class without validation images counts as log-likelihood -2, as in the authors' code
    return float(-np.mean(np.where(counts > 0, per_class / (np.maximum(counts, 1) * num_classes), -2.0)))


def mean_recall(logits, labels, scale, offset) -> float:
    """The mean over classes of the recall of argmax alpha (z - log pi) (0 for a class without images)."""
    num_classes = logits.shape[1]
    correct = adjusted_logits(logits, scale, offset).argmax(axis=1) == labels
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return float(np.mean(np.where(counts > 0, hits / np.maximum(counts, 1), 0.0)))


def fit_offsets(logits: np.ndarray, labels: np.ndarray, config: SevalConfig) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, pi) per class fitted on the validation logits (float64 (N, K)) and labels (step 1 above)."""
    num_classes = logits.shape[1]
    size = group_size(num_classes, config.offset_groups, "offset_groups")
    groups = num_classes // size
    metric = balanced_nll if config.objective == "nll" else (lambda *a: -mean_recall(*a))

    def objective(x):
        return metric(logits, labels, np.repeat(x[:groups], size), np.repeat(x[groups:], size))

    result = _scipy_minimize()(objective, x0=np.ones(2 * groups),
                               bounds=[(config.scale_min, config.scale_max)] * groups
                               + [(config.offset_min, config.offset_max)] * groups,
                               method=config.solver, tol=SOLVER_TOL)
    return np.repeat(result.x[:groups], size), np.repeat(result.x[groups:], size)


def weighted_precision(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> float:
    """sum_i w_{y_i} [y_i = yhat_i] / (1e-6 + sum_i w_{y_i}) over the given images."""
    w = weights[labels]
    return float((w * (labels == predicted)).sum() / (1e-6 + w.sum()))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the array's own precision (the thresholds' fit runs on float32, as the authors')."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_thresholds(logits: np.ndarray, labels: np.ndarray, target: float, groups: int) -> tuple[list[float], list[int]]:
    """Per class, the threshold fit on the refined validation logits (float32 (N, K); step 2 above), and
    the rare classes."""
    num_classes = logits.shape[1]
    size = group_size(num_classes, groups, "threshold_groups")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = counts.max() / counts  # 1 / (p_c / max p) with p the validation split's class shares
    min_mass = weights[labels].sum() / (num_classes // size) / 10
    probs = softmax(logits)
    confidence, predicted = probs.max(axis=1), logits.argmax(axis=1)
    fits, rare = [], []
    for first in range(0, num_classes, size):
        members = np.arange(first, first + size)
        rows = np.isin(predicted, members)
        y, yhat, conf = labels[rows], predicted[rows], confidence[rows]
        mass = 1e-6 + weights[y].sum()
        small = mass <= min_mass or int(np.isin(labels, members).sum()) < MIN_GROUP_IMAGES
        if small:
            rare.extend(members.tolist())
        fit = 0.0
        if not small and weighted_precision(y, yhat, weights) < target:
            def gap(s, y=y, yhat=yhat, conf=conf):
                above = conf > s[0]
                return abs(weighted_precision(y[above], yhat[above], weights) - target)

            fit = float(_scipy_minimize()(gap, x0=0.95, bounds=[(0.0, 1.0)], method="Nelder-Mead",
                                          tol=SOLVER_TOL).x.item())
        fits.extend([fit] * size)
    return fits, rare


@register("fixmatch_seval", SevalConfig, summary="FixMatch w/ SEVAL (refinement and per-class thresholds "
                                                 "learned on the validation split)")
class Seval(FixMatch):
    @classmethod
    def validation_every(cls, config) -> int:
        return config.fit_every

    @classmethod
    def check_installed(cls, config) -> None:
        _scipy_minimize()

    def __init__(self, config: SevalConfig, context):
        super().__init__(config, context)
        k = context.num_classes
        group_size(k, config.offset_groups, "offset_groups")
        group_size(k, config.threshold_groups, "threshold_groups")
        # the authors keep alpha and pi as float32 tensors and the thresholds as Python floats
        self.scale, self.offset = torch.ones(k), torch.ones(k)  # exponential averages over the fits
        self.scale_last, self.offset_last = torch.ones(k), torch.ones(k)  # the latest fit
        self.thresholds = torch.full((k,), float(config.threshold), dtype=torch.float64)
        self._to_device()

    def _to_device(self) -> None:
        device = self.context.device
        self.device_scale = self.scale.to(device)
        self.device_log_offset = self.offset.log().to(device)
        self.class_thresholds = self.thresholds.float().to(device)

    def refine(self, logits: torch.Tensor) -> torch.Tensor:
        """alpha (z - log pi) with the averaged offsets (float32)."""
        return self.device_scale * (logits.detach().float() - self.device_log_offset)

    # ------------------------------------------------------------------ the step's pieces
    def weak_probabilities(self, weak_logits):
        return class_probabilities(self.refine(weak_logits), self.config.temperature)

    def confidence_mask(self, confidence, labels):
        return confidence >= self.class_thresholds[labels]

    # ------------------------------------------------------------------ the fits
    @torch.no_grad()
    def on_validation(self, iteration, predictions) -> None:
        cfg = self.config
        logits = predictions.logits["main"].float().cpu()
        labels = predictions.labels.cpu().numpy().astype(np.int64)
        if cfg.fit_offsets and iteration > int(self.context.iterations * cfg.offset_warmup):
            scale, offset = fit_offsets(logits.double().numpy(), labels, cfg)
            self.scale_last, self.offset_last = torch.from_numpy(scale).float(), torch.from_numpy(offset).float()
            self.scale = cfg.offset_decay * self.scale + (1 - cfg.offset_decay) * self.scale_last
            self.offset = cfg.offset_decay * self.offset + (1 - cfg.offset_decay) * self.offset_last
        if cfg.fit_thresholds:
            start, end = cfg.target_precision_start, cfg.target_precision_end
            target = start + (end - start) * iteration / self.context.iterations
            refined = (self.scale * (logits - self.offset.log())).numpy()
            fits, rare = fit_thresholds(refined, labels, target, cfg.threshold_groups)
            decay = cfg.threshold_decay
            self.thresholds = decay * self.thresholds + (1 - decay) * torch.tensor(fits, dtype=torch.float64)
            for k in rare:
                self.offset[k] = self.offset.min()
                self.offset_last[k] = self.offset_last.min()
        self._to_device()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"parts": super().state_dict(), "scale": self.scale.clone(), "offset": self.offset.clone(),
                "scale_last": self.scale_last.clone(), "offset_last": self.offset_last.clone(),
                "thresholds": self.thresholds.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state["parts"])
        for key in ("scale", "offset", "scale_last", "offset_last"):
            setattr(self, key, state[key].clone().float().cpu())
        self.thresholds = state["thresholds"].clone().to(torch.float64).cpu()
        self._to_device()
