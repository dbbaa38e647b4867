"""Step-level tests of SeMi and FixMatch against the per-image oracle of ``naive_semi.py``.

The stub network looks each image's embedding up from its id (first pixel) and applies real linear
heads, so every row of every block identifies its image. Several unlabeled images per step, both
view layouts (mu = 1 with 2 strong views; mu = 2 with 1), a dozen steps across the warm-up: at every
step the loss and each named term, the gradients, masks, pseudo-labels, the bank's (embedding, label,
confidence, arrival) entries, the class counts, the EA centre and w must equal the oracle's.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import id_images
from naive_semi import NaiveSeMi, naive_fixmatch_step

from cissl.algorithms import AlgorithmContext, Batch, algorithm_class, build_algorithm
from cissl.algorithms.base import run_hooks
from cissl.algorithms.components.memory_bank import balanced_draw_counts
from cissl.config import load_config
from cissl.models import Classifier

K, D = 4, 6
COUNTS = (8, 4, 2, 1)
B = 4
STEPS, EPOCH = 12, 3  # warm-up E_w = 1: SeMi's own terms from iteration 6 (epoch 2)
LABELED_IDS = 50
LAYOUTS = [pytest.param(1, 2, id="mu1-V2"), pytest.param(2, 1, id="mu2-V1")]


class LookupBackbone(torch.nn.Module):
    """Embedding = a learnable table row chosen by the image's id."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.feature_dim = table.shape[1]

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].round().long()]


def stub_model(heads, mu: int, views: int, scale: float = 2.5, seed: int = 0) -> Classifier:
    n_ids = LABELED_IDS + STEPS * (views + 1) * B * mu
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(n_ids, D, generator=gen) * scale
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(LookupBackbone(table), K, (0.0,), (1.0,), heads)


def make_batch(t: int, mu: int, views: int, gen: torch.Generator) -> Batch:
    """Labeled ids below LABELED_IDS; the weak and strong views of unlabeled image i carry ids that
    differ per view and per step (every view has its own embedding)."""
    bu = B * mu
    base = LABELED_IDS + t * (views + 1) * bu
    x = id_images(torch.randint(0, LABELED_IDS, (B,), generator=gen).tolist())
    y = torch.randint(0, K, (B,), generator=gen)
    weak = id_images(range(base, base + bu))
    strong = tuple(id_images(range(base + (v + 1) * bu, base + (v + 2) * bu)) for v in range(views))
    return Batch(x=x, y=y, u_weak=weak, u_strong=strong, u_index=torch.arange(bu))


def context(iterations=STEPS) -> AlgorithmContext:
    return AlgorithmContext(num_classes=K, labeled_counts=COUNTS, feature_dim=D, iterations=iterations,
                            epoch_length=EPOCH)


def semi_config(*overrides: str, name: str = "semi"):
    base = ["algorithm.warmup_epochs=1", "algorithm.bank.capacity=3", "algorithm.bank.decay_step=2",
            "algorithm.bank.beta=0.9"]
    return load_config(None, [f"algorithm.name={name}", *base, *overrides]).algorithm


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().double()
            for name, p in model.named_parameters()}


