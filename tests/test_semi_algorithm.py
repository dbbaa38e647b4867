"""SeMi as a whole: losses by hand, timeline, feature alignment, FixMatch identity, resume, a real run."""


import pytest
import torch
import torch.nn.functional as F
from helpers import id_images, tiny_config
from test_training import assert_same_state

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.base import run_hooks
from cissl.algorithms.components.views import forward_views
from cissl.config import ModelConfig, load_config
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.run import resume_run, start_run
from cissl.engine.trainer import Trainer
from cissl.models import ModelOutput, build_model


class TwoHeadTable(torch.nn.Module):
    """Logits of both heads and the embedding looked up from the input's first pixel."""

    def __init__(self, main, balanced, features):
        super().__init__()
        self.main = torch.nn.Parameter(main.clone())
        self.balanced_table = torch.nn.Parameter(balanced.clone())
        self.features = features
        self.heads = torch.nn.ModuleDict({"balanced": torch.nn.Identity()})
        self.feature_dim = features.shape[1]

    def forward(self, x):
        rows = x[:, 0, 0, 0].round().long()
        return ModelOutput(self.features[rows], {"main": self.main[rows], "balanced": self.balanced_table[rows]})


def semi(*overrides, counts=(6, 3, 1), iterations=1000, epoch_length=10, feature_dim=2):
    config = load_config(None, ["algorithm.name=semi", *overrides])
    context = AlgorithmContext(num_classes=len(counts), labeled_counts=tuple(counts), feature_dim=feature_dim,
                               iterations=iterations, epoch_length=epoch_length)
    return build_algorithm(config.algorithm, context)


def test_semi_reports_its_balanced_head_and_without_it_the_main_one():
    assert semi().reported_head == "balanced"
    assert semi("algorithm.use_balanced_head=false").reported_head == "main"  # the "w/o balanced head" row


def test_balanced_branch_losses_by_hand():
    """pi = (.6, .3, .1); tau2 = tau12 = 2: labeled loss CE(g + log(pi^2 + 1e-12), y); balanced targets
    argmax softmax(f(u_w) - 2 log pi), masked by (max >= .7) OR (max softmax(g(u_w)) >= .7)."""
    algo = semi("algorithm.use_oheml=false", "algorithm.use_ea=false", "algorithm.use_plce=false")
    main = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [3.0, 0, 0], [0.0, 1, 0], [0.0, 0, 1]])
    bal = torch.tensor([[1.0, 0, 0], [0.0, 0, 0], [0.0, 0, 5.0], [0.0, 0, 2.0], [1.0, 2.0, 0]])
    model = TwoHeadTable(main, bal, torch.zeros(5, 2))
    batch = Batch(x=id_images([0]), y=torch.tensor([2]), u_weak=id_images([1, 2]), u_strong=(id_images([3, 4]),))
    out = algo.step(model, batch, 0)
    a = torch.log(torch.tensor([0.36, 0.09, 0.01]) + 1e-12)
    assert out.metrics["loss_x_bal"].item() == pytest.approx(F.cross_entropy(bal[:1] + a, torch.tensor([2])).item(),
                                                             rel=1e-6)
    # f(u_w) - A = (3 - ln .36, -ln .09, -ln .01) = (4.02, 2.41, 4.61): target class 2 with p = 0.60 < 0.7
    h = torch.softmax(main[1] - a, dim=0)
    assert h.argmax().item() == 2 and 0.55 < h.max() < 0.7
    # image 1: g(u_w) uniform -> masked out; image 2: g(u_w) = (0, 0, 5) is confident -> used (OR)
    assert out.metrics["mask_rate_bal"].item() == 0.5
    expected = F.cross_entropy(bal[4:5], torch.tensor([2])).item() / 2  # mean over V * B_u = 2 rows
    assert out.metrics["loss_u_bal"].item() == pytest.approx(expected, rel=1e-6)


