"""Balanced confidence-decay memory bank (SeMi section 3.3, Eq. 7; spec section 6).

One cell of ``capacity`` slots per class holds (embedding, confidence, arrival index) triples.

- ``confidence_decay`` (SeMi): a candidate enters cell k only if its confidence beats the lowest
  stored one, and replaces that slot (embedding and confidence together); a tie with the minimum
  is rejected; among slots tied at the minimum the most recently arrived is evicted; empty slots
  count as confidence 0. Every ``decay_step`` iterations the confidences in scope are multiplied
  by beta (Eq. 7: a_k,i(t) = a_k,i(t - n) * beta).
- ``fifo`` (the "w/o B" ablation, spec 8.4): a class-balanced queue keeping the newest entries,
  no confidence rule, no decay.

Insertion is batched: per class, the new cell is the top ``capacity`` of (stored + candidates)
ordered by (confidence desc, arrival asc) - equal to inserting the candidates one by one in arrival
order under the rule above, ties included (tested against a sequential reference). This fixes
the authors' release, which drops the *best* slot's embedding while overwriting the worst slot's
confidence, so pairs drift apart and the best embeddings leave first (spec 6.7).
"""

from __future__ import annotations

import torch


class MemoryBank:
    def __init__(self, num_classes: int, capacity: int, dim: int, *, mode: str, beta: float, decay_scope: str,
                 device: torch.device | str = "cpu"):
        if mode not in ("confidence_decay", "fifo"):
            raise ValueError(f"unknown bank mode {mode!r}")
        if decay_scope not in ("not_new", "all"):
            raise ValueError(f"unknown decay scope {decay_scope!r}")
        self.num_classes, self.capacity, self.dim = num_classes, capacity, dim
        self.mode, self.beta, self.decay_scope = mode, beta, decay_scope
        self.embeddings = torch.zeros(num_classes, capacity, dim, device=device)
        self.confidence = torch.zeros(num_classes, capacity, device=device)
        self.filled = torch.zeros(num_classes, capacity, dtype=torch.bool, device=device)
        self.new = torch.zeros(num_classes, capacity, dtype=torch.bool, device=device)
        self.arrival = torch.full((num_classes, capacity), -1, dtype=torch.long, device=device)
        self.counter = 0  # arrival index of the next candidate

    # ------------------------------------------------------------------ insertion
    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
             valid: torch.Tensor) -> None:
        """Offer candidates in row order (their arrival order); rows with ``valid`` False are ignored."""
        n = len(labels)
        if n == 0:
            return
        k, c = self.num_classes, self.capacity
        device = self.confidence.device
        arrival = self.counter + torch.arange(n, device=device)
        self.counter += n
        in_class = (labels.view(1, n) == torch.arange(k, device=device).view(k, 1)) & valid.view(1, n).bool()
        if self.mode == "confidence_decay":
            stored_key = torch.where(self.filled, self.confidence, torch.zeros_like(self.confidence))
            cand_key = torch.where(in_class, confidence.float().view(1, n), torch.full((k, n), float("-inf"),
                                                                                          device=device))
            key = torch.cat([stored_key, cand_key], dim=1)
            order_arrival = torch.cat([self.arrival, arrival.view(1, n).expand(k, n)], dim=1)
            # sort by arrival ascending, then stably by key descending -> (confidence desc, arrival asc)
            by_arrival = torch.argsort(order_arrival, dim=1, stable=True)
            by_key = torch.argsort(-key.gather(1, by_arrival), dim=1, stable=True)
            top = by_arrival.gather(1, by_key)[:, :c]
        else:  # fifo: newest first; empty slots above invalid candidates
            stored_key = torch.where(self.filled, self.arrival, torch.full_like(self.arrival, -1))
            cand_key = torch.where(in_class, arrival.view(1, n), torch.full((k, n), -2, device=device))
            key = torch.cat([stored_key, cand_key], dim=1)
            top = torch.argsort(-key, dim=1, stable=True)[:, :c]
        from_candidate = top >= c
        slot = top.clamp(max=c - 1)
        row = (top - c).clamp(min=0)
        cand_emb = embeddings.detach().to(self.embeddings.dtype)[row]              # (k, c, D)
        kept_emb = self.embeddings.gather(1, slot.unsqueeze(-1).expand(k, c, self.dim))
        self.embeddings = torch.where(from_candidate.unsqueeze(-1), cand_emb, kept_emb)
        self.confidence = torch.where(from_candidate, confidence.float()[row], self.confidence.gather(1, slot))
        self.filled = from_candidate | self.filled.gather(1, slot)
        self.new = from_candidate | self.new.gather(1, slot)
        self.arrival = torch.where(from_candidate, arrival[row], self.arrival.gather(1, slot))

    # ------------------------------------------------------------------ decay (Eq. 7)
    @torch.no_grad()
    def decay(self) -> None:
        """a <- beta * a for filled slots in scope (not written since the last decay, or all); clears
        the 'new' flags. No-op in fifo mode."""
        if self.mode == "fifo":
            return
        scope = self.filled if self.decay_scope == "all" else self.filled & ~self.new
        self.confidence = torch.where(scope, self.confidence * self.beta, self.confidence)
        self.new.zero_()

    # ------------------------------------------------------------------ reading
    @torch.no_grad()
    def prototypes(self, include_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(C (K, D), has_prototype (K,)): C_k = mean of the filled slots of class k (spec 6.4).

        ``include_empty`` emulates the released code (mean over all slots, zeros included)."""
        if include_empty:
            return self.embeddings.mean(dim=1), torch.ones(self.num_classes, dtype=torch.bool,
                                                           device=self.embeddings.device)
        count = self.filled.sum(dim=1)
        total = (self.embeddings * self.filled.unsqueeze(-1)).sum(dim=1)
        return total / count.clamp(min=1).unsqueeze(1), count > 0

    def fill_counts(self) -> torch.Tensor:
        return self.filled.sum(dim=1)

    @torch.no_grad()
    def sample(self, per_class: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw up to ``per_class[k]`` filled entries of each class without replacement (capped at the
        number filled); returns (embeddings (m, D), labels (m,))."""
        k, c = self.num_classes, self.capacity
        noise = torch.rand(k, c, generator=generator, device=self.confidence.device)
        noise = torch.where(self.filled, noise, torch.full_like(noise, 2.0))  # empty slots last
        order = torch.argsort(noise, dim=1)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(c, device=order.device).expand(k, c))
        take = self.filled & (rank < per_class.view(k, 1))
        labels = torch.arange(k, device=take.device).view(k, 1).expand(k, c)[take]
        return self.embeddings[take], labels

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.cpu().clone(), "confidence": self.confidence.cpu().clone(),
                "filled": self.filled.cpu().clone(), "new": self.new.cpu().clone(),
                "arrival": self.arrival.cpu().clone(), "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        device = self.embeddings.device
        if tuple(state["embeddings"].shape) != tuple(self.embeddings.shape):
            raise ValueError(f"bank shape {tuple(state['embeddings'].shape)} does not match "
                             f"{tuple(self.embeddings.shape)}")
        for name in ("embeddings", "confidence", "filled", "new", "arrival"):
            setattr(self, name, state[name].to(device))
        self.counter = int(state["counter"])


