"""Hand-checked cases for each SeMi equation and component (spec section 12)."""

import math

import pytest
import torch

from cissl.algorithms.components.class_distribution import PseudoLabelCounter
from cissl.algorithms.components.embedding_align import EmbeddingAlignment
from cissl.algorithms.components.entropy_weight import entropy_weights
from cissl.algorithms.components.memory_bank import MemoryBank, balanced_draw_counts
from cissl.algorithms.components.plce import mix_pseudo_labels, mixing_weights, semantic_pseudo_labels

SEMI_BANK = {"mode": "confidence_decay", "beta": 0.99, "decay_scope": "not_new"}  # spec 6.1-6.3


def peaked(top, k=10):
    p = torch.full((1, k), (1 - top) / (k - 1))
    p[0, 0] = top
    return p


# ----------------------------------------------------------------------------- Eqs. 3-4
def test_entropy_weights_spec_values():
    assert entropy_weights(torch.full((1, 10), 0.1), 0.75).item() == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.zeros(1, 10)
    one_hot[0, 3] = 1
    # clamp to [1e-8, 1 - 1e-8]: H = 1e-8 + 9e-8 * ln(1e8) -> omega = 0.25 + 5.4e-7
    assert entropy_weights(one_hot, 0.75).item() == pytest.approx(0.25 + 5.4e-7, abs=2e-8)
    # max-prob 0.95, rest uniform: H = -.95 ln .95 - .05 ln(.05 / 9) = 0.30837 -> 0.75 * H / ln 10 + .25
    h = -0.95 * math.log(0.95) - 0.05 * math.log(0.05 / 9)
    assert entropy_weights(peaked(0.95), 0.75).item() == pytest.approx(0.75 * h / math.log(10) + 0.25, rel=1e-5)
    for top, expected in ((0.999, 0.253), (0.95, 0.350), (0.70, 0.664)):
        assert entropy_weights(peaked(top), 0.75).item() == pytest.approx(expected, abs=5e-4)


def test_entropy_weights_monotone_and_no_grad():
    probs = torch.cat([peaked(t) for t in (0.99, 0.9, 0.7, 0.5, 0.2)]).requires_grad_()
    omega = entropy_weights(probs, 0.75)
    assert torch.all(omega[1:] > omega[:-1]) and not omega.requires_grad


# ----------------------------------------------------------------------------- Eq. 6
def test_embedding_alignment_by_hand():
    ea = EmbeddingAlignment(dim=2, temperature=1.0, center="prob_ema", momentum=0.9)
    weak = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([False, True])  # only sample 0 is ultra-hard
    loss = ea.loss(weak, [strong], mask)
    # teacher of sample 0: softmax((1, 0) / 0.2) = (e^5, 1) / (e^5 + 1); student log-softmax of (0, 1)
    t = torch.tensor([math.exp(5), 1.0]) / (math.exp(5) + 1)
    log_s = torch.tensor([-math.log(1 + math.e), 1 - math.log(1 + math.e)])
    expected = -(t * log_s).sum() / 2  # mean over V * B_u = 2 rows
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert weak.grad is None  # the teacher carries no gradient
    assert torch.count_nonzero(strong.grad[1]) == 0  # the masked sample is not aligned
    # centre: 0.9 * 0 + 0.1 * mean of the teachers of both rows
    t1 = torch.softmax(torch.tensor([0.0, 0.0]) / 0.2, dim=0)
    assert torch.allclose(ea.center, 0.1 * (t + t1) / 2)


def test_embedding_alignment_zero_when_all_masked_and_sharper_teacher():
    ea = EmbeddingAlignment(dim=4, temperature=0.09, center="prob_ema", momentum=0.9)
    weak, strong = torch.randn(3, 4), torch.randn(3, 4)
    assert ea.loss(weak, [strong, strong], torch.ones(3, dtype=torch.bool)).item() == 0.0
    ea_none = EmbeddingAlignment(dim=4, temperature=0.09, center="none", momentum=0.9)
    ea_none.loss(weak, [strong], torch.zeros(3, dtype=torch.bool))
    assert torch.count_nonzero(ea_none.center) == 0


