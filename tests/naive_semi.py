"""SeMi and FixMatch restated one image at a time: the oracle of the step-level tests.

Written from the spec's text (sections 5-7), not from ``src/``: every quantity is computed per image
(and per strong view) in plain loops over float64 vectors, every image goes through the model on its
own, and the memory bank is a list of slots per class filled by the sequential rule of spec 6.2. The
loss keeps its autograd graph, so gradients can be compared too. A row of one image paired with
another image's row inside the vectorised step, a wrong weight, sign or temperature, a gradient that
flows where the spec says it must not, or a label or confidence taken from the wrong source shows up
as a difference against this file.

Not covered here (random draws): the bank term of the balanced head (``sample_for_balanced_head``);
its wiring is tested on its own in ``test_semi_step.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def run_one(model, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(embedding, head -> logits) of one image, float64 vectors that keep their gradient."""
    out = model(image.unsqueeze(0))
    return out.features[0].double(), {name: v[0].double() for name, v in out.logits.items()}


def ce(logits: torch.Tensor, target: int) -> torch.Tensor:
    return -torch.log_softmax(logits, dim=0)[target]


@dataclass
class Slot:
    embedding: torch.Tensor
    confidence: float
    arrival: int
    new: bool = True


@dataclass
class NaiveBank:
    """Per class, at most ``capacity`` slots (spec 6.1-6.4)."""

    num_classes: int
    capacity: int
    mode: str = "confidence_decay"
    beta: float = 0.99
    scope: str = "not_new"
    cells: list[list[Slot]] = field(default_factory=list)
    counter: int = 0

    def __post_init__(self):
        self.cells = [[] for _ in range(self.num_classes)]

    def offer(self, embedding: torch.Tensor, label: int, confidence: float, valid: bool) -> None:
        """One candidate row; every row (valid or not) takes the next arrival number."""
        arrival = self.counter
        self.counter += 1
        if not valid:
            return
        cell = self.cells[label]
        slot = Slot(embedding.detach().clone(), confidence, arrival)
        if len(cell) < self.capacity:  # an empty slot counts as confidence 0 (fifo: free room first)
            cell.append(slot)
        elif self.mode == "fifo":
            cell[min(range(len(cell)), key=lambda i: cell[i].arrival)] = slot
        else:
            lowest = min(s.confidence for s in cell)
            if confidence > lowest:  # a tie with the minimum is rejected
                tied = [i for i, s in enumerate(cell) if s.confidence == lowest]
                cell[max(tied, key=lambda i: cell[i].arrival)] = slot  # the most recent of the minimum goes

    def decay(self) -> None:
        if self.mode == "fifo":
            return
        for cell in self.cells:
            for slot in cell:
                if self.scope == "all" or not slot.new:
                    slot.confidence *= self.beta
                slot.new = False

    def prototypes(self, include_empty: bool, dim: int) -> list[torch.Tensor | None]:
        out = []
        for cell in self.cells:
            if include_empty:  # the release's mean over every slot, empty ones counted as zeros
                out.append(sum((s.embedding for s in cell), torch.zeros(dim, dtype=torch.float64)) / self.capacity)
            elif cell:
                out.append(sum(s.embedding for s in cell) / len(cell))
            else:
                out.append(None)
        return out

    def by_arrival(self) -> dict[int, tuple[int, torch.Tensor, float]]:
        return {s.arrival: (k, s.embedding, s.confidence) for k, cell in enumerate(self.cells) for s in cell}