def test_timeline_warmup_is_strict():
    algo = semi("algorithm.warmup_epochs=2")
    assert not algo.active(29) and algo.active(30)  # epoch_length 10: epoch 2 is still warm-up


def test_terms_switch_on_after_warmup():
    algo = semi("algorithm.warmup_epochs=0", "algorithm.threshold=0.99", feature_dim=3)
    features = torch.randn(5, 3)
    model = TwoHeadTable(torch.randn(5, 3), torch.randn(5, 3), features)
    batch = Batch(x=id_images([0]), y=torch.tensor([1]), u_weak=id_images([1, 2]),
                  u_strong=(id_images([3, 4]), id_images([3, 4])))
    warm = algo.step(model, batch, 5)    # epoch 0: not active
    later = algo.step(model, batch, 15)  # epoch 1 > 0: active
    assert "loss_ea" not in warm.metrics and "loss_ea" in later.metrics
    assert later.metrics["loss_ea"].item() > 0  # nothing passes 0.99: all ultra-hard


class IdentityBackbone(torch.nn.Module):
    """Embedding = the image's id (first pixel), times a learnable 1 (so gradients can be seen)."""

    feature_dim = 1

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x[:, :1, 0, 0] * self.scale


@pytest.mark.parametrize("weak_pass", ["joint", "no_grad"])
def test_features_and_logits_aligned_in_both_layouts(weak_pass):
    from cissl.models import Classifier

    model = Classifier(IdentityBackbone(), 3, (0.0,), (1.0,))
    for mu, views in ((1, 2), (2, 1)):
        b = 4
        x = id_images(range(b))
        u = [id_images(range(100 * (v + 1), 100 * (v + 1) + b * mu)) for v in range(views + 1)]
        out = forward_views(model, Batch(x=x, y=torch.zeros(b, dtype=torch.long), u_weak=u[0],
                                         u_strong=tuple(u[1:])), weak_pass)
        assert out.labeled.flatten().tolist() == list(range(b))
        assert torch.equal(out.labeled_logits["main"], model.heads["main"](out.labeled))
        assert out.weak.flatten().tolist() == list(range(100, 100 + b * mu))
        assert torch.equal(out.weak_logits["main"], model.heads["main"](out.weak))
        assert out.weak.requires_grad is (weak_pass == "joint")  # the separate weak pass carries no gradient
        assert len(out.strong) == len(out.strong_logits) == views
        for v, block in enumerate(out.strong):
            assert block.flatten().tolist() == list(range(100 * (v + 2), 100 * (v + 2) + b * mu))
            assert block.requires_grad
            expected_logits = model.heads["main"](block)
            assert torch.equal(out.strong_logits[v]["main"], expected_logits)


def test_forward_views_of_a_labeled_only_batch():
    from cissl.models import Classifier

    model = Classifier(IdentityBackbone(), 3, (0.0,), (1.0,))
    out = forward_views(model, Batch(x=id_images([5, 6]), y=torch.zeros(2, dtype=torch.long)))
    assert out.labeled.flatten().tolist() == [5, 6] and out.weak is None and out.strong == ()
    assert torch.equal(out.labeled_logits["main"], model.heads["main"](out.labeled))
    assert out.weak_logits == {} and out.strong_logits == ()
    with pytest.raises(ValueError, match="weak_pass must be 'joint' or 'no_grad', got 'later'"):
        forward_views(model, Batch(x=id_images([5]), y=torch.zeros(1, dtype=torch.long)), "later")


def test_real_wrn_sliced_embeddings_equal_separate_forwards():
    model = build_model(ModelConfig(depth=10, widen=1), 3, 10, (0.5,) * 3, (0.25,) * 3, 0, ("main", "balanced"))
    model.eval()
    gen = torch.Generator().manual_seed(0)
    blocks = [torch.rand(n, 3, 16, 16, generator=gen) for n in (3, 5, 5, 5)]
    out = forward_views(model, Batch(x=blocks[0], y=torch.zeros(3, dtype=torch.long), u_weak=blocks[1],
                                     u_strong=(blocks[2], blocks[3])))
    sliced = [out.labeled, out.weak, *out.strong]
    for block, features in zip(blocks, sliced):
        assert torch.allclose(model(block).features, features, atol=1e-5)


