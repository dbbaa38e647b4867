"""DARP (Kim et al., NeurIPS 2020): distribution aligning refinery of pseudo-labels, a FixMatch refiner.

DARP keeps the latest weak-view prediction a_i of every image i of the unlabeled pool. Every
``period`` steps after its warm-up it refines all of them at once by the convex problem

    min_X  sum_i w_i KL(x_i || a_i)   s.t.  sum_k x_ik = 1 (every i),  sum_i x_ik = c_k (every k),

with w_i = 1 / H(a_i) (confident predictions move less) and c the target class counts of the pool,
solved in its Lagrangian dual: x_ik = (a_ik / e) X_i Y_ik, X_i = 1 / sum_k (a_ik / e) Y_ik, and
Y_ik = exp(-nu_k / w_i) with nu_k a root of sum_i (a_ik / e) X_i exp(-nu_k / w_i) = c_k, alternated
``solver_iterations`` times. Before solving, small entries are removed ("delta" in the paper,
``alpha`` here): for every class only the alpha * c_k highest a_ik keep their mass, the others are
scaled towards zero, and each class column is rescaled so its kept mass matches c_k. The refined
labels of the whole pool are kept; steps between two solves read them.

Schedule and arithmetic follow the DARP code as the DASO framework runs it (the protocol of the SeMi
paper's Tables 1-3): the solve happens inside step t when t + 1 > warm-up and (t + 1) % period == 0,
including that step's predictions; before the first solve after the warm-up the kept labels are
uniform (those steps' images are masked out at any threshold above 1 / K, as in that code); the
root is found by the secant method with absolute tolerance ``newton_tol`` from the previous
solution, as the reference's ``scipy.optimize.newton`` without a derivative does. The mask is taken
on the refined labels (DARP's and DASO's code; USB masks the unrefined prediction).

Departures, both in degenerate cases where the reference raises and stops the run: a secant
iteration that stalls (equal function values) returns the midpoint; one that has not converged
after ``newton_max_iterations`` keeps its last value.

The target counts c: the labeled class proportions scaled to the pool size (``target: labeled``,
the consistent-distribution assumption USB makes; the DASO framework reads the true unlabeled
counts, which a method here never sees), uniform (``target: uniform``), or a distribution given
in the config (``target: given`` with ``target_distribution``, scaled to the pool size). For an
unknown or mismatched pool, DARP's estimation variant (its Sec. 3.3): train a run that holds out
validation images (``data.val_per_class``; the DASO framework: a supervised model, 10 per class), then
``cissl estimate-distribution RUN_DIR`` estimates the pool's class counts by black-box shift
estimation (:mod:`cissl.evaluation.distribution`) and prints the ``target=given`` override. The DASO
framework averages the estimates accepted at its evaluations; the command estimates once, from the
checkpoint it is given (default: the newest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cissl.algorithms.parts import PseudoLabelRefiner
from cissl.algorithms.registry import REFINERS
from cissl.distributed import gather_rows
from cissl.schema import NamedConfig, option


@dataclass(frozen=True)
class DarpConfig(NamedConfig):
    name: str = option("darp", help="DARP pseudo-label refinement")
    warmup_fraction: float = option(0.4, min=0.0, max=1.0,
                                    help="fraction of train.iterations before the first refinement")
    period: int = option(10, min=1, help="refine every this many steps after the warm-up")
    alpha: float = option(2.0, min=0.0, min_exclusive=True,
                          help="entries kept per class: alpha times its target count (the paper's delta)")
    solver_iterations: int = option(10, min=1, help="alternations of the dual solver (the paper's T)")
    newton_tol: float = option(0.1, min=0.0, min_exclusive=True, help="absolute tolerance of the root finder")
    newton_max_iterations: int = option(30, min=1, help="secant iterations per root at most")
    target: str = option("labeled", choices=("labeled", "uniform", "given"),
                         help="target class distribution of the pool")
    target_distribution: list[float] = option([], help="class weights for target=given (scaled to the pool size)")


def target_counts(config: DarpConfig, context) -> torch.Tensor:
    """c_k: the target class counts of the unlabeled pool (float64, summing to the pool size)."""
    k, pool = context.num_classes, context.unlabeled_pool_size
    if config.target == "labeled":
        weights = torch.tensor(context.labeled_counts, dtype=torch.float64)
    elif config.target == "uniform":
        weights = torch.ones(k, dtype=torch.float64)
    else:
        weights = torch.tensor([float(v) for v in config.target_distribution], dtype=torch.float64)
        if len(weights) != k or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"config key 'algorithm.refiner.target_distribution': {k} non-negative weights "
                             f"with a positive sum are needed for target=given, got {config.target_distribution}")
    return weights / weights.sum() * pool


@torch.no_grad()
def truncate_small_entries(predictions: torch.Tensor, counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """DARP's removal of small entries: per class k, the int(alpha * c_k) largest a_ik keep weight
    (c_k + 1e-6) / (their sum + 1e-6), all others weight 0; rows are then renormalised after adding 1e-6."""
    n, k = predictions.shape
    keep = torch.zeros_like(predictions)
    kept_mass = torch.zeros(k, dtype=torch.float64, device=predictions.device)
    sizes = [min(int(alpha * c), n) for c in counts.tolist()]
    counts = counts.to(predictions.device)
    for cls, top in enumerate(sizes):
        values, rows = predictions[:, cls].sort(descending=True)
        keep[rows[:top], cls] = 1.0
        kept_mass[cls] = values[:top].double().sum()
    scale = keep * ((counts + 1e-6) / (kept_mass + 1e-6)).to(predictions.dtype)
    scaled = predictions * scale + 1e-6
    return scaled / scaled.sum(dim=1, keepdim=True)


def _secant_roots(func, start: torch.Tensor, tol: float, max_iterations: int) -> torch.Tensor:
    """Roots of func (vectorised over classes) by the secant method, step for step as
    ``scipy.optimize.newton(func, x0)`` without a derivative: second point x0 (1 + 1e-4) +- 1e-4,
    stop when two iterates are within ``tol``."""
    p0 = start.clone()
    p1 = p0 * (1 + 1e-4)
    p1 = p1 + torch.where(p1 >= 0, 1e-4, -1e-4)
    q0, q1 = func(p0), func(p1)
    swap = q1.abs() < q0.abs()
    p0, p1 = torch.where(swap, p1, p0), torch.where(swap, p0, p1)
    q0, q1 = torch.where(swap, q1, q0), torch.where(swap, q0, q1)
    result = p1.clone()
    active = torch.ones_like(p0, dtype=torch.bool)
    for _ in range(max_iterations):
        stalled = q1 == q0
        safe_q1 = torch.where(stalled, 1.0, q1)
        safe_q0 = torch.where(stalled, 1.0, q0)
        p = torch.where(q1.abs() > q0.abs(), (-q0 / safe_q1 * p1 + p0) / (1 - q0 / safe_q1),
                        (-q1 / safe_q0 * p0 + p1) / (1 - q1 / safe_q0))
        p = torch.where(stalled, (p1 + p0) / 2, p)
        done = stalled | ((p - p1).abs() <= tol)
        result = torch.where(active, p, result)
        active = active & ~done
        if not bool(active.any()):
            break
        p0, q0, p1 = p1, q1, p
        q1 = func(p1)
    return result


@torch.no_grad()
def darp_solve(predictions: torch.Tensor, counts: torch.Tensor, iterations: int, tol: float = 0.1,
               max_secant: int = 30) -> torch.Tensor:
    """The refined labels x (N, K) of predictions a (N, K) for target column sums c (K,): the dual
    solver of the module docstring. Float32 in and out (a and w are taken in float32, the rest in
    float64, as the reference's numpy arithmetic does)."""
    a = predictions.float()
    entropy = -(a * torch.log(a + 1e-6)).sum(dim=1)
    w = (1.0 / entropy).double()
    a_e = (a / math.e).double()
    c = counts.double().to(a.device)
    nu = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)  # the roots' starting points
    y = torch.exp(-1.0 / w)[:, None].expand_as(a_e)  # Y_ik = exp(-nu_k / w_i) at the dual's start nu = 1
    for _ in range(iterations):
        x = 1.0 / (a_e * y).sum(dim=1)
        weight = a_e * x[:, None]

        def residual(v, weight=weight):
            return (weight * torch.exp(-v[None, :] / w[:, None])).sum(dim=0) - c

        nu = _secant_roots(residual, nu, tol, max_secant)
        y = torch.exp(-nu[None, :] / w[:, None])
    x = 1.0 / (a_e * y).sum(dim=1)
    return (a_e * x[:, None] * y).float()