class NaiveSeMi:
    """The SeMi step of spec 5.0-5.9 and section 7, one image at a time."""

    def __init__(self, cfg, num_classes: int, labeled_counts, feature_dim: int, iterations: int,
                 epoch_length: int):
        self.cfg = cfg
        self.k = num_classes
        self.labeled_counts = list(labeled_counts)
        self.total_epochs = iterations / epoch_length
        self.epoch_length = epoch_length
        self.bank = NaiveBank(num_classes, cfg.bank.capacity, cfg.bank.mode, cfg.bank.beta, cfg.bank.decay_scope)
        self.center = torch.zeros(feature_dim, dtype=torch.float64)
        self.counts = [0] * num_classes
        self.w = [1.0 / num_classes] * num_classes

    def offset(self, tau: float) -> torch.Tensor:
        """A_tau = log(pi^tau + 1e-12) with the configured prior (spec 7)."""
        counts = list(self.labeled_counts)
        if self.cfg.balanced.prior == "labeled_plus_pseudo_running":
            counts = [n + m for n, m in zip(counts, self.counts)]
        return torch.tensor([math.log((c / sum(counts)) ** tau + 1e-12) for c in counts], dtype=torch.float64)

    def step(self, model, x, y, u_weak, u_strong, iteration: int) -> dict:
        cfg = self.cfg
        T = cfg.temperature
        epoch = iteration // self.epoch_length
        active = epoch > cfg.warmup_epochs
        views = len(u_strong)
        labeled = [run_one(model, img) for img in x]
        weak = [run_one(model, img) for img in u_weak]
        strong = [[run_one(model, img) for img in view] for view in u_strong]
        n_u, rows = len(weak), len(u_strong) * len(u_weak)
        labels = y.tolist()
        out = {"loss_x": sum(ce(lg["main"], t) for (_, lg), t in zip(labeled, labels)) / len(labels)}

        # pseudo-labels and PLCE (5.3-5.4), from the bank as it was before this step's push
        protos = self.bank.prototypes(cfg.bank.prototype_includes_empty, len(self.center))
        have = [k for k in range(self.k) if protos[k] is not None]
        c = [cfg.plce.alpha * epoch / self.total_epochs * self.w[k] if protos[k] is not None else 0.0
             for k in range(self.k)]
        a1 = self.offset(cfg.balanced.tau1)
        if active and cfg.use_plce:
            out["plce_mix_max"] = max(c)
        pseudo, conf, mask, omega = [], [], [], []
        for i in range(n_u):
            f = weak[i][1]["main"].detach()
            r = torch.softmax(f / T, dim=0)
            p = torch.softmax((f - a1) / T, dim=0) if cfg.pula else r
            mixed = p
            if active and cfg.use_plce and have:
                query = strong[0][i][0].detach()
                dist = torch.stack([torch.sqrt(((query - protos[k]) ** 2).sum()) for k in have])
                q_have = torch.softmax(-dist / cfg.plce.temperature, dim=0)
                mixed = torch.stack([(1 - c[k]) * p[k] + c[k] * (q_have[have.index(k)] if k in have else 0.0)
                                     for k in range(self.k)])
                if cfg.plce.renormalize:
                    mixed = mixed / mixed.sum()
            top = int(mixed.argmax())
            pseudo.append(top)
            conf.append(float(mixed[top]))
            mask.append(bool(mixed[top] >= cfg.threshold or r.max() >= cfg.threshold))
            if active and cfg.use_oheml:
                source = (mixed if cfg.oheml.source == "weak_mixed" else p).clamp(1e-8, 1 - 1e-8)
                entropy = float(-(source * source.log()).sum())
                omega.append(cfg.oheml.scale * entropy / math.log(self.k) + 1 - cfg.oheml.scale)
            else:
                omega.append(1.0)
        out["loss_u"] = sum(mask[i] * omega[i] * ce(strong[s][i][1]["main"], pseudo[i])
                            for s in range(views) for i in range(n_u)) / rows
        total = out["loss_x"] + out["loss_u"]

        # EA (5.6): the weak embedding of image i teaches the strong embeddings of image i
        if active and cfg.use_ea:
            te = cfg.ea.temperature
            teachers = [torch.softmax((weak[i][0].detach() - self.center) / (te / 5), dim=0) for i in range(n_u)]
            out["loss_ea"] = sum(-(teachers[i] * torch.log_softmax(strong[s][i][0] / te, dim=0)).sum()
                                 for s in range(views) for i in range(n_u) if not mask[i]) / rows
            total = total + cfg.ea.weight * out["loss_ea"]
            batch = {"prob_ema": lambda: sum(teachers) / n_u,
                     "logit_ema": lambda: sum(weak[i][0].detach() for i in range(n_u)) / n_u}.get(cfg.ea.center)
            if batch is not None:
                m = cfg.ea.center_momentum
                self.center = m * self.center + (1 - m) * batch()

        # balanced branch (5.2, 5.4, 5.7)
        if cfg.use_balanced_head and (active or not cfg.balanced.after_warmup):
            a2, a12 = self.offset(cfg.balanced.tau2), self.offset(cfg.balanced.tau12)
            out["loss_x_bal"] = sum(ce(lg["balanced"] + a2, t) for (_, lg), t in zip(labeled, labels)) / len(labels)
            target, used = [], []
            for i in range(n_u):
                h = torch.softmax((weak[i][1]["main"].detach() - a12) / T, dim=0)
                own = torch.softmax(weak[i][1]["balanced"].detach() / T, dim=0)
                target.append(int(h.argmax()))
                used.append(bool(h.max() >= cfg.threshold or own.max() >= cfg.threshold))
            out["loss_u_bal"] = sum(used[i] * ce(strong[s][i][1]["balanced"], target[i])
                                    for s in range(views) for i in range(n_u)) / rows
            out["mask_bal"] = used
            total = total + out["loss_x_bal"] + out["loss_u_bal"]

        # bank push in arrival order (5.8) and class counts (7), every step from step 0
        if cfg.bank.view == "strong":
            candidates = [(strong[s][i][0], i) for s in range(views) for i in range(n_u)]
        else:
            candidates = [(weak[i][0], i) for i in range(n_u)]
        for embedding, i in candidates:
            self.bank.offer(embedding, pseudo[i], conf[i], mask[i])
        for i in range(n_u):
            self.counts[pseudo[i]] += int(mask[i])
        filled = sum(len(cell) for cell in self.bank.cells)
        out.update(loss=total, pseudo=pseudo, confidence=conf, mask=mask, omega=omega, active=active,
                   bank_fill=filled / (self.k * self.bank.capacity))
        return out

    def after_step(self, iteration: int) -> None:
        if (iteration + 1) % self.cfg.bank.decay_step == 0:
            self.bank.decay()
        if (iteration + 1) % self.epoch_length == 0:
            total = sum(self.counts)
            self.w = [n / total for n in self.counts] if total > 0 else [1.0 / self.k] * self.k


