import math

import pytest
import torch
import torch.nn.functional as F
from helpers import FixedLogitsModel, id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.components.logit_adjust import class_prior, logit_adjustment
from cissl.config import load_config


def context(counts=(6, 3, 1), k=3):
    return AlgorithmContext(num_classes=k, labeled_counts=tuple(counts), feature_dim=4, iterations=100,
                            epoch_length=10)


def test_logit_adjustment_offsets():
    # one counted sample is enough; none is an error; a zero prior gets log(1e-12), not NaN
    assert class_prior([1, 0]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="^class prior needs at least one counted sample$"):
        class_prior([0, 0])
    assert logit_adjustment(torch.tensor([1.0, 0.0]), 2.0)[1].item() == pytest.approx(math.log(1e-12))
    prior = class_prior([6, 3, 1])
    assert torch.allclose(prior, torch.tensor([0.6, 0.3, 0.1]))
    assert torch.allclose(logit_adjustment(prior, 1.0), torch.log(torch.tensor([0.6, 0.3, 0.1])))
    assert torch.allclose(logit_adjustment(prior, 2.0), torch.log(torch.tensor([0.36, 0.09, 0.01])))


def test_supervised_la_loss_by_hand():
    """3 classes, counts 6/3/1 -> pi = (.6, .3, .1); logits (2, 1, 0) for class 2 and (0, 0, 0) for class 0.

    LA loss = mean_i -log softmax(z_i + log pi)[y_i]:
      sample 1: z + log pi = (2 + ln .6, 1 + ln .3, ln .1) -> -log(.1 / (.6 e^2 + .3 e + .1))
      sample 2: log pi -> -log(.6 / (.6 + .3 + .1)) = -ln .6
    """
    config = load_config(None, ["algorithm.name=supervised_la"])
    algo = build_algorithm(config.algorithm, context())
    table = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    model = FixedLogitsModel(table)
    out = algo.step(model, Batch(x=id_images([0, 1]), y=torch.tensor([2, 0])), 0)
    by_hand = (-math.log(0.1 / (0.6 * math.e ** 2 + 0.3 * math.e + 0.1)) - math.log(0.6)) / 2
    assert out.loss.item() == pytest.approx(by_hand, rel=1e-6)
    plain = build_algorithm(load_config(None, ["algorithm.name=supervised"]).algorithm, context())
    expected = F.cross_entropy(table, torch.tensor([2, 0])).item()
    assert plain.step(model, Batch(x=id_images([0, 1]), y=torch.tensor([2, 0])), 0).loss.item() == \
        pytest.approx(expected)


def test_fixmatch_unlabeled_loss_uses_only_masked_samples():
    """Weak views of images 2 and 3: image 2 is confident (p > .95), image 3 is not. Strong views 4, 5."""
    config = load_config(None, ["algorithm.name=fixmatch", "algorithm.threshold=0.95"])
    algo = build_algorithm(config.algorithm, context())
    table = torch.tensor([
        [1.0, 0.0, 0.0],    # 0: labeled
        [0.0, 1.0, 0.0],    # 1: labeled
        [8.0, 0.0, 0.0],    # 2: weak view, confident class 0 (p = 0.9993)
        [1.0, 0.5, 0.0],    # 3: weak view, unsure
        [0.3, 0.2, 0.1],    # 4: strong view of image 2
        [0.0, 2.0, 1.0],    # 5: strong view of image 3
    ])
    model = FixedLogitsModel(table)
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2, 3]),
                  u_strong=(id_images([4, 5]),))
    out = algo.step(model, batch, 0)
    assert out.mask.tolist() == [True, False] and out.pseudo_labels.tolist() == [0, 0]
    loss_u = F.cross_entropy(table[4:5], torch.tensor([0])).item() / 2  # mean over B_u = 2 rows
    assert out.metrics["loss_u"].item() == pytest.approx(loss_u, rel=1e-6)
    out.loss.backward()
    grad = model.table.grad
    assert torch.count_nonzero(grad[5]) == 0  # the unmasked strong view contributes nothing
    assert torch.count_nonzero(grad[2]) == 0 and torch.count_nonzero(grad[3]) == 0  # no gradient via p
    assert torch.count_nonzero(grad[4]) > 0


def test_fixmatch_two_strong_views_average_over_all_rows():
    config = load_config(None, ["algorithm.name=fixmatch", "algorithm.threshold=0.5"])
    algo = build_algorithm(config.algorithm, context())
    table = torch.tensor([[1.0, 0, 0], [9.0, 0, 0], [0.0, 1, 0], [0.0, 0, 1]])
    batch = Batch(x=id_images([0]), y=torch.tensor([0]), u_weak=id_images([1]),
                  u_strong=(id_images([2]), id_images([3])))
    out = algo.step(FixedLogitsModel(table), batch, 0)
    expected = (F.cross_entropy(table[2:3], torch.tensor([0])) + F.cross_entropy(table[3:4], torch.tensor([0])))
    assert out.metrics["loss_u"].item() == pytest.approx(expected.item() / 2, rel=1e-6)
