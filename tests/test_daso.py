"""DASO: parity with USB's queue, blend and alignment loss; pretraining, the distribution, the mask, state."""

import json
import math

import pytest
import torch
from conftest import REPO
from helpers import id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.base import run_hooks
from cissl.algorithms.daso import (
    ClassQueue,
    Daso,
    DasoConfig,
    blending_weights,
    semantic_alignment_loss,
    similarity_logits,
)
from cissl.config import load_config
from cissl.models import ModelOutput

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "daso.json").read_text())


def tensor(key):
    return torch.tensor(FIXTURE[key], dtype=torch.float32)


def test_queue_prototypes_match_usb():
    """Three pushes; class 0 overflows its 4 slots inside one push; class 2 first appears in the last."""
    queue = ClassQueue(FIXTURE["num_classes"], FIXTURE["queue_size"], 5, "cpu")
    for push in FIXTURE["pushes"]:
        queue.push(torch.tensor(push["features"]), torch.tensor(push["labels"]))
    assert torch.allclose(queue.prototypes(), tensor("prototypes"), atol=1e-6)


def test_queue_keeps_the_latest_per_class():
    queue = ClassQueue(2, 2, 1, "cpu")
    queue.push(torch.tensor([[1.0], [2.0], [10.0]]), torch.tensor([0, 0, 1]))
    queue.push(torch.tensor([[3.0], [4.0], [5.0]]), torch.tensor([0, 0, 0]))  # 3 rows for 2 slots: 4, 5 stay
    assert queue.prototypes().flatten().tolist() == [4.5, 10.0]
    queue.push(torch.tensor([[7.0]]), torch.tensor([0]))                      # replaces the oldest, 4
    assert queue.prototypes().flatten().tolist() == [6.0, 10.0]
    assert ClassQueue(3, 2, 1, "cpu").prototypes().abs().sum() == 0           # unseen classes: zero


def test_semantic_labels_blend_and_alignment_loss_match_usb():
    prototypes = tensor("prototypes")
    semantic = torch.softmax(similarity_logits(tensor("weak_features"), prototypes, FIXTURE["proto_temperature"]), 1)
    assert torch.allclose(semantic, tensor("semantic"), atol=1e-6)
    strong = similarity_logits(tensor("strong_features"), prototypes, FIXTURE["proto_temperature"])
    assert semantic_alignment_loss(strong, semantic).item() == pytest.approx(FIXTURE["alignment_loss"], rel=1e-5)
    probs = tensor("probs")
    weight = blending_weights(torch.tensor(FIXTURE["pl_counts"]), FIXTURE["dist_temperature"])[probs.argmax(1)]
    blended = (1 - weight[:, None]) * probs + weight[:, None] * semantic
    assert torch.allclose(blended, tensor("blended"), atol=1e-6)
    fixed = (1 - FIXTURE["interp_alpha"]) * probs + FIXTURE["interp_alpha"] * semantic
    assert torch.allclose(fixed, tensor("blended_fixed"), atol=1e-6)


def test_blending_weights_by_hand():
    """counts (30, 12, 3), T = 1: v = (.667, .267, .067) / max -> (1, .4, .1); T = 2 -> sqrt first."""
    assert torch.allclose(blending_weights(torch.tensor([30.0, 12.0, 3.0]), 1.0), torch.tensor([1.0, 0.4, 0.1]))
    root = torch.tensor([30.0, 12.0, 3.0]).sqrt()
    assert torch.allclose(blending_weights(torch.tensor([30.0, 12.0, 3.0]), 2.0), root / root.max())