@pytest.mark.parametrize("mu,views", [(1, 2), (2, 1)])
def test_semi_with_everything_off_equals_fixmatch(tmp_path, mu, views):
    """spec 8.5: same seed and streams, the same threshold -> identical pseudo-labels, masks, unlabeled
    and total losses and parameters, step after step, in both layouts. The threshold is low enough
    that the mask is neither empty nor full on most steps, so the unlabeled loss is really compared."""
    common = ["train.iterations=8", f"train.strong_views={views}", f"train.mu={mu}", "train.eval_every=100",
              "train.checkpoint_every=100", "train.log_every=1", "algorithm.threshold=0.25"]
    fixmatch = tiny_config(*common, algorithm="fixmatch")
    off = tiny_config(*common, "algorithm.use_oheml=false", "algorithm.use_ea=false", "algorithm.use_plce=false",
                      "algorithm.use_balanced_head=false", "algorithm.warmup_epochs=0", "train.epoch_length=2",
                      algorithm="semi")
    device = torch.device("cpu")
    a, b = (Trainer.from_config(config, prepare_data(config, device), device=device) for config in (fixmatch, off))
    assert a.model.state_dict().keys() == b.model.state_dict().keys()
    partial_masks = 0
    for _ in range(8):
        fm, sm = a.train_step(), b.train_step()
        assert torch.equal(a.batches.augment.generator.get_state(), b.batches.augment.generator.get_state())
        assert torch.equal(a.batches.unlabeled_stream.perm, b.batches.unlabeled_stream.perm)
        assert torch.equal(fm.mask, sm.mask) and torch.equal(fm.pseudo_labels, sm.pseudo_labels)
        assert torch.equal(fm.metrics["loss_u"], sm.metrics["loss_u"])
        assert torch.equal(fm.metrics["loss_x"], sm.metrics["loss_x"])
        assert torch.equal(fm.loss, sm.loss)
        assert sm.metrics["active"] == (b.iteration > 2)  # the SeMi run is past its warm-up from step 3
        partial_masks += 0 < fm.mask.float().mean().item() < 1
        for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(p, q), name
    assert partial_masks >= 6, "the mask must be neither empty nor full on most steps"


def test_semi_resume_is_bit_for_bit(tmp_path):
    config = tiny_config("train.iterations=12", "train.checkpoint_every=6", "train.eval_every=6",
                         "train.keep_checkpoints=3", "train.epoch_length=2", "algorithm.warmup_epochs=1",
                         "algorithm.bank.decay_step=4", "algorithm.bank.capacity=8", "algorithm.threshold=0.15",
                         algorithm="semi_paper")
    start_run(config, tmp_path / "a", quiet=True)
    start_run(config, tmp_path / "b", quiet=True)
    (tmp_path / "b" / "checkpoints" / "ckpt_00000012.pt").unlink()
    (tmp_path / "b" / "results.json").unlink()
    resume_run(tmp_path / "b", quiet=True)
    reference = load_checkpoint(tmp_path / "a" / "checkpoints" / "ckpt_00000012.pt")
    resumed = load_checkpoint(tmp_path / "b" / "checkpoints" / "ckpt_00000012.pt")
    assert reference["algorithm"]["bank"]["filled"].any()
    assert_same_state(reference, resumed)