@REFINERS.register("darp", DarpConfig, summary="DARP: pseudo-labels aligned to the pool's class distribution")
class Darp(PseudoLabelRefiner):
    """Refined pseudo-labels over the whole pool (state: the latest predictions and refined labels)."""

    def __init__(self, config: DarpConfig, context):
        super().__init__(config, context)
        if context.unlabeled_pool_size <= 0:
            raise ValueError("DARP keeps a prediction per unlabeled image: the run has no unlabeled pool")
        self.counts = target_counts(config, context)  # on the CPU: the per-class sizes are host numbers
        self.warmup = int(context.iterations * config.warmup_fraction)
        shape = (context.unlabeled_pool_size, context.num_classes)
        self.predictions = torch.full(shape, 1.0 / context.num_classes, device=context.device)
        self.refined = self.predictions.clone()
        self.solves = 0

    def refine(self, probs, views, batch, iteration):
        if batch.u_index is None:
            raise ValueError("DARP needs each unlabeled image's pool position (batch.u_index)")
        index = batch.u_index.to(self.predictions.device)
        # every rank's rows of the global batch (under DDP): the pool's predictions stay the same on all ranks
        self.predictions[gather_rows(index)] = gather_rows(probs.float()).to(self.predictions.device)
        if iteration + 1 <= self.warmup:
            return probs
        if (iteration + 1) % self.config.period == 0:
            cfg = self.config
            truncated = truncate_small_entries(self.predictions, self.counts, cfg.alpha)
            self.refined = darp_solve(truncated, self.counts, cfg.solver_iterations, cfg.newton_tol,
                                      cfg.newton_max_iterations)
            self.solves += 1
        return self.refined[index].to(probs.device, probs.dtype)

    def state_dict(self) -> dict:
        return {"predictions": self.predictions.clone(), "refined": self.refined.clone(), "solves": self.solves}

    def load_state_dict(self, state: dict) -> None:
        expected = tuple(self.predictions.shape)
        for key in ("predictions", "refined"):
            if tuple(state[key].shape) != expected:
                raise ValueError(f"DARP state {key!r} has shape {tuple(state[key].shape)}, this run needs {expected}")
        self.predictions = state["predictions"].to(self.predictions.device)
        self.refined = state["refined"].to(self.refined.device)
        self.solves = int(state["solves"])