def backward(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return gradients(model)


def assert_close(actual, expected, what, rel=2e-5, abs=1e-6):
    actual, expected = (float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in (actual, expected))
    assert actual == pytest.approx(expected, rel=rel, abs=abs), what


def assert_bank_matches(bank, naive_bank, step):
    entries = {}
    for k in range(bank.num_classes):
        for slot in bank.filled[k].nonzero().flatten().tolist():
            entries[int(bank.arrival[k, slot])] = (k, bank.embeddings[k, slot], float(bank.confidence[k, slot]))
    expected = naive_bank.by_arrival()
    assert entries.keys() == expected.keys(), f"step {step}: bank holds other candidates"
    for arrival, (k, embedding, confidence) in entries.items():
        k_ref, emb_ref, conf_ref = expected[arrival]
        assert k == k_ref, f"step {step}: candidate {arrival} filed under class {k}, expected {k_ref}"
        assert torch.allclose(embedding.double(), emb_ref, atol=1e-6), f"step {step}: embedding of {arrival}"
        assert_close(confidence, conf_ref, f"step {step}: confidence of {arrival}")


def run_semi_against_oracle(cfg, mu, views, steps=STEPS):
    algo = build_algorithm(cfg, context())
    naive = NaiveSeMi(cfg, K, COUNTS, D, STEPS, EPOCH)
    model = stub_model(algorithm_class(cfg.name).required_heads(cfg), mu, views)
    gen = torch.Generator().manual_seed(1)
    seen = {"mask": [], "active": [], "ea": 0, "plce_changed_label": False}
    for t in range(steps):
        batch = make_batch(t, mu, views, gen)
        out = algo.step(model, batch, t)
        grads = backward(model, out.loss)
        ref = naive.step(model, batch.x, batch.y, batch.u_weak, batch.u_strong, t)
        ref_grads = backward(model, ref["loss"])

        assert out.mask.tolist() == ref["mask"], f"step {t}: mask"
        assert out.pseudo_labels.tolist() == ref["pseudo"], f"step {t}: pseudo-labels"
        terms = {key for key in out.metrics if key.startswith("loss_")}
        assert terms == {key for key in ref if key.startswith("loss_")}, f"step {t}: which terms are on"
        for key in terms:
            assert_close(out.metrics[key], ref[key], f"step {t}: {key}")
        assert_close(out.loss, ref["loss"], f"step {t}: total loss")
        for name, grad in grads.items():
            assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-6), f"step {t}: grad {name}"
        mask = torch.tensor(ref["mask"], dtype=torch.float64)
        assert_close(out.metrics["mask_rate"], mask.mean(), f"step {t}: mask rate")
        assert_close(out.metrics["confidence"], sum(ref["confidence"]) / len(mask), f"step {t}: confidence")
        omega = torch.tensor(ref["omega"], dtype=torch.float64)
        assert_close(out.metrics["omega"], (omega * mask).sum() / max(mask.sum(), 1), f"step {t}: omega")
        if "mask_bal" in ref:
            assert_close(out.metrics["mask_rate_bal"], sum(ref["mask_bal"]) / len(mask), f"step {t}: bal rate")
        assert out.metrics["active"] == float(ref["active"])
        assert_close(out.metrics["bank_fill"], ref["bank_fill"], f"step {t}: bank fill")
        assert ("plce_mix_max" in out.metrics) == ("plce_mix_max" in ref)
        if "plce_mix_max" in ref:
            assert_close(out.metrics["plce_mix_max"], ref["plce_mix_max"], f"step {t}: largest PLCE weight")

        run_hooks(algo, t, algo.context.epoch_length)
        naive.after_step(t)
        assert_bank_matches(algo.bank, naive.bank, t)
        assert algo.pseudo_counts.counts.tolist() == naive.counts, f"step {t}: class counts"
        assert torch.allclose(algo.pseudo_counts.weights.double(), torch.tensor(naive.w, dtype=torch.float64))
        assert torch.allclose(algo.alignment.center.double(), naive.center, atol=1e-6), f"step {t}: EA centre"
        seen["mask"].append(ref["mask"])
        seen["active"].append(ref["active"])
        seen["ea"] += "loss_ea" in ref and float(torch.as_tensor(ref["loss_ea"]).detach()) > 0
    return algo, seen


VARIANTS = {
    "semi": [],
    "wo_bank": ["algorithm.bank.mode=fifo"],
    "wo_oheml": ["algorithm.use_oheml=false"],
    "wo_ea": ["algorithm.use_ea=false"],
    "wo_plce": ["algorithm.use_plce=false"],
    "wo_bc": ["algorithm.use_balanced_head=false"],
    # spec v2.1: the OR term uses the unadjusted r also under pula; T divides every target/mask softmax
    "pula": ["algorithm.pula=true", "algorithm.balanced.tau1=1.5"],
    "temperature": ["algorithm.temperature=0.6"],
    "pula_and_temperature": ["algorithm.pula=true", "algorithm.temperature=1.7", "algorithm.balanced.tau1=1.5"],
    "paper_text": ["algorithm.balanced.prior=labeled_plus_pseudo_running", "algorithm.bank.decay_scope=all",
                   "algorithm.balanced.after_warmup=true", "algorithm.balanced.tau2=1.0",
                   "algorithm.balanced.tau12=0.5"],
    "other_switches": ["algorithm.oheml.source=weak_raw", "algorithm.oheml.scale=0.5", "algorithm.ea.center=logit_ema",
                       "algorithm.ea.weight=0.3", "algorithm.ea.temperature=0.5", "algorithm.ea.center_momentum=0.8",
                       "algorithm.plce.renormalize=true", "algorithm.plce.alpha=0.9", "algorithm.plce.temperature=0.7",
                       "algorithm.bank.view=weak", "algorithm.bank.prototype_includes_empty=true",
                       "algorithm.threshold=0.6"],
    "ea_centre_none": ["algorithm.ea.center=none", "algorithm.plce.alpha=1.0"],
}


