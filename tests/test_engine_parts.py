import math

import numpy as np
import pytest
import torch

from cissl.config import load_config
from cissl.data.stream import IndexStream
from cissl.engine.ema import EMA
from cissl.engine.optim import build_optimizer, lr_factor
from cissl.evaluation.metrics import class_groups, confusion_matrix, geometric_mean, summarize_confusion


def test_index_stream_drop_last_and_restart():
    stream = IndexStream(10, 4, seed=0)
    first = [stream.next() for _ in range(2)]
    assert len(torch.cat(first).unique()) == 8  # no repeats within a permutation
    third = stream.next()                      # 2 left over -> dropped, new permutation
    assert stream.pos == 4 and len(third) == 4


def test_index_stream_state_round_trip_and_seeds():
    a = IndexStream(50, 8, seed=3)
    for _ in range(4):
        a.next()
    state = a.state_dict()
    expected = [a.next() for _ in range(10)]
    b = IndexStream(50, 8, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, [b.next() for _ in range(10)]))
    assert not torch.equal(IndexStream(50, 8, 1).next(), IndexStream(50, 8, 2).next())


def test_index_stream_smaller_pool_than_batch():
    batch = IndexStream(3, 8, seed=0).next()
    assert len(batch) == 8 and set(batch.tolist()) == {0, 1, 2}


def test_cosine_schedule_matches_fixmatch():
    assert lr_factor(0, 1000, "cosine", 7 / 16) == 1.0
    assert lr_factor(500, 1000, "cosine", 7 / 16) == pytest.approx(math.cos(7 * math.pi * 500 / 16000))
    assert lr_factor(250_000, 250_000, "cosine", 7 / 16) == pytest.approx(0.19509, abs=1e-4)
    assert lr_factor(10, 1000, "constant", 7 / 16) == 1.0


def test_weight_decay_only_on_conv_and_linear_weights():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(2, 3))
    opt = build_optimizer(model, load_config(None).optim)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_fused_sgd_gives_the_same_updates_up_to_rounding():
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                   torch.nn.Linear(4 * 36, 3))

    def train(fused: bool) -> torch.nn.Module:
        model = build()
        opt = build_optimizer(model, load_config(None, [f"optim.fused={str(fused).lower()}"]).optim)
        assert opt.defaults["fused"] is (True if fused else None)
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model

    initial, plain, fused = build(), train(False), train(True)
    for a, b in zip(plain.parameters(), fused.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # the weights moved (the conv bias gets no gradient in front of BN, so it is not checked)
    assert all(not torch.equal(a, b) for a, b in zip(initial.parameters(), fused.parameters()) if a.ndim > 1)


def test_ema_update_and_buffers_copied():
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(ema.model.running_mean, model.running_mean)  # copied, not averaged
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_confusion_and_summary_by_hand():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2, 2]
    conf = confusion_matrix(preds, labels, 3)
    assert conf.tolist() == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    report = summarize_confusion(conf, labeled_counts=[10, 5, 1])
    assert report["top1"] == pytest.approx(6 / 8)
    assert report["per_class_accuracy"] == [0.75, 0.5, 1.0]
    assert report["balanced_accuracy"] == pytest.approx(0.75)
    assert report["geometric_mean"] == pytest.approx((0.75 * 0.5 * 1.0) ** (1 / 3))
    assert (report["many_accuracy"], report["medium_accuracy"], report["few_accuracy"]) == (0.75, 0.5, 1.0)


def test_class_groups_thirds():
    groups = class_groups([500, 299, 179, 107, 64, 38, 23, 13, 8, 5])
    assert groups == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    assert class_groups([1, 5, 3])["many"] == [1]
    assert geometric_mean(np.array([0.5, 0.0])) == 0.0
