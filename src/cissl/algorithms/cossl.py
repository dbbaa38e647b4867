"""CoSSL on FixMatch: co-learning of the representation and a balanced classifier with tail-class
feature enhancement (TFE).

Fan, Dai, Kukleva & Schiele, "CoSSL: Co-Learning of Representation and Classifier for Imbalanced
Semi-Supervised Learning" (CVPR 2022; the SeMi paper's Table 4 row "w/ CoSSL"). The arithmetic follows the
authors' code (github YUE-FAN/CoSSL: ``train_cifar_fix_cossl.py``, ``utils/tfe_init.py``); the parity test
(``tests/test_cossl.py``) feeds values their code computed (``tests/reference/make_fixtures.py``).

A run has two stages, as the authors' two commands (a FixMatch run, then CoSSL resumed from its checkpoint
of epoch 401 of 500, for 100 more epochs) in one:

1. **FixMatch** for the first ``pretrain_fraction`` of the run (0.8: the authors' 401 of 501 epochs),
   the weak view in a forward of its own without gradients (as their FixMatch code).
2. **Classifier warm-up**, once, from the EMA network (``on_stage``): weight imprinting (a bias-free
   classifier whose rows are the normalised mean labeled embedding of each class) scores every labeled
   and unlabeled embedding; for each class c with N_c < N_max, N_max - N_c new embeddings
   lam f_a + (1 - lam) f_b, with f_a a labeled embedding of class c drawn with replacement, f_b the
   b-th of the other classes' labeled and all unlabeled embeddings sorted by their imprinted
   probability of c (b = 0, 1, ...), lam ~ Beta(``tfe_alpha``, ``tfe_alpha``), all labeled c; a fresh
   linear classifier (PyTorch's default initialisation) learns the labeled embeddings plus these for
   ``warmup_epochs`` x ``train.epoch_length`` steps of ``warmup_batch_size`` (reshuffled each epoch)
   with Adam (``warmup_lr``, weight decay ``warmup_weight_decay`` on the weights), its exponential
   average (``warmup_ema``) kept beside it. They become the ``teacher`` head of the network and of its EMA.
3. **Co-learning** for the rest: pseudo-labels from the teacher head on the EMA network's embeddings of
   the weak view (threshold ``threshold``), FixMatch's loss on the main head with them; and TFE in every
   step: a class-balanced labeled batch (1 / N_k with replacement, strong view), the EMA network's
   embeddings f_x, each mixed with probability (N_max - N_y) / N_max with an unlabeled embedding f_u as
   lam f_x + (1 - lam) f_u, lam ~ U(``max_lam``, 1), label kept; the teacher head's CE on them
   (``teacher_weight``) joins the step's loss (its gradient reaches the teacher head alone).

Evaluation reports the teacher head (of the EMA network, as the authors evaluate their EMA teacher);
before the co-learning stage it scores the main head's logits (as USB until its warm epoch).

Departures from the authors' code, each forced by the shared engine: the teacher head learns with the
run's optimizer (theirs: its own Adam, lr 0.002, weight decay 5e-4 on the weights; the ``cossl``
protocol preset's optimizer is that Adam) and its EMA is the network's (theirs: an EMA of the same
decay); the warm-up reads the embeddings of the images without augmentation (theirs: the labeled images
and the unlabeled features under their training augmentation, the unlabeled scores from the weak view);
a step's TFE partners f_u are the EMA embeddings of the step's first strong view (every mu-th row; theirs:
an independent batch of labeled and unlabeled images with strong augmentation). USB 0.3.2's CoSSL is not
the reference: its per-sample TFE probability indexes ``label.argmax()`` of an integer label (always
class 0, whose probability is 0), so its training-time TFE never mixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cissl.algorithms.base import Algorithm, Batch, HeadWeights, StepOutput, ViewSpec
from cissl.algorithms.components.consistency import consistency_loss
from cissl.algorithms.components.pseudo_label import threshold_pseudo_labels
from cissl.algorithms.registry import register
from cissl.distributed import local_rows, world_size
from cissl.schema import AlgorithmConfig, option


@dataclass(frozen=True)
class CosslConfig(AlgorithmConfig):
    name: str = option("fixmatch_cossl", help="algorithm name")
    threshold: float = option(0.95, min=0.0, max=1.0, help="confidence threshold tau of the pseudo-labels")
    unlabeled_weight: float = option(1.0, min=0.0, help="lambda_u")
    pretrain_fraction: float = option(0.8, min=0.0, max=1.0, help="share of the run trained as FixMatch before "
                                                                  "the classifier warm-up and co-learning")
    max_lam: float = option(0.6, min=0.0, max=1.0, help="TFE in co-learning: lam ~ U(max_lam, 1)")
    teacher_weight: float = option(1.0, min=0.0, help="weight of the teacher head's TFE loss")
    tfe_alpha: float = option(0.75, min=0.0, max=2.0, min_exclusive=True,
                              help="warm-up TFE: lam ~ Beta(alpha, alpha)")
    warmup_epochs: int = option(10, min=0, help="classifier warm-up: epochs of train.epoch_length steps")
    warmup_lr: float = option(0.002, min=0.0, min_exclusive=True, help="classifier warm-up: Adam's learning rate")
    warmup_weight_decay: float = option(5e-4, min=0.0, help="classifier warm-up: weight decay of the weights")
    warmup_batch_size: int = option(64, min=1, help="classifier warm-up: embeddings per step")
    warmup_ema: float = option(0.999, min=0.0, max=1.0, help="classifier warm-up: decay of the average "
                                                             "that becomes the EMA network's teacher head")


# ----------------------------------------------------------------------------- the classifier warm-up
def imprinted_probabilities(labeled_features, labels, features, num_classes: int) -> torch.Tensor:
    """softmax(features W^T), W_c = mean of class c's labeled embeddings / its L2 norm (no bias)."""
    weight = torch.stack([labeled_features[labels == c].mean(0) for c in range(num_classes)])
    weight = weight / weight.norm(dim=1, keepdim=True)
    return torch.softmax(features @ weight.T, dim=1)