@pytest.mark.parametrize("mu,views", LAYOUTS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_semi_step_equals_the_per_image_oracle(variant, mu, views):
    cfg = semi_config(*VARIANTS[variant])
    _, seen = run_semi_against_oracle(cfg, mu, views)
    masks = [m for step in seen["mask"] for m in step]
    assert any(masks) and not all(masks), "the stub must give both confident and ultra-hard images"
    assert seen["active"][:6] == [False] * 6 and all(seen["active"][6:])
    if cfg.use_ea:
        assert seen["ea"] >= 3  # EA really aligned rows after the warm-up


def test_pula_changes_the_pseudo_labels_but_not_the_or_term():
    """Under pula the pseudo-label comes from softmax((f - A_tau1) / T) while the OR term of the mask
    reads the unadjusted r = softmax(f / T) (spec 5.4, v2.1): an image that only r finds confident
    is used with the adjusted label."""
    cfg = semi_config("algorithm.pula=true", "algorithm.use_balanced_head=false", "algorithm.warmup_epochs=5")
    algo = build_algorithm(cfg, context())
    model = Classifier(LookupBackbone(torch.eye(D)[:2] * 0), K, (0.0,), (1.0,), ("main",))
    with torch.no_grad():
        head = model.heads["main"]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))  # r = (.87, .04, .04, .04): confident class 0
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1]), u_strong=(id_images([1]),))
    out = algo.step(model, batch, 0)
    # pi = (8, 4, 2, 1) / 15; f - 2 log pi = (4.26, 2.64, 4.03, 5.42): class 3 with p = 0.615 < 0.7
    assert out.pseudo_labels.tolist() == [3]
    assert out.metrics["confidence"].item() == pytest.approx(0.615, abs=1e-3)
    assert out.mask.tolist() == [True]  # only r clears 0.7


@pytest.mark.parametrize("mu,views", LAYOUTS)
def test_bank_term_of_the_balanced_head(mu, views):
    """semi_paper: L_sup_bal = CE(g(z), k) over entries drawn from the bank *before* this step's push,
    as many per class as the labeled batch and the masked pseudo-labels leave the class short
    (spec 6.5); plain CE, weight 1, z detached (only g learns from it)."""
    cfg = semi_config("algorithm.bank.num_samples=6", name="semi_paper")
    algo = build_algorithm(cfg, context())
    naive = NaiveSeMi(cfg, K, COUNTS, D, STEPS, EPOCH)
    model = stub_model(("main", "balanced"), mu, views)
    gen = torch.Generator().manual_seed(1)
    drawn_steps = 0
    for t in range(8):
        batch = make_batch(t, mu, views, gen)
        bank_before, draw_gen = copy.deepcopy(algo.bank), torch.Generator().manual_seed(0)
        draw_gen.set_state(algo.generator.get_state())
        out = algo.step(model, batch, t)
        grads = backward(model, out.loss)
        ref = naive.step(model, batch.x, batch.y, batch.u_weak, batch.u_strong, t)
        pseudo, mask = torch.tensor(ref["pseudo"]), torch.tensor(ref["mask"])
        counts = torch.bincount(batch.y, minlength=K) + torch.bincount(pseudo[mask], minlength=K)
        drawn, labels = bank_before.sample(balanced_draw_counts(counts, 6, draw_gen), draw_gen)
        expected = ref["loss"]
        if len(labels):
            term = F.cross_entropy(model.heads["balanced"](drawn), labels)
            assert_close(out.metrics["loss_bank_bal"], term, f"step {t}: bank term")
            expected = expected + term
            drawn_steps += 1
        else:
            assert "loss_bank_bal" not in out.metrics
        assert_close(out.loss, expected, f"step {t}: total with the bank term")
        ref_grads = backward(model, expected)
        for name, grad in grads.items():
            assert torch.allclose(grad, ref_grads[name].double(), rtol=1e-4, atol=1e-6), name
        run_hooks(algo, t, algo.context.epoch_length)
        naive.after_step(t)
    assert drawn_steps >= 4


FIXMATCH_VARIANTS = {
    "fixmatch": ["algorithm.threshold=0.6"],
    "fixmatch_la": ["algorithm.threshold=0.5", "algorithm.la_tau=1.5", "algorithm.temperature=0.8",
                    "algorithm.unlabeled_weight=0.7"],
}


