import dataclasses

import numpy as np
import pytest

from cissl.config import DataConfig
from cissl.data.protocol import Split, build_given_split, build_split, long_tailed_counts, split_counts
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
    """Class 0 has 60 images; N_0 40 + M_0 30 = 70: the message gives each part and the keys to lower."""
    with pytest.raises(DataError, match=r"^class 0 has 60 training images but the split needs 70 \(validation 0 "
                                        r"\+ labeled N_k 40 \+ unlabeled M_k 30\); lower data.labeled_head / "
                                        r"data.unlabeled_head / data.val_per_class$"):
        build_split(_labels(), 4, small_cfg(labeled_head=40), seed=0)


def test_unknown_uses_whole_unlabeled_pool():
    cfg = DataConfig(dataset="stl10", labeled_head=20, unlabeled_head=None, imbalance_ratio=4.0,
                     unlabeled_distribution="unknown")
    split = build_split(_labels(), 4, cfg, 0, unlabeled_pool_size=17)
    assert split.unlabeled_source == "unlabeled" and split.unlabeled_indices.tolist() == list(range(17))


def test_own_data_split_holds_out_a_fraction_of_what_validation_leaves():
    """Class 0: 20 images, 2 to validation, floor(0.25 * 18) = 4 to test, 14 labeled. Class 1: 3 images, 2
    to validation, floor(0.25 * 1) = 0 to test, the last one labeled (one is enough)."""
    labels = np.array([0] * 20 + [1] * 3)
    cfg = DataConfig(dataset="folder", val_per_class=2, test_fraction=0.25)
    split = build_given_split(labels, 2, cfg, seed=5, unlabeled_pool_size=7, has_test=False)
    assert split.labeled_counts == [14, 1]
    assert np.bincount(labels[split.val_indices], minlength=2).tolist() == [2, 2]
    assert np.bincount(labels[split.test_indices], minlength=2).tolist() == [4, 0]
    parts = [split.labeled_indices, split.val_indices, split.test_indices]
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))  # disjoint, every image used once
    assert split.unlabeled_indices.tolist() == list(range(7)) and split.unlabeled_counts is None
    assert split.seed == 5 and split.class_order == [0, 1] and split.unlabeled_source == "unlabeled"
    assert split.settings == {"dataset": "folder", "val_per_class": 2,
                              "test": "held out: test_fraction 0.25 of each class"}
    given = build_given_split(labels, 2, cfg, seed=5, unlabeled_pool_size=7, has_test=True)
    assert given.labeled_counts == [18, 1] and len(given.test_indices) == 0 and given.settings["test"] == "given"


def test_own_data_class_with_nothing_left_to_train_names_it():
    labels = np.array([0] * 20 + [1] * 2)
    cfg = DataConfig(dataset="folder", val_per_class=2, test_fraction=0.25)
    with pytest.raises(DataError, match="class 1 has 2 labeled images: none is left for training after 2 "
                                        "validation and 0 test images"):
        build_given_split(labels, 2, cfg, seed=0, unlabeled_pool_size=7, has_test=False)


def assert_same_split(a, b):
    for key in ("labeled_indices", "unlabeled_indices", "val_indices", "test_indices"):
        assert getattr(a, key).dtype == np.int64 and np.array_equal(getattr(a, key), getattr(b, key)), key
    for key in ("labeled_counts", "unlabeled_counts", "unlabeled_source", "seed", "settings", "class_order"):
        assert getattr(a, key) == getattr(b, key), key


def test_split_saved_and_loaded(tmp_path):
    """Every field of a protocol split, of one without validation images (the default: its empty index list
    comes back as int64, not as numpy's float64 for an empty list, which cannot index) and of an own-data split
    (test images, no M_k) survives its file; a file that does not parse is one error naming it."""
    split = build_split(_labels(), 4, small_cfg(val_per_class=2), seed=3, class_order=[2, 0, 1, 3])
    no_validation = build_split(_labels(), 4, small_cfg(), seed=0)
    own = build_given_split(np.array([0] * 20 + [1] * 6), 2, DataConfig(dataset="folder", val_per_class=1,
                                                                       test_fraction=0.5),
                            seed=1, unlabeled_pool_size=5, has_test=False)
    for saved in (split, no_validation, own):
        saved.save(tmp_path / "split.json")
        assert_same_split(Split.load(tmp_path / "split.json"), saved)
    assert len(no_validation.val_indices) == 0
    assert len(own.test_indices) > 0 and own.unlabeled_counts is None and split.unlabeled_counts is not None
    split.save(tmp_path / "split.json")
    back = Split.load(tmp_path / "split.json")
    assert np.array_equal(back.labeled_indices, split.labeled_indices)
    assert back.labeled_counts == split.labeled_counts and back.seed == 3
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json"):
        Split.load(tmp_path / "bad.json")