@pytest.mark.slow
def test_semi_learns_digits_and_bank_never_exceeds_capacity(tmp_path):
    config = tiny_config("model.widen=2", "train.iterations=400", "train.eval_every=400",
                         "train.checkpoint_every=400", "train.ema_decay=0.99", "train.epoch_length=50",
                         "algorithm.warmup_epochs=1", "algorithm.bank.capacity=16", algorithm="semi")
    device = torch.device("cpu")
    trainer = Trainer.from_config(config, prepare_data(config, device), tmp_path, None, device)
    bank = trainer.algorithm.bank
    seen_fill = []
    original = bank.push

    def checked_push(*args):
        original(*args)
        counts = bank.fill_counts()
        assert int(counts.max()) <= 16
        seen_fill.append(int(counts.sum()))

    bank.push = checked_push
    results = trainer.fit()
    assert len(seen_fill) == 400 and seen_fill[-1] > 0
    assert results["top1"] > 0.6, results["top1"]  # chance is 0.1
    assert set(results["heads"]) == {"main", "balanced"} and results["reported_head"] == "balanced"


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
                    .is_file(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_semi_setting_runs_end_to_end(tmp_path, capsys):
    import json

    from conftest import CONFIGS, run_cli

    code, out, _ = run_cli(["train", "--config", CONFIGS / "fashion_lt/consistent_n1500_m3000_g100.yaml",
                            "--out", tmp_path / "run", "--quiet", "train.iterations=4", "train.eval_every=2",
                            "train.report_last=1",
                            "train.checkpoint_every=4"], capsys)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert code == 0 and results["reported_head"] == "balanced"
    assert set(results["heads"]) == {"main", "balanced"} and "head 'main'" in out


def test_running_prior_uses_labeled_plus_pseudo_counts():
    algo = semi("algorithm.balanced.prior=labeled_plus_pseudo_running")
    assert torch.allclose(algo.balanced_prior(), torch.tensor([0.6, 0.3, 0.1]))
    algo.pseudo_counts.update(torch.tensor([2, 2, 2, 2, 0]), torch.tensor([True, True, True, True, False]))
    # (6, 3, 1) + (0, 0, 4) -> (6, 3, 5) / 14, refreshed every step (no epoch boundary needed)
    assert torch.allclose(algo.balanced_prior(), torch.tensor([6 / 14, 3 / 14, 5 / 14]))
    fixed = semi()
    fixed.pseudo_counts.update(torch.tensor([2]), torch.tensor([True]))
    assert torch.allclose(fixed.balanced_prior(), torch.tensor([0.6, 0.3, 0.1]))


def test_decay_and_class_weight_refresh_follow_the_global_iteration():
    algo = semi("algorithm.bank.decay_step=4", "algorithm.bank.beta=0.5", epoch_length=10)
    algo.bank.push(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0.8]), torch.tensor([True]))
    algo.pseudo_counts.update(torch.tensor([1]), torch.tensor([True]))
    for t in range(8):          # decays after iterations 3 and 7 (t + 1 multiple of 4)
        run_hooks(algo, t, algo.context.epoch_length)
    assert algo.bank.confidence[0, algo.bank.filled[0]].item() == pytest.approx(0.4)  # new at first, then halved
    assert torch.allclose(algo.pseudo_counts.weights, torch.full((3,), 1 / 3))  # not refreshed inside an epoch
    run_hooks(algo, 9, algo.context.epoch_length)  # end of epoch 0
    assert torch.allclose(algo.pseudo_counts.weights, torch.tensor([0.0, 1.0, 0.0]))


