import numpy as np
import pytest

from cissl.config import DataConfig
from cissl.data.protocol import Split, build_split, long_tailed_counts, split_counts
from cissl.errors import DataError

# Spec section 1.1 (golden vectors; truncation, float64)
C10 = {
    (500, 100): [500, 299, 179, 107, 64, 38, 23, 13, 8, 5],
    (1500, 100): [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15],
    (500, 150): [500, 286, 164, 94, 53, 30, 17, 10, 5, 3],
    (1500, 150): [1500, 859, 492, 282, 161, 92, 53, 30, 17, 10],
    (4000, 100): [4000, 2397, 1437, 861, 516, 309, 185, 111, 66, 40],
    (3000, 100): [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30],
    (4000, 150): [4000, 2292, 1313, 752, 431, 247, 141, 81, 46, 26],
    (3000, 150): [3000, 1719, 985, 564, 323, 185, 106, 60, 34, 20],
    (150, 10): [150, 116, 89, 69, 53, 41, 32, 25, 19, 15],
    (150, 20): [150, 107, 77, 55, 39, 28, 20, 14, 10, 7],
    (450, 10): [450, 348, 269, 208, 161, 125, 96, 75, 58, 45],
    (450, 20): [450, 322, 231, 165, 118, 85, 61, 43, 31, 22],
}
C100_HEAD_50_G10 = [int(v) for v in (
    "50 48 47 46 45 44 43 42 41 40 39 38 37 36 36 35 34 33 32 32 31 30 29 29 28 27 27 26 26 25 24 24 23 23 "
    "22 22 21 21 20 20 19 19 18 18 17 17 17 16 16 15 15 15 14 14 14 13 13 13 12 12 12 12 11 11 11 11 10 10 "
    "10 10 9 9 9 9 8 8 8 8 8 7 7 7 7 7 7 6 6 6 6 6 6 6 5 5 5 5 5 5 5 5").split()]
C100_HEAD_300_G20 = [int(v) for v in (
    "300 291 282 273 265 257 250 242 235 228 221 215 208 202 196 190 184 179 174 168 163 158 154 149 145 140 "
    "136 132 128 124 121 117 113 110 107 104 100 97 95 92 89 86 84 81 79 76 74 72 70 68 66 64 62 60 58 56 55 "
    "53 51 50 48 47 45 44 43 41 40 39 38 37 36 34 33 32 31 31 30 29 28 27 26 25 25 24 23 22 22 21 20 20 19 19 "
    "18 17 17 16 16 15 15 15").split()]
C100_SUMS = {(50, 10): 1911, (50, 20): 1545, (150, 10): 5835, (150, 20): 4741, (400, 10): 15651,
             (400, 20): 12719, (300, 10): 11720, (300, 20): 9527}


@pytest.mark.parametrize("head, ratio", list(C10))
def test_cifar10_and_stl_counts_match_spec(head, ratio):
    assert long_tailed_counts(head, ratio, 10) == C10[(head, ratio)]


def test_cifar100_counts_match_spec():
    assert long_tailed_counts(50, 10, 100) == C100_HEAD_50_G10
    assert long_tailed_counts(300, 20, 100) == C100_HEAD_300_G20
    for (head, ratio), total in C100_SUMS.items():
        assert sum(long_tailed_counts(head, ratio, 100)) == total


def test_truncation_not_rounding():
    assert long_tailed_counts(500, 100, 10)[1] == 299  # rounding would give 300


def _cfg(**kw):
    base = dict(dataset="cifar10", labeled_head=500, unlabeled_head=4000, imbalance_ratio=100.0)
    base.update(kw)
    return DataConfig(**base)