# ----------------------------------------------------------------------------- Eq. 7 and the bank
def sequential_reference(cells, capacity, candidates):
    """Plain per-candidate rule of spec 6.2. cells: class -> list of (conf, arrival, emb-id)."""
    for conf, label, arrival, ident in candidates:
        cell = cells.setdefault(label, [])
        if len(cell) < capacity:
            cell.append((conf, arrival, ident))
            continue
        lowest = min(c for c, _, _ in cell)
        if conf > lowest:
            victims = [i for i, (c, _, _) in enumerate(cell) if c == lowest]
            victim = max(victims, key=lambda i: cell[i][1])  # most recently arrived among the minimum
            cell[victim] = (conf, arrival, ident)
    return cells


def bank_as_sets(bank):
    out = {}
    for k in range(bank.num_classes):
        rows = bank.filled[k].nonzero().flatten().tolist()
        out[k] = sorted((round(bank.confidence[k, r].item(), 6), bank.arrival[k, r].item(),
                         int(bank.embeddings[k, r, 0].item())) for r in rows)
    return out


@pytest.mark.parametrize("ties,capacity,n", [(False, 4, 7), (True, 4, 7), (True, 16, 48)])
def test_batched_insertion_equals_sequential_rule(ties, capacity, n):
    """(True, 16, 48): rows of 16 + 48 keys, where torch's CPU sort without stable=True reorders ties."""
    gen = torch.Generator().manual_seed(0)
    bank = MemoryBank(num_classes=3, capacity=capacity, dim=2, **SEMI_BANK)
    cells, arrival = {}, 0
    for step in range(12):
        if ties:
            conf = torch.randint(7, 10, (n,), generator=gen).float() / 10  # many equal values
        else:
            conf = 0.7 + 0.3 * torch.rand(n, generator=gen)
        labels = torch.randint(0, 3, (n,), generator=gen)
        valid = torch.rand(n, generator=gen) < 0.8
        ids = torch.arange(arrival, arrival + n)
        emb = torch.stack([ids.float(), conf], dim=1)  # embedding row carries its identity and confidence
        bank.push(emb, labels, conf, valid)
        sequential_reference(cells, capacity, [(round(conf[i].item(), 6), labels[i].item(), arrival + i,
                                                 arrival + i) for i in range(n) if valid[i]])
        arrival += n
        expected = {k: sorted(cells.get(k, [])) for k in range(3)}
        assert bank_as_sets(bank) == expected, step
        assert torch.all(bank.fill_counts() <= capacity)
        filled = bank.filled
        assert torch.allclose(bank.embeddings[..., 1][filled], bank.confidence[filled])  # pairs stay joined


def test_insertion_rules_by_hand():
    bank = MemoryBank(num_classes=1, capacity=2, dim=1, **SEMI_BANK)

    def push(c):
        bank.push(torch.tensor([[c]]), torch.tensor([0]), torch.tensor([c]), torch.tensor([True]))

    push(0.8)
    push(0.9)                       # empty slot fills first
    push(0.8)                       # tie with the minimum: rejected
    assert sorted(bank.confidence[0].tolist()) == pytest.approx([0.8, 0.9])
    push(0.85)                      # beats the minimum 0.8: replaces it
    assert sorted(bank.confidence[0].tolist()) == pytest.approx([0.85, 0.9])
    assert sorted(bank.embeddings[0, :, 0].tolist()) == pytest.approx([0.85, 0.9])
    before = bank.state_dict()
    bank.push(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.bool))
    after = bank.state_dict()  # an empty batch (no candidate at all) changes nothing, the arrival counter too
    assert before.keys() == after.keys() and before["counter"] == after["counter"] == 4
    assert all(torch.equal(value, after[key]) for key, value in before.items() if key != "counter")


def test_decay_scope_and_flags():
    bank = MemoryBank(num_classes=1, capacity=3, dim=1, **{**SEMI_BANK, "beta": 0.5})
    bank.push(torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([0.8, 0.9]), torch.tensor([True, True]))
    bank.decay()  # both are new since the last decay: not_new scope leaves them, clears the flags
    assert sorted(bank.confidence[0, bank.filled[0]].tolist()) == pytest.approx([0.8, 0.9])
    bank.push(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([0.95]), torch.tensor([True]))
    bank.decay()
    assert sorted(bank.confidence[0].tolist()) == pytest.approx([0.4, 0.45, 0.95])
    everything = MemoryBank(num_classes=1, capacity=2, dim=1, **{**SEMI_BANK, "beta": 0.5, "decay_scope": "all"})
    everything.push(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([0.8]), torch.tensor([True]))
    everything.decay()
    assert everything.confidence[0, everything.filled[0]].tolist() == pytest.approx([0.4])
    assert everything.fill_counts().tolist() == [1]  # empty slots stay empty