def test_plce_query_is_strong1_and_mask_is_or_of_mixed_and_raw():
    """Active PLCE: q from the strong-1 embedding's distances to the prototypes; the mask also passes
    when only the raw p clears tau (spec 5.3-5.4)."""
    algo = semi("algorithm.warmup_epochs=0", "algorithm.use_oheml=false", "algorithm.use_ea=false",
                "algorithm.use_balanced_head=false", "algorithm.plce.alpha=1.0", iterations=20, epoch_length=1)
    # prototypes: class 0 at (0, 0), class 1 at (10, 0); w = (.5, .5, 0) after a refresh
    algo.bank.push(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([0.9, 0.9]),
                   torch.tensor([True, True]))
    algo.pseudo_counts.update(torch.tensor([0, 1]), torch.tensor([True, True]))
    algo.pseudo_counts.refresh()
    # rows: 0 labeled, 1 weak (at class 0's prototype), 2 strong-1 (at class 1's), 3 strong-2 (at class 0's)
    features = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [0.0, 0.0]])
    main = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [0.0, 0, 0], [0.0, 0, 0]])
    model = TwoHeadTable(main, torch.zeros(4, 3), features)
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1]),
                  u_strong=(id_images([2]), id_images([3])))
    out = algo.step(model, batch, iteration=10)  # epoch 10 of 20: v = 0.5, c = (.25, .25, 0)
    p = torch.softmax(main[1], dim=0)            # (.909, .045, .045)
    # q = (0, 1, 0) from the strong-1 query (a weak query would give (1, 0, 0) and 0.932)
    mixed_top = 0.75 * p[0].item()
    assert out.metrics["confidence"].item() == pytest.approx(mixed_top, rel=1e-5)
    assert out.pseudo_labels.item() == 0 and mixed_top < 0.7 < p.max()
    assert out.mask.item()  # the raw p clears tau although the mixed label does not


def test_a_confidence_equal_to_the_threshold_is_used():
    """tau is inclusive (max p >= tau; spec 5.4) in FixMatch's mask, in SeMi's OR term on the unadjusted r
    and in the balanced mask's OR term on g. Probabilities of exactly 0.5 come from logits (0, 0, -1e4)."""
    from cissl.algorithms.components.pseudo_label import threshold_pseudo_labels

    assert threshold_pseudo_labels(torch.tensor([[0.5, 0.5, 0.0]]), 0.5)[2].tolist() == [True]
    algo = semi("algorithm.warmup_epochs=0", "algorithm.use_oheml=false", "algorithm.use_ea=false",
                "algorithm.threshold=0.5", "algorithm.plce.alpha=1.0", iterations=20, epoch_length=1)
    # prototypes of classes 0, 1, 2 at x = 0, 10, 20; w = (.25, .25, .5); at epoch 10 of 20: c = (.125, .125, .25)
    algo.bank.push(torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]]), torch.tensor([0, 1, 2]),
                   torch.tensor([0.9, 0.9, 0.9]), torch.ones(3, dtype=torch.bool))
    algo.pseudo_counts.update(torch.tensor([0, 1, 2, 2]), torch.ones(4, dtype=torch.bool))
    algo.pseudo_counts.refresh()
    two_ln_pi = 2 * torch.log(torch.tensor([0.6, 0.3, 0.1]))
    # rows: 0 labeled; weak views 1 (image A) and 2 (image B); strong-1 views 3, 4; strong-2 views 5, 6
    features = torch.tensor([[0.0, 0], [0, 0], [0, 0], [20, 0], [50, 0], [0, 0], [0, 0]])
    main = torch.zeros(7, 3)
    main[1] = torch.tensor([0.0, 0.0, -1e4])  # image A: r = (.5, .5, 0); mixed with q = (0, 0, 1): max .4375
    main[2] = two_ln_pi                       # image B: balanced targets h = softmax(f - 2 ln pi) uniform
    balanced = torch.zeros(7, 3)
    balanced[2] = torch.tensor([0.0, 0.0, -1e4])  # image B: g's own confidence exactly .5
    model = TwoHeadTable(main, balanced, features)
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1, 2]),
                  u_strong=(id_images([3, 4]), id_images([5, 6])))
    out = algo.step(model, batch, iteration=10)
    assert out.metrics["confidence"].item() < 0.75  # image A's mixed confidence .4375 is below tau ...
    assert out.mask[0].item()                       # ... yet r = .5 = tau lets it in
    assert out.metrics["mask_rate_bal"].item() == 1.0  # image A: h max .8; image B: g's own .5 = tau
