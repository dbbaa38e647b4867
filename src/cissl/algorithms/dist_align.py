"""Distribution alignment of pseudo-labels (ReMixMatch, Berthelot et al. 2020), progressive as in CReST+
(Wei et al., CVPR 2021, Sec. 3.3), a FixMatch refiner.

p_aligned = normalise(p * (pi^t + 1e-6) / (p_avg + 1e-6)), with pi the labeled class distribution
(pi^t renormalised), p_avg the mean prediction over the last ``window`` steps' unlabeled batches
(this step's included), and t the alignment temperature. With generations (CReST), t goes linearly
from 1 in the first generation to ``t_min`` in the last: t = 1 - f + f t_min, f = g / (G - 1); with
one generation t = 1 (plain distribution alignment).

As the DASO framework runs CReST+ (the protocol of the SeMi paper's tables, and ReMixMatch's
128-batch window); USB averages with an exponential moving average instead. The confidence mask
is taken on the aligned distribution (both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.components.logit_adjust import class_prior
from cissl.algorithms.parts import PseudoLabelRefiner
from cissl.algorithms.registry import REFINERS
from cissl.distributed import gather_rows
from cissl.schema import NamedConfig, option


@dataclass(frozen=True)
class DistAlignConfig(NamedConfig):
    name: str = option("dist_align", help="distribution alignment")
    t_min: float = option(1.0, min=0.0, max=1.0,
                          help="alignment temperature of the last generation (CReST+: 0.5; 1 = plain alignment)")
    window: int = option(128, min=1, help="steps whose unlabeled predictions make the running mean")


def alignment_temperature(generation: int, generations: int, t_min: float) -> float:
    """t = 1 - f + f t_min, f = generation / (generations - 1) (0-based generation; f = 0 with one generation)."""
    f = generation / (generations - 1) if generations > 1 else 0.0
    return 1.0 - f + f * t_min


def align(probs: torch.Tensor, target: torch.Tensor, running_mean: torch.Tensor, temperature: float) -> torch.Tensor:
    """normalise(p * (target^t / sum + 1e-6) / (running mean + 1e-6)), rows summing to 1."""
    target = target ** temperature
    target = target / target.sum()
    aligned = probs * (target + 1e-6) / (running_mean + 1e-6)
    return aligned / aligned.sum(dim=1, keepdim=True)


class RunningMean:
    """The mean of the last ``window`` batches' mean predictions (a ring of batch means on the device)."""

    def __init__(self, window: int, num_classes: int, device):
        self.means = torch.zeros(window, num_classes, device=device)
        self.steps = 0  # a host count: indexing with a device scalar would synchronise

    def push(self, probs: torch.Tensor) -> torch.Tensor:
        window = len(self.means)
        self.means[self.steps % window] = gather_rows(probs).mean(0)  # the global batch's mean under DDP
        self.steps += 1
        return self.means.sum(0) / min(self.steps, window)

    def state_dict(self) -> dict:
        return {"means": self.means.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["means"].shape) != tuple(self.means.shape):
            raise ValueError(f"distribution alignment window has shape {tuple(state['means'].shape)} in the "
                             f"checkpoint, this run needs {tuple(self.means.shape)}")
        self.means = state["means"].to(self.means.device)
        self.steps = int(state["steps"])


@REFINERS.register("dist_align", DistAlignConfig,
                   summary="distribution alignment to the labeled distribution (progressive over generations: CReST+)")
class DistAlign(PseudoLabelRefiner):
    def __init__(self, config: DistAlignConfig, context):
        super().__init__(config, context)
        self.target = class_prior(context.labeled_counts).to(context.device)
        self.running = RunningMean(config.window, context.num_classes, context.device)
        self.generation_length = context.iterations // max(1, context.generations)

    def temperature(self, iteration: int) -> float:
        generation = min(iteration // self.generation_length, self.context.generations - 1)
        return alignment_temperature(generation, self.context.generations, self.config.t_min)

    @torch.no_grad()
    def refine(self, probs, views, batch, iteration):
        return align(probs, self.target, self.running.push(probs), self.temperature(iteration))

    def state_dict(self) -> dict:
        return self.running.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.running.load_state_dict(state)