def test_fifo_keeps_newest_without_confidence_rule():
    bank = MemoryBank(num_classes=1, capacity=2, dim=1, **{**SEMI_BANK, "mode": "fifo"})
    for i, c in enumerate([0.99, 0.98, 0.71]):
        bank.push(torch.tensor([[float(i)]]), torch.tensor([0]), torch.tensor([c]), torch.tensor([True]))
    assert sorted(bank.embeddings[0, :, 0].tolist()) == [1.0, 2.0]
    before = bank.confidence.clone()
    bank.decay()
    assert torch.equal(bank.confidence, before)


def test_prototypes_over_filled_slots():
    bank = MemoryBank(num_classes=3, capacity=4, dim=2, **SEMI_BANK)
    emb = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    bank.push(emb, torch.tensor([0, 0, 2]), torch.tensor([0.9, 0.8, 0.9]), torch.ones(3, dtype=torch.bool))
    protos, has = bank.prototypes()
    assert has.tolist() == [True, False, True]
    assert torch.allclose(protos[0], torch.tensor([2.0, 1.0])) and torch.allclose(protos[2], torch.tensor([5.0, 5.0]))
    released, all_have = bank.prototypes(include_empty=True)  # emulation: zeros in the mean
    assert all_have.all() and torch.allclose(released[0], torch.tensor([1.0, 0.5]))


def test_bank_draws_balance_and_remainder():
    gen = torch.Generator().manual_seed(0)
    # n = (10, 2, 0), 8 samples: T = 20, base 6; class 0 saturated; budget 10 over 2 classes: 5 each
    assert balanced_draw_counts(torch.tensor([10, 2, 0]), 8, gen).tolist() == [0, 3, 5]
    # budget 11 over 2 classes: one of them (drawn) gets 6
    draws = balanced_draw_counts(torch.tensor([10, 2, 0]), 9, gen)
    assert draws.sum().item() == 9 and sorted((draws + torch.tensor([0, 2, 0]))[1:].tolist()) == [5, 6]
    bank = MemoryBank(num_classes=3, capacity=8, dim=1, **SEMI_BANK)
    bank.push(torch.arange(24.0).view(24, 1), torch.arange(3).repeat(8), torch.full((24,), 0.9),
              torch.ones(24, dtype=torch.bool))
    emb, labels = bank.sample(torch.tensor([0, 3, 5]), gen)
    assert torch.bincount(labels, minlength=3).tolist() == [0, 3, 5]
    assert len(set(emb.flatten().tolist())) == 8  # without replacement
    assert torch.equal(torch.remainder(emb.flatten().long(), 3), labels)