def balanced_draw_counts(batch_counts: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """How many bank entries to draw per class to top up the balanced head (spec 6.5, ``get_sup``).

    n_k = this step's labeled images of class k + confident pseudo-labels of class k.
    T = sum n + num_samples; base = floor(T / K); classes with n_k >= base are saturated; the budget
    T - sum_saturated n is split over the others: share = floor(budget / |U|) each, and ``budget mod
    |U|`` of them, drawn uniformly, get one more (the release takes ``budget mod share``, which can
    exceed |U|). Class k of U then draws max(0, target_k - n_k).
    """
    n = batch_counts.long()
    k = len(n)
    total = int(n.sum()) + num_samples
    base = total // k
    unsaturated = n < base
    u = int(unsaturated.sum())
    if u == 0:
        return torch.zeros_like(n)
    budget = total - int(n[~unsaturated].sum())
    share, remainder = divmod(budget, u)
    noise = torch.rand(k, generator=generator, device=n.device)
    noise = torch.where(unsaturated, noise, torch.full_like(noise, 2.0))
    extra = torch.zeros(k, dtype=torch.long, device=n.device)
    extra[torch.argsort(noise)[:remainder]] = 1
    target = torch.where(unsaturated, share + extra, torch.zeros_like(n))
    return (target - n).clamp(min=0) * unsaturated
