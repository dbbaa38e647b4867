"""SeMi: "When Imbalanced Semi-Supervised Learning Meets Mining Hard Examples" (spec sections 5-8).

FixMatch with a lowered threshold (tau = 0.7) plus, each switchable for the Table 5 ablation:

- OHEML (``use_oheml``): entropy weights of the confident unlabeled examples (Eqs. 3-5);
- EA (``use_ea``): embedding alignment of weak and strong views of ultra-hard examples (Eq. 6);
- the balanced confidence-decay memory bank (``bank.mode``; ``fifo`` is "w/o B") (Eq. 7);
- PLCE (``use_plce``): prototype-based semantic pseudo-labels mixed into the classifier's (Eq. 8);
- BC (``use_balanced_head``): a balanced head g trained with logit-adjusted losses (Eqs. 10-11).

Total loss (Eq. 12, weights as in the authors' code): L = L_s + L_u + L_s_bal + L_u_bal
(+ L_sup_bal) + 0.15 * L_EA. OHEML, EA and PLCE start after ``warmup_epochs`` (ep > E_w); the bank,
class counts and the balanced branch run from step 0 (spec 5.0). With every component off
(``use_oheml/use_ea/use_plce/use_balanced_head: false``) the step equals ``fixmatch`` with the
same threshold, two strong views and mu = 1 (tested).

Where the paper and the authors' code differ the spec's choice is taken (spec section 11): EA weight
0.15 (paper Eq. 12 shows 1); hardness from the weak mixed label; a fixed labeled LA prior
(``balanced.prior: labeled_plus_pseudo_running`` for the paper's Eqs. 10-11); decay of slots not
new since the last decay (``bank.decay_scope: all`` for the paper); the bank does not feed the
balanced head (``bank.sample_for_balanced_head: true``, preset ``semi_paper``, for the paper);
v = alpha * ep / E_total (the code divides by iterations per epoch). Unlike the released code,
features and logits are sliced with the same rows (spec 5.1) and the bank keeps embeddings and
confidences together (spec 6.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cissl.algorithms.base import Algorithm, Batch, Periodic, StepOutput
from cissl.algorithms.components.class_distribution import PseudoLabelCounter
from cissl.algorithms.components.consistency import consistency_loss
from cissl.algorithms.components.embedding_align import EmbeddingAlignment
from cissl.algorithms.components.entropy_weight import entropy_weights
from cissl.algorithms.components.logit_adjust import class_prior, labeled_loss, logit_adjustment
from cissl.algorithms.components.memory_bank import MemoryBank, balanced_draw_counts
from cissl.algorithms.components.plce import mix_pseudo_labels, mixing_weights, semantic_pseudo_labels
from cissl.algorithms.components.pseudo_label import class_probabilities, threshold_pseudo_labels
from cissl.algorithms.components.views import forward_views
from cissl.algorithms.registry import register
from cissl.distributed import all_sum, gather_rows
from cissl.schema import AlgorithmConfig, option, section


@dataclass(frozen=True)
class OhemlConfig:
    scale: float = option(0.75, min=0.0, max=1.0, help="s: omega = s * H / log K + (1 - s)")
    source: str = option("weak_mixed", choices=("weak_mixed", "weak_raw"),
                         help="distribution whose entropy sets omega (PLCE-mixed or raw weak)")


@dataclass(frozen=True)
class EaConfig:
    weight: float = option(0.15, min=0.0, help="weight of L_EA in the total loss")
    temperature: float = option(0.09, min=0.0, min_exclusive=True, help="T_e (teacher uses T_e / 5)")
    center: str = option("prob_ema", choices=("prob_ema", "logit_ema", "none"), help="teacher centring")
    center_momentum: float = option(0.9, min=0.0, max=1.0, help="EMA momentum of the centre")


@dataclass(frozen=True)
class PlceConfig:
    alpha: float = option(0.4, min=0.0, max=1.0, help="ramp: v = alpha * epoch / total epochs")
    temperature: float = option(0.1, min=0.0, min_exclusive=True, help="T_p of the semantic labels")
    renormalize: bool = option(False, help="renormalise the mixed pseudo-label")


@dataclass(frozen=True)
class BankConfig:
    mode: str = option("confidence_decay", choices=("confidence_decay", "fifo"),
                       help="confidence rule with decay, or a class-balanced FIFO (w/o B)")
    capacity: int = option(128, min=1, help="slots per class")
    beta: float = option(0.99, min=0.0, max=1.0, help="confidence decay factor (Eq. 7)")
    decay_step: int = option(100, min=1, help="decay every this many iterations")
    decay_scope: str = option("not_new", choices=("not_new", "all"), help="which slots decay")
    view: str = option("strong", choices=("strong", "weak"), help="which view's embeddings are pushed")
    prototype_includes_empty: bool = option(False, help="emulate the release: mean over all slots")
    sample_for_balanced_head: bool = option(False, help="draw bank entries for the balanced head (paper)")
    num_samples: int = option(128, min=0, help="bank entries drawn per step for the balanced head")


@dataclass(frozen=True)
class BalancedConfig:
    tau1: float = option(2.0, min=0.0, help="LA strength of p when pula is on")
    tau12: float = option(2.0, min=0.0, help="LA strength of the balanced pseudo-labels")
    tau2: float = option(2.0, min=0.0, help="LA strength of the balanced labeled loss")
    prior: str = option("labeled_fixed", choices=("labeled_fixed", "labeled_plus_pseudo_running"),
                        help="LA prior: exact labeled counts, or labeled + pseudo-label counts per step")
    after_warmup: bool = option(False, help="train the balanced branch only after the warm-up (paper)")


@dataclass(frozen=True)
class SemiConfig(AlgorithmConfig):
    name: str = option("semi", help="algorithm name")
    threshold: float = option(0.7, min=0.0, max=1.0, help="confidence threshold tau")
    temperature: float = option(1.0, min=0.0, min_exclusive=True,
                                help="T dividing every softmax taken for targets and masks (p, r, balanced)")
    warmup_epochs: int = option(2, min=0, help="E_w: OHEML / EA / PLCE start when epoch > E_w")
    use_oheml: bool = option(True, help="entropy weights (Eqs. 3-5); off: omega = 1")
    use_ea: bool = option(True, help="embedding alignment of ultra-hard samples (Eq. 6)")
    use_plce: bool = option(True, help="prototype pseudo-label mixing (Eq. 8)")
    use_balanced_head: bool = option(True, help="balanced head with LA losses (Eqs. 10-11), reported")
    pula: bool = option(False, help="pseudo-labels from LA-adjusted logits (softmax(f - A_tau1))")
    oheml: OhemlConfig = section(OhemlConfig)
    ea: EaConfig = section(EaConfig)
    plce: PlceConfig = section(PlceConfig)
    bank: BankConfig = section(BankConfig)
    balanced: BalancedConfig = section(BalancedConfig)


@register("semi", SemiConfig, summary="SeMi (threshold 0.7, OHEML, EA, bank, PLCE, balanced head)")
@register("semi_paper", SemiConfig, preset={"bank": {"sample_for_balanced_head": True}},
          summary="SeMi with bank samples for the balanced head, as the paper text describes")
class SeMi(Algorithm):
    @classmethod
    def required_heads(cls, config) -> tuple[str, ...]:
        return ("main", "balanced") if config.use_balanced_head else ("main",)

    def __init__(self, config: SemiConfig, context):
        super().__init__(config, context)
        device = context.device
        k = context.num_classes
        self.labeled_counts = torch.tensor(context.labeled_counts, dtype=torch.float64, device=device)
        self.total_epochs = context.iterations / context.epoch_length
        bank = config.bank
        self.bank = MemoryBank(k, bank.capacity, context.feature_dim, mode=bank.mode, beta=bank.beta,
                               decay_scope=bank.decay_scope, device=device)
        self.alignment = EmbeddingAlignment(context.feature_dim, temperature=config.ea.temperature,
                                            center=config.ea.center, momentum=config.ea.center_momentum, device=device)
        self.pseudo_counts = PseudoLabelCounter(k, device)
        self.generator = torch.Generator(device=device).manual_seed(context.seed)  # bank draws
        self.labeled_prior = class_prior(context.labeled_counts).to(device)

    @property
    def reported_head(self) -> str:
        return "balanced" if self.config.use_balanced_head else "main"

    # ------------------------------------------------------------------ helpers
    def epoch(self, iteration: int) -> int:
        return iteration // self.context.epoch_length

    def active(self, iteration: int) -> bool:
        """SeMi's own terms run after the warm-up: epoch > E_w (strict; spec 5.0)."""
        return self.epoch(iteration) > self.config.warmup_epochs

    def balanced_prior(self) -> torch.Tensor:
        if self.config.balanced.prior == "labeled_fixed":
            return self.labeled_prior
        counts = self.labeled_counts + self.pseudo_counts.counts
        return (counts / counts.sum()).float()

    # ------------------------------------------------------------------ the step
    def step(self, model, batch: Batch, iteration: int) -> StepOutput:
        cfg = self.config
        active = self.active(iteration)
        views = forward_views(model, batch)
        weak_logits = views.weak_logits["main"].detach().float()
        strong_main = [s["main"] for s in views.strong_logits]
        metrics: dict[str, torch.Tensor | float] = {}

        # supervised loss of the standard head (Eq. 1)
        loss_x = labeled_loss(views.labeled_logits["main"], batch.y)
        loss = loss_x
        metrics["loss_x"] = loss_x.detach()

        with torch.no_grad():
            prior = self.balanced_prior()
            # r: the unadjusted prediction; p: the pseudo-label distribution (LA-adjusted under pula).
            # T divides every softmax taken for targets and masks (spec 5.3-5.4, v2.1)
            raw = class_probabilities(weak_logits, cfg.temperature)
            if cfg.pula:
                probs = torch.softmax((weak_logits - logit_adjustment(prior, cfg.balanced.tau1)) / cfg.temperature,
                                      dim=1)
            else:
                probs = raw
            # PLCE (Eq. 8): prototypes from the bank before this step's push; query = strong-1 embedding
            mixed = probs
            if active and cfg.use_plce:
                protos, has = self.bank.prototypes(cfg.bank.prototype_includes_empty)
                semantic = semantic_pseudo_labels(views.strong[0].detach(), protos, has, cfg.plce.temperature)
                c = mixing_weights(self.pseudo_counts.weights, has, self.epoch(iteration), self.total_epochs,
                                   cfg.plce.alpha)
                mixed = mix_pseudo_labels(probs, semantic, c, cfg.plce.renormalize)
                metrics["plce_mix_max"] = c.max()
            # masks and targets (spec 5.4): OR of the mixed and the unadjusted confidence r (also under pula)
            confidence, pseudo, mask = threshold_pseudo_labels(mixed, cfg.threshold)
            mask = mask | (raw.max(dim=1).values >= cfg.threshold)
            # OHEML weights (Eqs. 3-4)
            if active and cfg.use_oheml:
                omega = entropy_weights(mixed if cfg.oheml.source == "weak_mixed" else probs, cfg.oheml.scale)
            else:
                omega = torch.ones_like(confidence)
        # unlabeled loss with OHEML weights (Eqs. 5 / 9)
        loss_u = consistency_loss(strong_main, pseudo, mask.float() * omega)
        loss = loss + loss_u
        metrics.update(loss_u=loss_u.detach(), mask_rate=mask.float().mean(), confidence=confidence.mean(),
                       omega=(omega * mask).sum() / mask.sum().clamp(min=1))

        # EA for ultra-hard samples (Eq. 6)
        if active and cfg.use_ea:
            loss_ea = self.alignment.loss(views.weak, views.strong, mask)
            loss = loss + cfg.ea.weight * loss_ea
            metrics["loss_ea"] = loss_ea.detach()

        # balanced branch (Eqs. 10, 11) and the optional bank term
        if cfg.use_balanced_head and (active or not cfg.balanced.after_warmup):
            loss = loss + self._balanced_losses(model, views, batch, weak_logits, prior, pseudo, mask, metrics)

        # bank push and class counts (every step from step 0; spec 5.8, 7), from the global batch under DDP
        with torch.no_grad():
            pseudo_all, confidence_all, mask_all = (gather_rows(t) for t in (pseudo, confidence, mask))
            if cfg.bank.view == "strong":
                candidates = torch.cat([gather_rows(s.detach()) for s in views.strong])
                repeat = len(views.strong)
                self.bank.push(candidates, pseudo_all.repeat(repeat), confidence_all.repeat(repeat),
                               mask_all.repeat(repeat))
            else:
                self.bank.push(gather_rows(views.weak.detach()), pseudo_all, confidence_all, mask_all)
            self.pseudo_counts.update(pseudo_all, mask_all)
        metrics["bank_fill"] = self.bank.filled.float().mean()
        metrics["active"] = float(active)
        return StepOutput(loss, metrics, pseudo_labels=pseudo, mask=mask)

    def _balanced_losses(self, model, views, batch: Batch, weak_logits, prior, pseudo, mask, metrics):
        cfg = self.config
        balanced = cfg.balanced
        adjust_x = logit_adjustment(prior, balanced.tau2)
        loss_x_bal = labeled_loss(views.labeled_logits["balanced"], batch.y, adjust_x)
        with torch.no_grad():
            temperature = cfg.temperature
            adjusted = torch.softmax((weak_logits - logit_adjustment(prior, balanced.tau12)) / temperature, dim=1)
            conf_bal, target_bal, mask_bal = threshold_pseudo_labels(adjusted, cfg.threshold)
            own = class_probabilities(views.weak_logits["balanced"], temperature).max(dim=1).values
            mask_bal = mask_bal | (own >= cfg.threshold)
        loss_u_bal = consistency_loss([s["balanced"] for s in views.strong_logits], target_bal, mask_bal.float())
        metrics.update(loss_x_bal=loss_x_bal.detach(), loss_u_bal=loss_u_bal.detach(),
                       mask_rate_bal=mask_bal.float().mean())
        total = loss_x_bal + loss_u_bal
        if cfg.bank.sample_for_balanced_head:
            with torch.no_grad():
                k = self.context.num_classes
                batch_counts = all_sum(torch.bincount(batch.y, minlength=k) + torch.bincount(pseudo[mask], minlength=k))
                draws = balanced_draw_counts(batch_counts, cfg.bank.num_samples, self.generator)
                drawn, drawn_labels = self.bank.sample(draws, self.generator)
            if len(drawn_labels):
                loss_bank = labeled_loss(model.heads["balanced"](drawn), drawn_labels)
                total = total + loss_bank
                metrics["loss_bank_bal"] = loss_bank.detach()
        return total

    # ------------------------------------------------------------------ schedule hooks (spec 5.9)
    def periodic(self) -> list[Periodic]:
        """Bank decay (Eq. 7) after every ``decay_step``-th global iteration."""
        return [Periodic(self.config.bank.decay_step, lambda iteration: self.bank.decay())]

    def on_epoch_end(self, epoch: int) -> None:
        """w = n / sum n, used for the whole next epoch (spec 7)."""
        self.pseudo_counts.refresh()

    def state_dict(self) -> dict:
        return {"bank": self.bank.state_dict(), "alignment": self.alignment.state_dict(),
                "pseudo_counts": self.pseudo_counts.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state["bank"])
        self.alignment.load_state_dict(state["alignment"])
        self.pseudo_counts.load_state_dict(state["pseudo_counts"])
        self.generator.set_state(state["generator"])