@pytest.mark.parametrize("mu,views", LAYOUTS)
@pytest.mark.parametrize("name", list(FIXMATCH_VARIANTS))
def test_fixmatch_step_equals_the_per_image_oracle(name, mu, views):
    cfg = load_config(None, [f"algorithm.name={name}", *FIXMATCH_VARIANTS[name]]).algorithm
    algo = build_algorithm(cfg, context())
    model = stub_model(("main",), mu, views)
    gen = torch.Generator().manual_seed(2)
    masks = []
    for t in range(4):
        batch = make_batch(t, mu, views, gen)
        out = algo.step(model, batch, t)
        grads = backward(model, out.loss)
        ref = naive_fixmatch_step(cfg, model, batch.x, batch.y, batch.u_weak, batch.u_strong, COUNTS)
        ref_grads = backward(model, ref["loss"])
        assert out.mask.tolist() == ref["mask"] and out.pseudo_labels.tolist() == ref["pseudo"]
        for key in ("loss_x", "loss_u", "loss"):
            assert_close(out.metrics[key] if key != "loss" else out.loss, ref[key], f"step {t}: {key}")
        assert_close(out.metrics["mask_rate"], sum(ref["mask"]) / len(ref["mask"]), "mask rate")
        assert_close(out.metrics["confidence"], sum(ref["confidence"]) / len(ref["mask"]), "confidence")
        for param, grad in grads.items():
            assert torch.allclose(grad, ref_grads[param], rtol=1e-4, atol=1e-6), param
        masks.extend(ref["mask"])
    assert any(masks) and not all(masks)


TERM_WEIGHTS = {"loss_x": 1.0, "loss_u": 1.0, "loss_x_bal": 1.0, "loss_u_bal": 1.0, "loss_bank_bal": 1.0}
BASE_TERMS = {"loss_x", "loss_u"}
BALANCED_TERMS = {"loss_x_bal", "loss_u_bal"}
TABLE5 = {  # row: (switch, terms during the warm-up, terms after it); spec 5.0, 5.9, 8.4
    "SeMi": ([], BASE_TERMS | BALANCED_TERMS, BASE_TERMS | BALANCED_TERMS | {"loss_ea"}),
    "w/o B": (["algorithm.bank.mode=fifo"], BASE_TERMS | BALANCED_TERMS, BASE_TERMS | BALANCED_TERMS | {"loss_ea"}),
    "w/o OHEML": (["algorithm.use_oheml=false"], BASE_TERMS | BALANCED_TERMS,
                  BASE_TERMS | BALANCED_TERMS | {"loss_ea"}),
    "w/o EA": (["algorithm.use_ea=false"], BASE_TERMS | BALANCED_TERMS, BASE_TERMS | BALANCED_TERMS),
    "w/o PLCE": (["algorithm.use_plce=false"], BASE_TERMS | BALANCED_TERMS, BASE_TERMS | BALANCED_TERMS | {"loss_ea"}),
    "w/o BC": (["algorithm.use_balanced_head=false"], BASE_TERMS, BASE_TERMS | {"loss_ea"}),
    "paper: bank term, balanced branch after warm-up": (
        ["algorithm.bank.sample_for_balanced_head=true", "algorithm.balanced.after_warmup=true"],
        BASE_TERMS, BASE_TERMS | BALANCED_TERMS | {"loss_ea", "loss_bank_bal"}),
}


@pytest.mark.parametrize("row", list(TABLE5))
def test_total_loss_is_the_weighted_sum_of_its_named_terms(row):
    """Eq. 12 with the code's weights: L = L_s + L_u + L_s_bal + L_u_bal (+ L_sup_bal) + 0.15 L_EA, each term
    on in the phase the timeline gives it, for every Table-5 switch."""
    switches, during, after = TABLE5[row]
    cfg = semi_config(*switches)
    assert cfg.ea.weight == 0.15
    algo = build_algorithm(cfg, context())
    model = stub_model(algorithm_class("semi").required_heads(cfg), 1, 2)
    gen = torch.Generator().manual_seed(3)
    for t in range(STEPS):
        out = algo.step(model, make_batch(t, 1, 2, gen), t)
        terms = {k: v for k, v in out.metrics.items() if k.startswith("loss_")}
        assert set(terms) == (after if t >= 6 else during), f"iteration {t}"
        weights = {**TERM_WEIGHTS, "loss_ea": 0.15}
        assert_close(out.loss, sum(weights[k] * float(v) for k, v in terms.items()), f"iteration {t}")
        if "loss_ea" in terms:
            assert float(terms["loss_ea"]) > 0  # a real term, so its weight is tested
        run_hooks(algo, t, algo.context.epoch_length)