def test_a_split_file_from_before_test_indices_class_order_and_settings_loads():
    """split.json of earlier versions lacks these keys: no test images, order unknown, no settings."""
    data = build_split(_labels(), 4, small_cfg(), seed=0).to_json()
    for key in ("test_indices", "class_order", "settings"):
        del data[key]
    split = Split.from_json(data)
    assert split.test_indices.dtype == np.int64 and len(split.test_indices) == 0
    assert split.class_order is None and split.settings == {}


def test_a_split_that_uses_every_image_of_a_class_fits():
    """Class 0 has 60 images: validation 5 + N_0 15 + M_0 40 = 60 is accepted; the images come from the
    training set."""
    split = build_split(_labels(), 4, small_cfg(labeled_head=15, unlabeled_head=40, val_per_class=5), seed=0)
    assert split.labeled_counts[0] == 15 and split.unlabeled_counts[0] == 40 and split.unlabeled_source == "train"


def test_unknown_split_errors_name_what_is_missing():
    cfg = DataConfig(dataset="stl10", labeled_head=58, unlabeled_head=None, imbalance_ratio=4.0,
                     unlabeled_distribution="unknown", val_per_class=2)
    assert build_split(_labels(), 4, cfg, 0, unlabeled_pool_size=3).labeled_counts[0] == 58  # 2 + 58 = 60 fits
    with pytest.raises(DataError, match=r"needs 61 \(validation 3 \+ labeled N_k 58 \+ unlabeled M_k 0\)"):
        build_split(_labels(), 4, dataclasses.replace(cfg, val_per_class=3), 0, unlabeled_pool_size=3)
    with pytest.raises(DataError, match="^data.unlabeled_distribution 'unknown' needs the data set's unlabeled split$"):
        build_split(_labels(), 4, cfg, 0)


def test_long_tailed_counts_of_one_and_two_classes():
    assert long_tailed_counts(50, 10.0, 1) == [50]
    assert long_tailed_counts(50, 10.0, 2) == [50, 5]
    with pytest.raises(ValueError, match="^num_classes must be >= 1$"):
        long_tailed_counts(50, 10.0, 0)


def test_labeled_fraction_takes_round_f_n_of_what_validation_leaves_of_each_class():
    """Spec 1.6 (Small-ImageNet-127) with data.val_per_class = 2: classes of 25, 11 and 2 training images
    leave 23, 9 and 0; at f = 0.5, N_k = round(11.5) = 12, round(4.5) = 4 (Python's round, half to even)
    and 0; M_k = the rest: 11, 5, 0. A class with no training image at all gets N_k = M_k = 0."""
    labels = np.array([0] * 25 + [1] * 11 + [2] * 2)
    split = build_split(labels, 3, small_cfg(labeled_fraction=0.5, val_per_class=2), seed=0)
    assert (split.labeled_counts, split.unlabeled_counts) == ([12, 4, 0], [11, 5, 0])
    for indices, counts in ((split.labeled_indices, [12, 4, 0]), (split.unlabeled_indices, [11, 5, 0]),
                            (split.val_indices, [2, 2, 2])):
        assert np.bincount(labels[indices], minlength=3).tolist() == counts
    parts = np.concatenate([split.labeled_indices, split.unlabeled_indices, split.val_indices])
    assert len(np.unique(parts)) == len(labels)  # disjoint, and every image used
    absent = build_split(np.array([0] * 4 + [1] * 2), 3, small_cfg(labeled_fraction=0.5), seed=0)
    assert (absent.labeled_counts, absent.unlabeled_counts) == ([2, 1, 0], [2, 1, 0])