class ModeRecorder(torch.nn.Module):
    """An 'EMA network' whose embedding of an image is its first pixel times 1 in train mode, 2 in eval mode."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        scale = 1.0 if self.training else 2.0
        features = x[:, 0, 0, :1].repeat(1, 2) * scale
        return ModelOutput(features, {"main": features})


def context(iterations=100, k=2):
    return AlgorithmContext(num_classes=k, labeled_counts=(4, 1), feature_dim=2, iterations=iterations,
                            epoch_length=10, unlabeled_pool_size=8)


def test_queue_takes_train_mode_ema_embeddings_and_leaves_eval_mode():
    daso = Daso(DasoConfig(pretrain_fraction=0.5, dist_update_period=10), context(iterations=40))
    ema = ModeRecorder().eval()
    daso.ema_model = ema
    batch = Batch(x=id_images([3, 5]), y=torch.tensor([0, 1]))
    daso.refine(torch.tensor([[0.6, 0.4]]), None, batch, 0)
    assert ema.modes == [True] and not ema.training
    assert daso.queue.prototypes().tolist() == [[3.0, 3.0], [5.0, 5.0]]
    with pytest.raises(RuntimeError, match="EMA"):
        Daso(DasoConfig(pretrain_fraction=0.5, dist_update_period=10), context(iterations=40)).refine(
            torch.tensor([[0.6, 0.4]]), None, batch, 0)


class WeakViews:
    def __init__(self, weak, strong=()):
        self.weak, self.strong = weak, strong


def test_pretraining_then_blend_and_loss():
    """pretrain 0.25 of 40 = 10 steps; the distribution refreshes every 10 (counts of the last period)."""
    daso = Daso(DasoConfig(pretrain_fraction=0.25, dist_update_period=10), context(iterations=40))
    daso.ema_model = ModeRecorder()
    batch = Batch(x=id_images([1, -1]), y=torch.tensor([0, 1]))  # prototypes (1, 1) and (-1, -1)
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    views = WeakViews(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [-2.0, -2.0]]), (torch.tensor([[0.5, 0.5]] * 3),))
    for t in range(10):
        assert torch.equal(daso.refine(probs, views, batch, t), probs)
        assert daso.loss(None, views, batch, None, t) == (None, {})
        run_hooks(daso, t, 10)
    assert daso.distribution.tolist() == [20.0, 10.0]  # argmax of 10 steps x (0, 0, 1)
    out = daso.refine(probs, views, batch, 10)
    semantic = torch.softmax(torch.tensor([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]]) / 0.05, 1)
    v = torch.tensor([2 / 3, 1 / 3]) ** (1 / 1.5)
    v = v / v.max()
    weight = v[probs.argmax(1)][:, None]
    assert torch.allclose(out, (1 - weight) * probs + weight * semantic, atol=1e-6)
    loss, metrics = daso.loss(None, views, batch, None, 10)
    expected = semantic_alignment_loss(torch.tensor([[1.0, -1.0]] * 3) / 0.05, semantic)  # cos = +-1
    assert loss.item() == pytest.approx(expected.item()) and "loss_align" in metrics
    # the running period counts every image's final (blended) label, masked or not: image 1 moved from class 0
    # (0.8) to its semantic class 1 (weight v_0 = 1); the unblended labels would count (2, 1)
    assert daso.counts.tolist() == [1.0, 2.0]


class TableModel(torch.nn.Module):
    """Embedding and logits of each image looked up by the id in its first pixel."""

    def __init__(self, features, logits):
        super().__init__()
        self.features, self.logits = features, torch.nn.Parameter(logits)

    def forward(self, x):
        rows = x[:, 0, 0, 0].round().long()
        return ModelOutput(self.features[rows], {"main": self.logits[rows]})


def test_fixmatch_daso_masks_on_the_blended_distribution():
    """Image 2's weak prediction (class 0 at 0.88) is over the threshold 0.8; blended halfway with its semantic
    label (class 1, its embedding is class 1's prototype) it is not: masked out (DASO's code; USB keeps it)."""
    config = load_config(None, ["algorithm.name=fixmatch_daso", "algorithm.threshold=0.8",
                                "algorithm.refiner.pretrain_fraction=0.0", "algorithm.refiner.dist_aware=false"])
    algo = build_algorithm(config.algorithm, context())
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 9.0], [0.5, 0.5], [0.5, 0.5]])
    model = TableModel(features, logits)
    algo.ema_model = model  # labeled images 0 and 1 make the prototypes (1, 0) and (0, 1)
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2, 3]),
                  u_strong=(id_images([4, 5]),), u_index=torch.tensor([0, 1]))
    out = algo.step(model, batch, 0)
    p = torch.softmax(logits[2], 0)
    assert p[0] > 0.8
    assert out.pseudo_labels.tolist() == [1, 1] and out.mask.tolist() == [False, True]
    semantic = torch.softmax(torch.tensor([0.0, 1.0]) / 0.05, 0)
    assert out.metrics["confidence"].item() == pytest.approx(((0.5 * p + 0.5 * semantic).max().item() + 1.0) / 2,
                                                             abs=1e-3)
    assert out.metrics["loss_align"].item() > 0


def test_pretraining_shorter_than_a_period_is_refused():
    with pytest.raises(ValueError, match="pretrain_fraction"):
        Daso(DasoConfig(pretrain_fraction=0.01, dist_update_period=100), context(iterations=1000))
    Daso(DasoConfig(pretrain_fraction=0.01, dist_update_period=100, dist_aware=False), context(iterations=1000))


def test_refine_auxiliary_blends_with_this_steps_semantic_labels():
    daso = Daso(DasoConfig(pretrain_fraction=0.0, dist_aware=False, interp_alpha=0.25), context())
    daso.ema_model = ModeRecorder()
    head_probs = torch.tensor([[0.2, 0.8]])
    assert torch.equal(daso.refine_auxiliary(head_probs), head_probs)  # before any refine: unchanged
    daso.refine(torch.tensor([[0.5, 0.5]]), WeakViews(torch.tensor([[1.0, 1.0]])),
                Batch(x=id_images([1, -1]), y=torch.tensor([0, 1])), 0)
    semantic = torch.softmax(torch.tensor([[1.0, -1.0]]) / 0.05, 1)
    assert torch.allclose(daso.refine_auxiliary(head_probs), 0.75 * head_probs + 0.25 * semantic)


def test_state_round_trip():
    daso = Daso(DasoConfig(pretrain_fraction=0.5, dist_update_period=10), context(iterations=40))
    daso.queue.push(torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
    daso.counts += torch.tensor([3.0, 4.0])
    other = Daso(DasoConfig(pretrain_fraction=0.5, dist_update_period=10), context(iterations=40))
    other.load_state_dict(daso.state_dict())
    assert torch.equal(other.queue.prototypes(), daso.queue.prototypes())
    assert other.counts.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="queue"):
        Daso(DasoConfig(pretrain_fraction=0.5, dist_update_period=10, queue_size=3),
             context(iterations=40)).load_state_dict(daso.state_dict())
    assert math.isclose(DasoConfig().proto_temperature, 0.05)