def naive_fixmatch_step(cfg, model, x, y, u_weak, u_strong, labeled_counts) -> dict:
    """FixMatch (Sohn et al. 2020, Eq. 2) one image at a time; LA labeled loss when cfg.logit_adjust."""
    labels = y.tolist()
    offset = torch.zeros(1, dtype=torch.float64)
    if cfg.logit_adjust:
        total = sum(labeled_counts)
        offset = torch.tensor([math.log((n / total) ** cfg.la_tau + 1e-12) for n in labeled_counts],
                              dtype=torch.float64)
    loss_x = sum(ce(run_one(model, img)[1]["main"] + offset, t) for img, t in zip(x, labels)) / len(labels)
    pseudo, mask, confidence = [], [], []
    for img in u_weak:
        p = torch.softmax(run_one(model, img)[1]["main"].detach() / cfg.temperature, dim=0)
        pseudo.append(int(p.argmax()))
        confidence.append(float(p.max()))
        mask.append(bool(p.max() >= cfg.threshold))
    rows = len(u_strong) * len(u_weak)
    loss_u = sum(mask[i] * ce(run_one(model, view[i])[1]["main"], pseudo[i])
                 for view in u_strong for i in range(len(u_weak))) / rows
    return {"loss_x": loss_x, "loss_u": loss_u, "loss": loss_x + cfg.unlabeled_weight * loss_u, "pseudo": pseudo,
            "mask": mask, "confidence": confidence}