def test_each_class_of_the_bank_draws_its_own_slots():
    """Two full classes of 8 slots (row r of class r % 2 sits in slot r // 2), one draw each, 20 times: the
    two classes' drawn slots differ at least once (one noise row shared by the classes would tie them)."""
    bank = MemoryBank(num_classes=2, capacity=8, dim=1, **SEMI_BANK)
    bank.push(torch.arange(16.0).view(16, 1), torch.arange(2).repeat(8), torch.full((16,), 0.9),
              torch.ones(16, dtype=torch.bool))
    gen = torch.Generator().manual_seed(0)
    slots = []
    for _ in range(20):
        emb, labels = bank.sample(torch.tensor([1, 1]), gen)
        assert labels.tolist() == [0, 1]
        slots.append(tuple(int(value) // 2 for value in emb.flatten()))
    assert any(first != second for first, second in slots)
    assert len({first for first, _ in slots}) > 1  # and each class's draw varies


# ----------------------------------------------------------------------------- Eq. 8
def test_semantic_pseudo_labels_by_hand():
    query = torch.tensor([[0.0, 0.0]])
    protos = torch.tensor([[3.0, 4.0], [0.0, 1.0], [9.0, 9.0]])
    has = torch.tensor([True, True, False])
    q = semantic_pseudo_labels(query, protos, has, temperature=0.1)
    # distances 5 and 1 (not squared); logits -50 and -10; class 2 has no prototype
    expected = torch.softmax(torch.tensor([-50.0, -10.0]), dim=0)
    assert torch.allclose(q[0, :2], expected) and q[0, 2] == 0
    # an empty bank (no class has a prototype): q = 0 everywhere
    none = semantic_pseudo_labels(query, protos, torch.zeros(3, dtype=torch.bool), temperature=0.1)
    assert torch.equal(none, torch.zeros(1, 3))


def test_semantic_pseudo_labels_take_exact_distances_in_a_full_batch():
    """32 queries near the midpoint of two prototypes with coordinates about 50: q matches the float64
    distances to 1e-4 (from 25 rows on, torch.cdist's default takes |a|^2 + |b|^2 - 2ab, about 3e-3 off here)."""
    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 8, generator=gen) * 20 + 40
    query = (protos[0] + protos[1]) / 2 + torch.randn(32, 8, generator=gen) * 0.05
    has = torch.ones(3, dtype=torch.bool)
    q = semantic_pseudo_labels(query, protos, has, temperature=0.1)
    exact = torch.softmax(-torch.cdist(query.double(), protos.double(), compute_mode="donot_use_mm_for_euclid_dist")
                          / 0.1, dim=1)
    assert exact[:, 0].min() > 0.05 and exact[:, 1].min() > 0.05  # the two classes share the mass
    assert torch.allclose(q.double(), exact, atol=1e-4, rtol=0)


def test_mixing_weights_ramp_and_columns():
    w = torch.tensor([0.6, 0.3, 0.1])
    has = torch.tensor([True, True, False])
    c = mixing_weights(w, has, epoch=250, total_epochs=500, alpha=0.4)
    assert torch.allclose(c, torch.tensor([0.12, 0.06, 0.0]))  # v = 0.4 * 250 / 500 = 0.2
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.0, 1.0, 0.0]])
    mixed = mix_pseudo_labels(p, q, c)
    assert torch.allclose(mixed, torch.tensor([[0.88 * 0.5, 0.94 * 0.3 + 0.06, 0.2]]))
    zero = mixing_weights(w, has, epoch=250, total_epochs=500, alpha=0.0)
    assert torch.equal(mix_pseudo_labels(p, q, zero), p)  # alpha 0 -> p bit-for-bit


def test_class_distribution_counts_and_refresh():
    counter = PseudoLabelCounter(3)
    assert torch.allclose(counter.weights, torch.full((3,), 1 / 3))
    counter.update(torch.tensor([0, 1]), torch.tensor([False, False]))
    counter.refresh()  # an epoch without a confident pseudo-label: still uniform
    assert torch.equal(counter.weights, torch.full((3,), 1 / 3))
    counter.update(torch.tensor([0, 0, 1, 2]), torch.tensor([True, True, True, False]))
    assert torch.allclose(counter.weights, torch.full((3,), 1 / 3))  # only refreshed at epoch ends
    counter.refresh()
    assert torch.allclose(counter.weights, torch.tensor([2 / 3, 1 / 3, 0.0]))
    counter.update(torch.tensor([2]), torch.tensor([True]))
    counter.refresh()  # cumulative, never reset
    assert torch.allclose(counter.weights, torch.tensor([0.5, 0.25, 0.25]))


def test_draw_counts_by_the_rule_of_spec_6_5():
    gen = torch.Generator().manual_seed(0)
    # n = (10, 5, 0), 2 samples: T = 17, base = floor(17 / 3) = 5 (not 5.67), so class 1 (n = 5 = base) is
    # saturated; the budget 17 - 15 = 2 goes to class 2 alone (with class 1 in, class 2 would draw 3 or 4)
    draws = balanced_draw_counts(torch.tensor([10, 5, 0]), 2, gen)
    assert draws.tolist() == [0, 0, 2] and draws.dtype == torch.long
    # n_k equal to base is saturated: n = (6, 3, 0), no samples: T = 9, base 3; class 2 alone shares a budget of 0
    assert balanced_draw_counts(torch.tensor([6, 3, 0]), 0, gen).tolist() == [0, 0, 0]
    # a single unsaturated class takes the whole budget: n = (5, 0), 1 sample: T 6, base 3, budget 1
    assert balanced_draw_counts(torch.tensor([5, 0]), 1, gen).tolist() == [0, 1]
    # a class short of base but above its share draws nothing (no negative draws, no minimum draw):
    # n = (9, 2, 2, 0), 0 samples: T = 13, base 3; budget 4 over 3 classes: share 1, one gets 2
    draws = balanced_draw_counts(torch.tensor([9, 2, 2, 0]), 0, gen)
    assert draws[:3].tolist() == [0, 0, 0] and draws[3].item() in (1, 2)
    # every class saturated: nothing to draw
    assert balanced_draw_counts(torch.tensor([4, 4]), 0, gen).tolist() == [0, 0]