def test_uniform_reversed_unknown_counts():
    labeled, uniform = split_counts(_cfg(unlabeled_distribution="uniform"), 10)
    assert labeled == C10[(500, 100)] and uniform == [4000] * 10
    _, reversed_ = split_counts(_cfg(unlabeled_distribution="reversed"), 10)
    assert reversed_ == [40, 66, 111, 185, 309, 516, 861, 1437, 2397, 4000]
    _, gamma_u = split_counts(_cfg(unlabeled_imbalance_ratio=150.0), 10)
    assert gamma_u == C10[(4000, 150)]
    _, unknown = split_counts(_cfg(dataset="stl10", unlabeled_distribution="unknown", unlabeled_head=None), 10)
    assert unknown is None


def _labels(per_class=60, classes=4, seed=0):
    labels = np.repeat(np.arange(classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def small_cfg(**kw):
    base = dict(dataset="digits", labeled_head=20, unlabeled_head=30, imbalance_ratio=4.0)
    base.update(kw)
    return DataConfig(**base)


def test_split_counts_disjoint_and_classes_right():
    labels = _labels()
    split = build_split(labels, 4, small_cfg(), seed=0)
    assert np.bincount(labels[split.labeled_indices], minlength=4).tolist() == split.labeled_counts
    assert np.bincount(labels[split.unlabeled_indices], minlength=4).tolist() == split.unlabeled_counts
    assert not set(split.labeled_indices) & set(split.unlabeled_indices)
    assert len(set(split.unlabeled_indices)) == len(split.unlabeled_indices)


def test_split_deterministic_per_seed_and_differs_across_seeds():
    labels = _labels()
    a, b = build_split(labels, 4, small_cfg(), 1), build_split(labels, 4, small_cfg(), 1)
    c = build_split(labels, 4, small_cfg(), 2)
    assert np.array_equal(a.labeled_indices, b.labeled_indices)
    assert np.array_equal(a.unlabeled_indices, b.unlabeled_indices)
    assert not np.array_equal(a.labeled_indices, c.labeled_indices)


def test_file_order_ignores_seed_and_includes_labeled():
    labels = _labels()
    cfg = small_cfg(selection="file_order", unlabeled_includes_labeled=True)
    a, b = build_split(labels, 4, cfg, 1), build_split(labels, 4, cfg, 7)
    assert np.array_equal(a.labeled_indices, b.labeled_indices)
    assert set(a.labeled_indices) <= set(a.unlabeled_indices)
    assert len(a.unlabeled_indices) == sum(a.labeled_counts) + sum(a.unlabeled_counts)
    first_of_class0 = np.flatnonzero(labels == 0)[:20]
    assert np.array_equal(a.labeled_indices[:20], first_of_class0)


def test_validation_split_is_balanced_and_held_out():
    labels = _labels()
    split = build_split(labels, 4, small_cfg(val_per_class=5), seed=0)
    assert np.bincount(labels[split.val_indices], minlength=4).tolist() == [5] * 4
    used = set(split.labeled_indices) | set(split.unlabeled_indices)
    assert not used & set(split.val_indices)


def test_split_that_does_not_fit_names_the_class():
    with pytest.raises(DataError, match="class 0 has 60 training images but the split needs 70"):
        build_split(_labels(), 4, small_cfg(labeled_head=40), seed=0)


def test_unknown_uses_whole_unlabeled_pool():
    cfg = DataConfig(dataset="stl10", labeled_head=20, unlabeled_head=None, imbalance_ratio=4.0,
                     unlabeled_distribution="unknown")
    split = build_split(_labels(), 4, cfg, 0, unlabeled_pool_size=17)
    assert split.unlabeled_source == "unlabeled" and split.unlabeled_indices.tolist() == list(range(17))


def test_split_saved_and_loaded(tmp_path):
    split = build_split(_labels(), 4, small_cfg(), seed=3)
    split.save(tmp_path / "split.json")
    back = Split.load(tmp_path / "split.json")
    assert np.array_equal(back.labeled_indices, split.labeled_indices)
    assert back.labeled_counts == split.labeled_counts and back.seed == 3
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json"):
        Split.load(tmp_path / "bad.json")