def tfe_draws(labels: torch.Tensor, counts, alpha: float, generator: torch.Generator) -> dict[int, tuple]:
    """Per class c with N_c < N_max: (positions among class c's labeled embeddings, drawn with
    replacement; lam ~ Beta(alpha, alpha)), N_max - N_c of each."""
    draws = {}
    for c, n_c in enumerate(counts):
        size = max(counts) - n_c
        if size > 0:
            chosen = torch.randint(int((labels == c).sum()), (size,), generator=generator)
            draws[c] = (chosen, beta_draws(alpha, size, generator))
    return draws


def beta_draws(alpha: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """Beta(alpha, alpha) by Joehnk's method (X = U^(1/alpha), Y = V^(1/alpha), kept when X + Y <= 1,
    X / (X + Y)), float64, from ``generator`` alone, so that the draws are checkpointed with it."""
    out = torch.empty(size, dtype=torch.float64)
    filled = 0
    while filled < size:
        u, v = torch.rand(2, 2 * (size - filled) + 8, dtype=torch.float64, generator=generator)
        x, y = u ** (1 / alpha), v ** (1 / alpha)
        ok = (x + y <= 1) & (x + y > 0)
        accepted = (x[ok] / (x[ok] + y[ok]))[: size - filled]
        out[filled:filled + len(accepted)] = accepted
        filled += len(accepted)
    return out


def tfe_features(labeled_features, labels, pool_features, labeled_probs, pool_probs, draws) -> tuple:
    """The warm-up's balanced embeddings: the labeled ones, then for each class in ``draws`` its new
    ones (see the module docstring); returns (embeddings, labels)."""
    per_class = [torch.nonzero(labels == c).flatten() for c in range(labeled_probs.shape[1])]
    features, targets = [labeled_features], [labels]
    for c, (chosen, lams) in sorted(draws.items()):
        others = torch.cat([per_class[k] for k in range(len(per_class)) if k != c])
        other_features = torch.cat([labeled_features[others], pool_features])
        other_probs = torch.cat([labeled_probs[others, c], pool_probs[:, c]])
        order = other_probs.sort(descending=True).indices
        partners = other_features[order[: len(chosen)]]
        current = labeled_features[per_class[c]][chosen]
        lam = lams.to(current.dtype).unsqueeze(1)
        features.append(lam * current + (1 - lam) * partners)
        targets.append(torch.full((len(chosen),), c, dtype=labels.dtype))
    return torch.cat(features), torch.cat(targets)


def default_linear(in_features: int, out_features: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """PyTorch's default ``nn.Linear`` initialisation (weights and bias ~ U(-1/sqrt(D), 1/sqrt(D))), seeded."""
    bound = 1 / math.sqrt(in_features)
    weight = (torch.rand(out_features, in_features, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(out_features, generator=generator) * 2 - 1) * bound
    return {"weight": weight, "bias": bias}


def warmup_batches(count: int, batch_size: int, epochs: int, steps_per_epoch: int,
                   generator: torch.Generator) -> list[torch.Tensor]:
    """The warm-up's batches of row indices: each epoch walks fresh permutations (full batches only),
    ``steps_per_epoch`` batches an epoch, as the authors' loader restarted every epoch and when exhausted."""
    batches = []
    for _ in range(epochs):
        order, at = torch.randperm(count, generator=generator), 0
        for _ in range(steps_per_epoch):
            if at + batch_size > count:
                order, at = torch.randperm(count, generator=generator), 0
            batches.append(order[at:at + batch_size])
            at += batch_size
    return batches


def train_classifier(features, labels, initial: dict, batches, lr: float, weight_decay: float,
                     ema_decay: float) -> tuple[dict, dict]:
    """A linear classifier on fixed embeddings: CE, Adam (weight decay on the weights only), an
    exponential average of its parameters after every step; returns (weights, averaged weights)."""
    weight = initial["weight"].detach().clone().float().requires_grad_()  # no nn.Linear: its initialisation
    bias = initial["bias"].detach().clone().float().requires_grad_()      # would draw from the global RNG
    average = {"weight": weight.detach().clone(), "bias": bias.detach().clone()}
    optimizer = torch.optim.Adam([{"params": [weight], "weight_decay": weight_decay},
                                  {"params": [bias], "weight_decay": 0.0}], lr=lr)
    with torch.enable_grad():
        for rows in batches:
            loss = F.cross_entropy(F.linear(features[rows], weight, bias), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for name, value in (("weight", weight), ("bias", bias)):
                    average[name].mul_(ema_decay).add_(value, alpha=1 - ema_decay)
    return {"weight": weight.detach().clone(), "bias": bias.detach().clone()}, average


# ----------------------------------------------------------------------------- co-learning
def tfe_mix(features_x, labels_x, features_u, mix_prob, draws_mix, lams) -> torch.Tensor:
    """Co-learning TFE: row i becomes lam_i f_x,i + (1 - lam_i) f_u,i where draws_mix_i < mix_prob[y_i]."""
    mixed = draws_mix < mix_prob[labels_x]
    lam = lams.to(features_x.dtype).unsqueeze(1)
    return torch.where(mixed.unsqueeze(1), lam * features_x + (1 - lam) * features_u, features_x)


@register("fixmatch_cossl", CosslConfig, summary="FixMatch w/ CoSSL (a balanced teacher head from tail-class "
                                                 "feature enhancement labels the unlabeled images; reported)")
class Cossl(Algorithm):
    @classmethod
    def views(cls, config) -> ViewSpec:
        return ViewSpec(weak_pass="no_grad", balanced_labeled=True)

    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        return ("main", "teacher")

    def __init__(self, config: CosslConfig, context):
        super().__init__(config, context)
        counts = torch.tensor(context.labeled_counts, dtype=torch.float64)
        self.mix_prob = ((counts.max() - counts) / counts.max()).float().to(context.device)  # (N_max - N_k) / N_max
        self.start = round(config.pretrain_fraction * context.iterations)  # the first co-learning step
        self.generator = torch.Generator(device=context.device).manual_seed(context.seed)
        self.warmup_generator = torch.Generator().manual_seed(context.seed + 1)  # the warm-up's draws (CPU)
        self.teacher_ready = False

    @property
    def reported_head(self) -> str:
        return "teacher"

    def evaluation_logits(self, logits):
        return {"main": logits["main"], "teacher": logits["teacher"] if self.teacher_ready else logits["main"]}

    # ------------------------------------------------------------------ the step
    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        cfg = self.config
        colearning = iteration >= self.start
        with torch.no_grad():
            if colearning:  # the live teacher head on the EMA network's embeddings of the weak view
                weak_logits = model.heads["teacher"](self.ema_model.embed(batch.u_weak))
            else:  # FixMatch: the network itself, a forward of its own
                weak_logits = model(batch.u_weak).logits["main"]
            confidence, labels, mask = threshold_pseudo_labels(torch.softmax(weak_logits.float(), dim=1),
                                                                cfg.threshold)
        size = len(batch.x)
        out = model(torch.cat([batch.x, *batch.u_strong]))
        logits = out.logits["main"].split([size] + [len(s) for s in batch.u_strong])
        loss_x = F.cross_entropy(logits[0], batch.y)
        loss_u = consistency_loss(list(logits[1:]), labels, mask.float())
        loss = loss_x + cfg.unlabeled_weight * loss_u
        metrics = {"loss_x": loss_x.detach(), "loss_u": loss_u.detach(), "mask_rate": mask.float().mean(),
                   "confidence": confidence.mean()}
        if colearning:
            teacher_loss = self.teacher_loss(model, batch)
            loss = loss + cfg.teacher_weight * teacher_loss
            metrics["loss_teacher"] = teacher_loss.detach()
        else:  # a zero gradient for the idle teacher head, in one process as DDP needs it (its weights and
            loss = loss + 0.0 * out.logits["teacher"].sum()  # optimizer state are replaced at the stage)
        return StepOutput(loss, metrics, pseudo_labels=labels, mask=mask)

    def teacher_loss(self, model, batch: Batch) -> torch.Tensor:
        """The teacher head's CE on the step's TFE embeddings (no gradient into the network)."""
        with torch.no_grad():
            features_x = self.ema_model.embed(batch.x_balanced)
            mu = len(batch.u_strong[0]) // len(batch.x)
            features_u = self.ema_model.embed(batch.u_strong[0][::mu])  # one partner per labeled row
            # the draws of the global batch, this rank's rows (as one process draws them)
            count = len(batch.y_balanced) * world_size()  # rows of the global batch (equal on every rank)
            draws_mix = local_rows(torch.rand(count, generator=self.generator, device=features_x.device))
            lams = local_rows(self.config.max_lam + (1 - self.config.max_lam)
                              * torch.rand(count, generator=self.generator, device=features_x.device))
            mixed = tfe_mix(features_x.float(), batch.y_balanced, features_u.float(), self.mix_prob, draws_mix, lams)
        return F.cross_entropy(model.heads["teacher"](mixed), batch.y_balanced)

    # ------------------------------------------------------------------ the classifier warm-up
    def stage_iterations(self) -> tuple[int, ...]:
        return (self.start - 1,) if self.start < self.context.iterations else ()

    def on_stage(self, iteration, labeled, pool) -> list[HeadWeights]:
        cfg, k = self.config, self.context.num_classes
        features_l, labels = labeled.features.float(), labeled.labels.long()
        features_u = pool.features.float()
        probs_l = imprinted_probabilities(features_l, labels, features_l, k)
        probs_u = imprinted_probabilities(features_l, labels, features_u, k)
        draws = tfe_draws(labels, [int((labels == c).sum()) for c in range(k)], cfg.tfe_alpha,
                          self.warmup_generator)
        features, targets = tfe_features(features_l, labels, features_u, probs_l, probs_u, draws)
        initial = default_linear(features.shape[1], k, self.warmup_generator)
        batches = warmup_batches(len(targets), cfg.warmup_batch_size, cfg.warmup_epochs,
                                 self.context.epoch_length, self.warmup_generator)
        weights, average = train_classifier(features, targets, initial, batches, cfg.warmup_lr,
                                            cfg.warmup_weight_decay, cfg.warmup_ema)
        self.teacher_ready = True
        return [HeadWeights("teacher", weights, average)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "warmup_generator": self.warmup_generator.get_state(),
                "teacher_ready": self.teacher_ready}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.warmup_generator.set_state(state["warmup_generator"])
        self.teacher_ready = bool(state["teacher_ready"])