def test_component_state_is_created_on_the_given_device():
    meta = torch.device("meta")
    bank = MemoryBank(num_classes=2, capacity=3, dim=4, device=meta, **SEMI_BANK)
    for name in ("embeddings", "confidence", "filled", "new", "arrival"):
        assert getattr(bank, name).device == meta, name
    assert bank.arrival.dtype == torch.long and bank.filled.dtype == torch.bool and bank.new.dtype == torch.bool
    ea = EmbeddingAlignment(dim=4, temperature=0.1, center="prob_ema", momentum=0.9, device=meta)
    assert ea.center.device == meta and ea.center.shape == (4,)
    counter = PseudoLabelCounter(3, meta)
    assert counter.counts.device == meta and counter.weights.device == meta and counter.counts.dtype == torch.float64
    bank.load_state_dict(MemoryBank(num_classes=2, capacity=3, dim=4, **SEMI_BANK).state_dict())  # CPU state in
    assert all(getattr(bank, name).device == meta for name in ("embeddings", "confidence", "filled", "new", "arrival"))
    from cissl.algorithms import AlgorithmContext
    from cissl.algorithms.components.logit_adjust import labeled_adjustment

    context = AlgorithmContext(num_classes=3, labeled_counts=(6, 3, 1), feature_dim=4, iterations=10, epoch_length=5,
                               device=meta)
    assert labeled_adjustment(True, 1.0, context).device == meta and labeled_adjustment(False, 1.0, context) is None


def test_component_arguments_and_states_are_checked():
    with pytest.raises(ValueError, match="unknown bank mode 'lifo'"):
        MemoryBank(num_classes=1, capacity=1, dim=1, **{**SEMI_BANK, "mode": "lifo"})
    with pytest.raises(ValueError, match="unknown decay scope 'some'"):
        MemoryBank(num_classes=1, capacity=1, dim=1, **{**SEMI_BANK, "decay_scope": "some"})
    with pytest.raises(ValueError, match="unknown EA centre 'mean'"):
        EmbeddingAlignment(dim=2, temperature=0.1, center="mean", momentum=0.9)
    small = MemoryBank(num_classes=2, capacity=3, dim=4, **SEMI_BANK)
    with pytest.raises(ValueError, match=r"bank shape \(2, 5, 4\) does not match \(2, 3, 4\)"):
        small.load_state_dict(MemoryBank(num_classes=2, capacity=5, dim=4, **SEMI_BANK).state_dict())
    from cissl.algorithms.components.logit_adjust import class_prior

    with pytest.raises(ValueError, match="at least one counted sample"):
        class_prior([0, 0, 0])


def test_bank_and_counter_state_round_trip():
    bank = MemoryBank(num_classes=2, capacity=3, dim=2, **SEMI_BANK)
    bank.push(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), torch.tensor([0.9, 0.8, 0.95, 0.7]),
              torch.tensor([True, True, True, False]))
    bank.decay()
    copy = MemoryBank(num_classes=2, capacity=3, dim=2, **SEMI_BANK)
    copy.load_state_dict(bank.state_dict())
    for name in ("embeddings", "confidence", "filled", "new", "arrival"):
        assert torch.equal(getattr(copy, name), getattr(bank, name)), name
    assert copy.counter == bank.counter == 4
    counter = PseudoLabelCounter(3)
    counter.update(torch.tensor([0, 2]), torch.tensor([True, True]))
    counter.refresh()
    restored = PseudoLabelCounter(3)
    restored.load_state_dict(counter.state_dict())
    assert torch.equal(restored.counts, counter.counts) and torch.equal(restored.weights, counter.weights)
    ea = EmbeddingAlignment(dim=2, temperature=1.0, center="prob_ema", momentum=0.9)
    ea.loss(torch.randn(3, 2), [torch.randn(3, 2)], torch.zeros(3, dtype=torch.bool))
    again = EmbeddingAlignment(dim=2, temperature=1.0, center="prob_ema", momentum=0.9)
    again.load_state_dict(ea.state_dict())
    assert torch.equal(again.center, ea.center) and ea.center.abs().sum() > 0
