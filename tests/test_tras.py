"""TRAS: parity with its authors' step, the transfer factors and loss by hand, the warm-up, the heads."""

import json
import math

import pytest
import torch
from conftest import REPO
from helpers import id_images

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.tras import Tras, transfer_factors, transfer_loss
from cissl.config import load_config
from cissl.models import ModelOutput

FIXTURE = json.loads((REPO / "tests" / "reference" / "fixtures" / "tras.json").read_text())


class TwoHeadLookup(torch.nn.Module):
    """Teacher ('main') and student ('tras') logits looked up by the image id in the first pixel."""

    def __init__(self, teacher, student):
        super().__init__()
        self.teacher = torch.nn.Parameter(teacher.clone())
        self.student = torch.nn.Parameter(student.clone())

    def forward(self, x):
        rows = x[:, 0, 0, 0].round().long()
        return ModelOutput(torch.zeros(len(rows), 4), {"main": self.teacher[rows], "tras": self.student[rows]})


def make(counts, *overrides, epoch_length=5):
    config = load_config(None, ["algorithm.name=fixmatch_tras", *overrides])
    context = AlgorithmContext(num_classes=len(counts), labeled_counts=tuple(counts), feature_dim=4, iterations=100,
                               epoch_length=epoch_length)
    return build_algorithm(config.algorithm, context)


def test_step_matches_the_authors_code():
    """Labeled ids 0-63, weak 64-127, strong views 128-191 and 192-255, after the warm-up (epoch 11)."""
    algo = make(FIXTURE["labeled_counts"], epoch_length=1)
    assert torch.allclose(algo.log_prior.double(), torch.tensor(FIXTURE["adjustments"], dtype=torch.float64))
    assert torch.allclose(algo.factors.double(), torch.tensor(FIXTURE["t_logit"], dtype=torch.float64))
    b = 64
    model = TwoHeadLookup(torch.tensor(FIXTURE["teacher_logits"]), torch.tensor(FIXTURE["student_logits"]))
    batch = Batch(x=id_images(range(b)), y=torch.tensor(FIXTURE["labels"]), u_weak=id_images(range(b, 2 * b)),
                  u_strong=(id_images(range(2 * b, 3 * b)), id_images(range(3 * b, 4 * b))))
    out = algo.step(model, batch, 11)
    assert out.mask.float().tolist() == FIXTURE["teacher_mask"]
    assert out.metrics["mask_rate_student"].item() == pytest.approx(sum(FIXTURE["student_mask"]) / b)
    for key, fixture_key in (("loss_x", "loss_x"), ("loss_u", "loss_u"), ("loss_x_student", "loss_x_student"),
                             ("loss_u_student", "loss_u_student")):
        assert out.metrics[key].item() == pytest.approx(FIXTURE[fixture_key], rel=1e-5), key
    assert out.loss.item() == pytest.approx(FIXTURE["loss"], rel=1e-5)


def test_transfer_factors_and_loss_by_hand():
    """a = log(0.8, 0.2): softmax(-a) = (0.2, 0.8) (as 1/0.8 : 1/0.2 = 1 : 4), so t = 2 * (0.2, 0.8) + 2.
    One row, mask 1, teacher logits (0, 0), offset t_1 * a for student label 1: q = softmax(-t_1 a / 2);
    student logits (0, 0): the loss is -sum q log(1/2) = log 2."""
    a = torch.log(torch.tensor([0.8, 0.2]))
    t = transfer_factors(a, 2.0, 2.0)
    assert torch.allclose(t, torch.tensor([2.4, 3.6]))
    offsets = a.unsqueeze(0) * t[torch.tensor([1])].unsqueeze(1)
    zeros = [torch.zeros(1, 2)]
    assert transfer_loss(zeros, zeros, offsets, torch.ones(1)).item() == pytest.approx(math.log(2), rel=1e-6)
    student = [torch.tensor([[2.0, 0.0]])]
    q = torch.softmax(-offsets[0] / 2, dim=0)
    expected = -(q * torch.log_softmax(student[0][0], dim=0)).sum().item()
    assert transfer_loss(student, zeros, offsets, torch.ones(1)).item() == pytest.approx(expected, rel=1e-6)
    assert transfer_loss(student, zeros, offsets, torch.zeros(1)).item() == 0.0
    two_views = transfer_loss(student * 2, zeros * 2, offsets, torch.ones(1)).item()
    assert two_views == pytest.approx(expected, rel=1e-6)  # averaged over the V * B rows


def test_the_student_waits_for_the_warm_up_and_is_reported():
    """Epochs of 5 steps, warm-up 2 epochs: no student term at step 9, one at step 10; the teacher's
    pseudo-labels are logit-adjusted from the first step."""
    algo = make([6, 2], "algorithm.warmup_epochs=2")
    assert Tras.required_heads(algo.config) == ("main", "tras") and algo.reported_head == "tras"
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.0], [3.0, -3.0], [0.0, 0.0], [0.0, 0.0]])
    model = TwoHeadLookup(table, table)
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2, 3]), u_strong=(id_images([4, 5]),))
    assert "loss_x_student" not in algo.step(model, batch, 9).metrics
    assert "loss_x_student" in algo.step(model, batch, 10).metrics
    # weak logits (0.1, 0) minus log(0.75, 0.25): class 1 wins (0.1 - ln .75 < -ln .25), unlike plain FixMatch
    probs = algo.weak_probabilities(torch.tensor([[0.1, 0.0]]))
    assert probs.argmax().item() == 1
    assert torch.allclose(probs, torch.softmax(torch.tensor([[0.1, 0.0]]) - torch.log(torch.tensor([0.75, 0.25])), 1))


def test_temperature_and_the_inclusive_student_threshold():
    """T = 0.5 sharpens the teacher's adjusted prediction: softmax(2 (f - a)). A student weak prediction of
    exactly 0.5 passes a threshold of 0.5."""
    algo = make([6, 2], "algorithm.temperature=0.5", "algorithm.threshold=0.5", "algorithm.warmup_epochs=0")
    logits = torch.tensor([[0.1, 0.0]])
    expected = torch.softmax(2 * (logits - torch.log(torch.tensor([0.75, 0.25]))), 1)
    assert torch.allclose(algo.weak_probabilities(logits), expected)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    model = TwoHeadLookup(table, table)
    batch = Batch(x=id_images([0, 1]), y=torch.tensor([0, 1]), u_weak=id_images([2]), u_strong=(id_images([3]),))
    assert algo.step(model, batch, 0).metrics["mask_rate_student"].item() == 1.0
