import dataclasses
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import tiny_config

from cissl.algorithms.base import ViewSpec
from cissl.algorithms.components.class_weights import class_sampling_weights
from cissl.config import load_config
from cissl.data.stream import ClassBalancedStream, ImagePool, IndexStream
from cissl.engine.assemble import method_class
from cissl.engine.batches import BatchSource
from cissl.engine.checkpoint import first_line
from cissl.engine.data import load_run_source, prepare_data
from cissl.engine.ema import EMA
from cissl.engine.optim import build_optimizer, build_scheduler, lr_factor
from cissl.engine.precision import ComputePolicy
from cissl.engine.seeds import derive_seed
from cissl.errors import ConfigError, DataError
from cissl.evaluation.metrics import class_groups, confusion_matrix, geometric_mean, summarize_confusion


def test_the_seed_of_each_stream_stays_what_it_was():
    """derive_seed fixes a run's initial weights, batch order and augmentation draws: a change to it changes
    every run, so the numbers in README and benchmarks/RESULTS.md would no longer come back from their
    commands. These are its values since the first engine (b711575), under which every recorded run trained."""
    assert derive_seed(0, "model") == 2558327751107156107
    assert derive_seed(0, "labeled") == 781481849374423294
    assert derive_seed(1, "model") == 953659193503503015
    assert derive_seed(2 ** 31 - 1, "unlabeled") == 5063097308660571750
    assert all(0 <= derive_seed(seed, "model") < 2 ** 63 for seed in range(50))


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


def test_index_stream_batches_of_one_walk_the_seeds_permutation():
    """From the first batch on, even at batch size 1: the positions of torch.randperm under the seed."""
    stream = IndexStream(5, 1, seed=7)
    expected = torch.randperm(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.cat([stream.next() for _ in range(5)]), expected)


def test_a_pool_copies_a_read_only_array_and_shares_a_writeable_one():
    """A read-only buffer (a file's bytes) is copied, so torch gets memory it may write; a writeable array
    (the rows a run indexes out of its data set) is used in place on the CPU, not held twice."""
    images = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    read_only = np.frombuffer(images.tobytes(), dtype=np.uint8).reshape(images.shape)
    pool = ImagePool(read_only, [0, 1])
    assert torch.equal(pool.images, torch.from_numpy(images)) and pool.images.data_ptr() != read_only.ctypes.data
    assert pool.labels.tolist() == [0, 1] and pool.labels.dtype == torch.long
    assert ImagePool(images).images.data_ptr() == images.ctypes.data


def test_index_stream_smaller_pool_than_batch():
    batch = IndexStream(3, 8, seed=0).next()
    assert len(batch) == 8 and set(batch.tolist()) == {0, 1, 2}


def test_a_streamed_pool_extends_with_rows_of_its_own_file_only():
    """CReST's additions to a streamed labeled pool: the unlabeled pool's rows at the given positions join
    it (read from the same file); images of another array, or in memory, are refused."""
    array = np.arange(5 * 4, dtype=np.uint8).reshape(5, 1, 2, 2)
    labeled = ImagePool.streamed(array, [0, 1], [0, 1], "cpu")
    unlabeled = ImagePool.streamed(array, [2, 3, 4], None, "cpu")
    extended = labeled.extended(unlabeled, torch.tensor([2, 0]), torch.tensor([1, 0]))
    images, labels, positions = extended.take(torch.arange(4))
    assert torch.equal(images, torch.from_numpy(array[[0, 1, 4, 2]])) and labels.tolist() == [0, 1, 1, 0]
    assert images.dtype == torch.uint8 and labels.dtype == torch.long and positions.tolist() == [0, 1, 2, 3]
    assert extended.images.shape == (4, 1, 2, 2) and extended.images.dtype == torch.uint8 and len(extended) == 4
    assert torch.equal(extended.images[1:3], torch.from_numpy(array[[1, 4]]))  # a slice reads those rows
    for pool in (unlabeled, ImagePool(array[2:])):  # a pool without labels, streamed or in memory
        images, labels, positions = pool.take(torch.tensor([2, 0]))
        assert images.numpy().tolist() == array[[4, 2]].tolist() and labels is None and positions.tolist() == [2, 0]
    for other in (ImagePool.streamed(array.copy(), [2, 3, 4], None, "cpu"), ImagePool(array[2:])):
        with pytest.raises(ValueError, match="^a streamed pool extends only with images of its own file$"):
            labeled.extended(other, torch.tensor([0]), torch.tensor([1]))


def test_host_images_read_their_rows_in_file_order_as_uint8():
    """HostImages over rows 4, 1, 5 of a file: positions (a tensor, repeats and any order) and slices read
    those rows, as uint8 batches on the pool's device; the file is read in ascending row order whatever the
    positions' order (sequential reads of a memory-mapped file), and the batch comes back in the positions'."""
    from cissl.data.stream import HostImages

    class RecordingFile:
        """An array that records the row order of each read."""

        def __init__(self, array):
            self.array, self.shape, self.reads = array, array.shape, []

        def __getitem__(self, rows):
            self.reads.append(np.asarray(rows).tolist())
            return self.array[rows]

    array = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2)
    file = RecordingFile(array)
    images = HostImages(file, [4, 1, 5], "cpu")
    assert len(images) == 3 and images.shape == (3, 1, 2, 2) and images.rows.dtype == np.int64
    batch = images[torch.tensor([2, 0, 1, 2])]
    assert batch.dtype == torch.uint8 and batch.device.type == "cpu"
    assert batch.numpy().tolist() == array[[5, 4, 1, 5]].tolist() and file.reads == [[1, 4, 5, 5]]
    assert images[1:].numpy().tolist() == array[[1, 5]].tolist() and file.reads[-1] == [1, 5]
    assert HostImages(array, [], "cpu")[torch.tensor([], dtype=torch.long)].shape == (0, 1, 2, 2)


def test_empty_pools_are_refused_and_a_one_image_pool_streams():
    for make in (lambda: IndexStream(0, 4, seed=0), lambda: ClassBalancedStream(torch.ones(0), 4, seed=0)):
        with pytest.raises(ValueError, match="^an? (index|class-balanced) stream needs a non-empty pool$"):
            make()
    assert IndexStream(1, 3, seed=0).next().tolist() == [0, 0, 0]
    assert ClassBalancedStream(torch.ones(1), 3, seed=0).next().tolist() == [0, 0, 0]


def test_index_stream_uses_a_permutation_that_divides_exactly_to_its_end():
    """Pool 12, batch 4: three batches are one permutation (the last full batch is not dropped), the fourth
    starts the next."""
    stream = IndexStream(12, 4, seed=0)
    batches = [stream.next() for _ in range(3)]
    assert sorted(torch.cat(batches).tolist()) == list(range(12)) and stream.pos == 12
    stream.next()
    assert stream.pos == 4


def test_index_stream_small_pool_fills_the_batch_exactly():
    """Pool 3, batch 7: two whole permutations and one index of a third."""
    batch = IndexStream(3, 7, seed=0).next()
    assert len(batch) == 7 and sorted(batch[:3].tolist()) == sorted(batch[3:6].tolist()) == [0, 1, 2]


def test_cosine_schedule_matches_fixmatch():
    assert lr_factor(0, 1000, "cosine", 7 / 16) == 1.0
    assert lr_factor(500, 1000, "cosine", 7 / 16) == pytest.approx(math.cos(7 * math.pi * 500 / 16000))
    assert lr_factor(250_000, 250_000, "cosine", 7 / 16) == pytest.approx(0.19509, abs=1e-4)
    assert lr_factor(10, 1000, "constant", 7 / 16) == 1.0


@pytest.mark.parametrize("schedule, factor", [("constant", 1.0), ("cosine", math.cos(math.pi * 0.5 * 3 / 10))])
def test_scheduler_follows_the_configured_schedule(schedule, factor):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = build_scheduler(optimizer, SimpleNamespace(schedule=schedule, cosine_fraction=0.5), 10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * factor)


def test_weight_decay_only_on_conv_and_linear_weights():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(2, 3))
    opt = build_optimizer(model, load_config(None).optim)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert [group["lr"] for group in opt.param_groups] == [0.03, 0.03]  # the configured LR, not SGD's default


@pytest.mark.parametrize("nesterov, momentum, expected", [(False, 0.9, False), (True, 0.0, False)])
def test_nesterov_only_when_asked_and_with_momentum(nesterov, momentum, expected):
    """Nesterov needs momentum: optim.nesterov with momentum 0 builds plain SGD rather than failing."""
    cfg = load_config(None, [f"optim.nesterov={str(nesterov).lower()}", f"optim.momentum={momentum}"]).optim
    opt = build_optimizer(torch.nn.Linear(2, 3), cfg)
    assert opt.defaults["nesterov"] is expected and opt.defaults["momentum"] == momentum


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


def test_ema_compounds_over_steps_is_a_separate_eval_copy_and_round_trips():
    """Two updates: 0.9 * (0.9 * 1 + 0.1 * 2) + 0.1 * 4 = 1.39, with no bias correction; decay 0 follows the
    live weights exactly, decay 1 never moves. The average is a deep copy in eval mode (the live model's later
    changes reach it only through update), every buffer (the step count too) is the live model's, and its state
    dict restores it into another EMA."""
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.9)
    assert not ema.model.training and model.training and ema.model is not model
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert torch.equal(ema.model.weight, torch.ones(2))  # not shared with the live model
    ema.update(model)
    with torch.no_grad():
        model.weight.fill_(4.0)
        model.bias.fill_(-1.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2,), 1.39))
    assert torch.allclose(ema.model.bias, torch.full((2,), 0.1 * -1.0))
    assert ema.model.num_batches_tracked.item() == 7
    copy = EMA(torch.nn.BatchNorm1d(2), decay=0.9)
    copy.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.model.state_dict().values(), ema.model.state_dict().values()))
    follower = EMA(torch.nn.BatchNorm1d(2), decay=0.0)
    follower.update(model)
    assert torch.equal(follower.model.weight, model.weight) and torch.equal(follower.model.bias, model.bias)
    frozen = EMA(torch.nn.BatchNorm1d(2), decay=1.0)  # the largest decay train.ema_decay allows
    frozen.update(model)
    assert torch.equal(frozen.model.weight, torch.ones(2)) and torch.equal(frozen.model.bias, torch.zeros(2))


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


def test_summary_leaves_out_classes_without_test_images_only():
    """Class 0: 3 images, 2 right; class 1: one image, right (counts, recall 1); class 2: no test image (left
    out of the means, per-class 0); class 3: one image, wrong (counts, recall 0)."""
    conf = confusion_matrix([0, 0, 1, 1, 0], [0, 0, 0, 1, 3], 4)
    freed = [np.full(4, 0.7) for _ in range(4)]  # numpy hands these blocks out again, unwiped:
    del freed  # class 2's recall must be written as 0, not left to what the memory held
    report = summarize_confusion(conf, labeled_counts=[4, 3, 2, 1])  # groups: many [0, 1], medium [2], few [3]
    assert report["per_class_accuracy"] == pytest.approx([2 / 3, 1.0, 0.0, 0.0])
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert report["top1"] == pytest.approx(3 / 5) and report["geometric_mean"] == 0.0
    assert report["many_accuracy"] == pytest.approx(5 / 6) and report["few_accuracy"] == 0.0
    assert report["medium_accuracy"] == 0.0  # no test image in the group: 0, not a mean over nothing
    assert report["confusion_matrix"] == conf.tolist()
    empty = summarize_confusion(np.zeros((2, 2), dtype=np.int64), labeled_counts=[2, 1])
    assert (empty["top1"], empty["balanced_accuracy"], empty["geometric_mean"]) == (0.0, 0.0, 0.0)
    assert (empty["many_accuracy"], empty["few_accuracy"]) == (0.0, 0.0)


def test_geometric_mean_by_hand():
    assert geometric_mean([0.25, 1.0]) == pytest.approx(0.5)
    assert geometric_mean([0.25]) == pytest.approx(0.25)
    assert geometric_mean([]) == 0.0
    with warnings.catch_warnings():  # a class with recall 0 gives 0, without numpy's warning for log(0)
        warnings.simplefilter("error")
        assert geometric_mean([0.5, 0.0]) == 0.0


def test_confusion_matrix_of_labels_stored_as_uint8():
    """Labels as data files store them (uint8): class 99 of 100 counted in cell (99, 99) and class 3 predicted
    as 97 in cell (3, 97); in uint8, 99 * 100 + 99 would wrap around."""
    labels = np.array([99, 3, 0], dtype=np.uint8)
    conf = confusion_matrix(np.array([99, 97, 0], dtype=np.uint8), labels, 100)
    assert (conf[99, 99], conf[3, 97], conf[0, 0], conf.sum()) == (1, 1, 1, 3)


def test_class_groups_thirds():
    groups = class_groups([500, 299, 179, 107, 64, 38, 23, 13, 8, 5])
    assert groups == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    assert class_groups([1, 5, 3])["many"] == [1]
    assert geometric_mean(np.array([0.5, 0.0])) == 0.0


def batch_source(config, spec=None):
    """The run's data on the CPU and the BatchSource drawing its method's views (or ``spec``'s), seed 0."""
    data = prepare_data(config, torch.device("cpu"))
    spec = spec or method_class(config).views(config.algorithm)
    return data, BatchSource(data, config.train, config.augment, spec, ComputePolicy(torch.device("cpu")), 0)


def test_augment_horizontal_flip_reaches_the_views_of_the_run():
    """The run's views are drawn by the BatchSource's augmentation: with augment.horizontal_flip=false none
    is mirrored (the default mirrors about half)."""
    for flip, mirrored in (("true", True), ("false", False)):
        source = batch_source(tiny_config(f"augment.horizontal_flip={flip}", algorithm="fixmatch"))[1]
        assert bool(source.augment.draw_weak(200)["flip"].any()) is mirrored


def test_labeled_additions_extend_the_pool_and_refuse_mismatched_rows():
    """CReST's additions: pool positions and their labels, one each; the labeled pool grows by them."""
    config = tiny_config(algorithm="fixmatch")
    data, source = batch_source(config)
    source.set_labeled_additions(torch.tensor([4, 0]), torch.tensor([1, 2]), generation=1)
    assert len(source.labeled) == len(data.labeled) + 2 and source.labeled.labels[-2:].tolist() == [1, 2]
    for indices, labels in ((torch.tensor([4, 0]), torch.tensor([1])), (torch.tensor([[4]]), torch.tensor([[1]]))):
        with pytest.raises(ValueError, match=r"labeled additions: \(\d+(, \d+)?,?\) indices for"):
            source.set_labeled_additions(indices, labels, generation=2)


def test_each_stream_draws_from_its_own_documented_seed_and_resumes():
    """The labeled, unlabeled and (CoSSL) class-balanced streams are seeded by the run seed and their own
    names; the balanced one weighs every class equally (beta 1); after CReST's additions of generation g the
    labeled stream is seeded by 'labeled-generation<g>'; a restored source draws the next batch alike."""
    config = tiny_config("train.mu=2", algorithm="fixmatch_cossl")
    data, source = batch_source(config)
    b = config.train.batch_size
    labeled = IndexStream(len(data.labeled), b, derive_seed(0, "labeled"))
    unlabeled = IndexStream(len(data.unlabeled), 2 * b, derive_seed(0, "unlabeled"))
    weights = class_sampling_weights(data.labeled.labels, data.num_classes, 1.0)
    balanced = ClassBalancedStream(weights, b, derive_seed(0, "labeled-balanced"))
    for _ in range(2):
        batch, _ = source.next()
        assert torch.equal(batch.y, data.labeled.labels[labeled.next()])
        assert torch.equal(batch.u_index, unlabeled.next())
        assert torch.equal(batch.y_balanced, data.labeled.labels[balanced.next()])
    restored = batch_source(config)[1]
    restored.load_state_dict(source.state_dict())
    ahead, again = source.next()[0], restored.next()[0]
    for name in ("x", "y", "u_index", "x_balanced", "y_balanced"):
        assert torch.equal(getattr(ahead, name), getattr(again, name)), name
    assert all(torch.equal(a, r) for a, r in zip(ahead.u_strong, again.u_strong))
    source.set_labeled_additions(torch.tensor([3, 1, 4]), torch.tensor([0, 1, 2]), generation=2)
    grown = IndexStream(len(data.labeled) + 3, b, derive_seed(0, "labeled-generation2"))
    labels = torch.cat([data.labeled.labels, torch.tensor([0, 1, 2])])
    assert torch.equal(source.next()[0].y, labels[grown.next()])


def test_a_class_balanced_labeled_stream_weighs_by_the_methods_beta_and_is_seeded_as_labeled():
    """cRT's labeled draws (ViewSpec.labeled_sampling class_balanced): weights of its sampling_beta, the
    seed of the 'labeled' stream (what a shuffled method's labeled stream uses)."""
    config = tiny_config()
    spec = ViewSpec(unlabeled=False, labeled_sampling="class_balanced", sampling_beta=0.9)
    data, source = batch_source(config, spec)
    weights = class_sampling_weights(data.labeled.labels, data.num_classes, 0.9)
    expected = ClassBalancedStream(weights, config.train.batch_size, derive_seed(0, "labeled"))
    for _ in range(2):
        assert torch.equal(source.next()[0].y, data.labeled.labels[expected.next()])


def test_labeled_additions_are_pool_positions_and_labels_whatever_integer_type_they_come_in():
    """uint8 additions (a numpy array from a plugin method) are positions, not a mask, and labels as int64."""
    data, source = batch_source(tiny_config())
    source.set_labeled_additions(np.array([3, 1, 4], dtype=np.uint8), np.array([2, 0, 1], dtype=np.uint8), 1)
    assert source.additions["indices"].dtype == source.additions["labels"].dtype == torch.long
    assert len(source.labeled) == len(data.labeled) + 3
    assert torch.equal(source.labeled.labels[-3:], torch.tensor([2, 0, 1]))
    assert torch.equal(source.labeled.images[-3:], data.unlabeled.images[[3, 1, 4]])
    with pytest.raises(ValueError, match=r"^labeled additions: \(3,\) indices for \(2,\) labels$"):
        source.set_labeled_additions(torch.tensor([3, 1, 4]), torch.tensor([2, 0]), 1)


def test_images_per_step_counts_the_views_a_method_declares():
    config = tiny_config("train.mu=3", "train.strong_views=2", algorithm="fixmatch")
    b = config.train.batch_size

    def per_step(spec):
        return batch_source(config, spec)[1].images_per_step

    assert per_step(ViewSpec()) == b + 3 * b * (1 + 2)
    assert per_step(ViewSpec(weak=False)) == b + 3 * b * 2  # no weak view of the unlabeled images
    assert per_step(ViewSpec(unlabeled=False)) == b


def is_view_of(row, image) -> bool:
    """Whether an augmented row is the uint8 ``image`` itself or mirrored (augmentation reduced to flips)."""
    image = image.float() / 255
    return torch.equal(row, image) or torch.equal(row, image.flip(-1))


def is_view_of_its_class(data, row, label) -> bool:
    """Whether the row is such a view of one of the labeled images of ``label``."""
    return any(is_view_of(row, image) for image in data.labeled.images[data.labeled.labels == label])


@pytest.mark.parametrize("algorithm", ["fixmatch", "fixmatch_cossl"])
def test_every_view_row_is_a_view_of_its_own_image(algorithm):
    """Row i of the weak view and of every strong view is pool image u_index[i] (the authors' SeMi code
    misaligns such rows); the labeled rows (and CoSSL's class-balanced rows) are images of their labels.
    Augmentation reduced to flips (no crop padding, RandAugment or Cutout), so each row must equal its
    image or that image mirrored; the strong views are independent draws."""
    config = tiny_config("augment.crop_padding=0", "augment.randaugment_ops=0", "augment.cutout=0", "train.mu=2",
                         algorithm=algorithm)
    data, source = batch_source(config)
    for _ in range(2):
        batch, truth = source.next()
        pool = data.unlabeled.images[batch.u_index]
        assert all(is_view_of(batch.u_weak[i], pool[i]) for i in range(len(pool)))
        for view in batch.u_strong:
            assert all(is_view_of(view[i], pool[i]) for i in range(len(pool)))
        kept = [[torch.equal(view[i], pool[i].float() / 255) for i in range(len(pool))] for view in batch.u_strong]
        assert kept[0] != kept[1]  # flipped apart
        assert torch.equal(truth, data.unlabeled.labels[batch.u_index])
        for rows, labels in ((batch.x, batch.y), (batch.x_balanced, batch.y_balanced)):
            if rows is None:
                continue
            assert all(is_view_of_its_class(data, row, label) for row, label in zip(rows, labels))
    assert (batch.x_balanced is not None) == (algorithm == "fixmatch_cossl")


@pytest.mark.parametrize("beta", [1.0, 0.9])
def test_a_class_balanced_labeled_stream_draws_each_class_at_its_weights_share(beta):
    """ViewSpec(labeled_sampling="class_balanced", sampling_beta=beta) (cRT): over 4000 draws each class's
    share of the labeled rows is its images' share of the sampling weights (beta = 1: a tenth each; 0.9:
    between that and the labeled counts' shares), not the shuffled stream's shares (the labeled counts')."""
    config = tiny_config("train.batch_size=40", algorithm="supervised")
    spec = ViewSpec(unlabeled=False, labeled_sampling="class_balanced", sampling_beta=beta)
    data, source = batch_source(config, spec)
    labels = torch.cat([source.next()[0].y for _ in range(100)])
    share = torch.bincount(labels, minlength=10).double() / len(labels)
    weights = class_sampling_weights(data.labeled.labels, 10, beta)
    expected = torch.bincount(data.labeled.labels, weights=weights, minlength=10) / weights.sum()
    assert (share - expected).abs().max() < 0.025  # 4 standard deviations of a share of 0.2 in 4000 draws
    counts = torch.bincount(data.labeled.labels, minlength=10).double()
    assert (expected - counts / counts.sum()).abs().max() > 0.05  # told apart from a shuffled stream
    assert beta == 1.0 or (expected - 0.1).abs().max() > 0.05  # and from beta = 1


def test_a_method_that_declares_no_weak_view_of_the_pool_gets_none():
    _, source = batch_source(tiny_config(algorithm="fixmatch"), ViewSpec(weak=False))
    batch, _ = source.next()
    assert batch.u_weak is None and batch.u_strong and all(len(v) == len(batch.u_index) for v in batch.u_strong)


def test_the_class_balanced_labeled_batch_is_a_strong_view():
    """CoSSL's class-balanced labeled rows go through the strong augmentation: with flips and Cutout only,
    each is a flipped or plain image with a grey square, never the image itself as the weak view gives it."""
    config = tiny_config("augment.crop_padding=0", "augment.randaugment_ops=0", "augment.cutout=4",
                         algorithm="fixmatch_cossl")
    data, source = batch_source(config)
    batch, _ = source.next()
    assert all(is_view_of_its_class(data, row, label) for row, label in zip(batch.x, batch.y))
    assert not any(is_view_of_its_class(data, row, label) for row, label in zip(batch.x_balanced, batch.y_balanced))


def test_truncate_jsonl_keeps_the_records_up_to_the_checkpoint(tmp_path):
    """A resumed run rewrites what came after its checkpoint: later records and a line cut short by a
    crash go; a file that is not there stays absent."""
    from cissl.engine.logging import truncate_jsonl

    path = tmp_path / "metrics.jsonl"
    truncate_jsonl(path, 10)
    assert not path.exists()
    path.write_text('{"iteration": 5, "loss": 1}\n{"iteration": 10}\n{"note": "no iteration"}\n'
                    '{"iteration": 11}\n{"iteration": 15, "lo')
    truncate_jsonl(path, 10)
    assert path.read_text() == '{"iteration": 5, "loss": 1}\n{"iteration": 10}\n{"note": "no iteration"}\n'


def test_train_without_out_writes_runs_setting_algorithm_seed(tmp_path, monkeypatch, capsys):
    from conftest import CONFIGS, run_cli

    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", "--quiet", "--algorithm", "fixmatch",
                            "name=digits/lt", "train.seed=3", "train.iterations=2", "train.eval_every=2",
                            "train.checkpoint_every=2", "train.report_last=1", "model.depth=10", "model.widen=1"],
                           capsys)
    assert code == 0, err
    assert (tmp_path / "runs/digits_lt-fixmatch-seed3/results.json").is_file()


def test_saving_a_checkpoint_clears_what_a_killed_save_left_and_keeps_the_newest(tmp_path):
    """A save killed mid-write (SIGKILL, power) leaves its temporary file; the next save removes it, and
    only the newest train.keep_checkpoints checkpoints stay."""
    from cissl.engine.checkpoint import list_checkpoints, save_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".ckpt_00000004.pt.tmp4242").write_bytes(b"half a checkpoint")
    (folder / "notes.txt").write_text("the user's")
    for iteration in (2, 4, 6):
        save_checkpoint({"iteration": iteration}, folder, iteration, keep=2)
    assert [p.name for p in list_checkpoints(folder)] == ["ckpt_00000004.pt", "ckpt_00000006.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt_00000004.pt", "ckpt_00000006.pt", "notes.txt"]


def test_an_exceptions_message_is_cut_to_its_first_line_with_the_count_of_the_rest():
    assert first_line(RuntimeError("  one line  ")) == "one line"
    assert first_line(RuntimeError("first\nsecond")) == "first (+1 more lines)"
    assert first_line(RuntimeError("Error(s) in loading\n\tMissing: a\n\tUnexpected: b\n")) == \
        "Error(s) in loading (+2 more lines)"
    # a heading (ends in ':') takes its first detail along; blank lines are not counted
    assert first_line(RuntimeError("Error(s) in loading state_dict for Net:\n\tMissing key(s): \"a\". \n\n"
                                   "\tUnexpected key(s): \"b\". ")) == \
        'Error(s) in loading state_dict for Net: Missing key(s): "a". (+1 more lines)'
    assert first_line(RuntimeError("Errors:\n" + "x" * 301)) == "Errors: " + "x" * 300 + "..."
    assert first_line(RuntimeError("Errors:\n" + "x" * 300)) == "Errors: " + "x" * 300
    assert first_line(RuntimeError("ends in a colon:")) == "ends in a colon:"
    assert first_line(RuntimeError("a \x1b[1mbold\x1b[0m word\nmore")) == "a bold word (+1 more lines)"
    assert first_line(KeyError()) == "KeyError"  # no message: the exception's name


def test_each_pool_holds_the_images_and_labels_of_its_split_indices():
    config = tiny_config("data.val_per_class=2")
    data = prepare_data(config, torch.device("cpu"))
    source, _ = load_run_source(config.data)
    split = data.split
    for pool, rows in ((data.labeled, split.labeled_indices), (data.unlabeled, split.unlabeled_indices),
                       (data.val, split.val_indices)):
        assert len(rows) and torch.equal(pool.images, torch.from_numpy(source.train.images[rows]))
        assert torch.equal(pool.labels, torch.from_numpy(source.train.labels[rows]))
    assert torch.equal(data.test.images, torch.from_numpy(source.test.images))


def test_a_saved_split_with_an_index_outside_the_data_set_is_refused_and_a_batch_may_take_every_labeled_image():
    config = tiny_config()
    split = prepare_data(config, torch.device("cpu")).split
    size = len(load_run_source(config.data)[0].train)  # the first index past the end is refused too
    for field, bad in (("labeled_indices", -1), ("unlabeled_indices", 10 ** 6), ("val_indices", -3),
                       ("test_indices", size), ("labeled_indices", size)):
        broken = dataclasses.replace(split, **{field: np.append(getattr(split, field), bad).astype(np.int64)})
        with pytest.raises(DataError, match=f"^split.json: {field.split('_')[0]} index {bad} is out of range for "
                                            f"the {size} images of "):
            prepare_data(config, torch.device("cpu"), broken)
    labeled = len(split.labeled_indices)
    prepare_data(tiny_config(f"train.batch_size={labeled}"), torch.device("cpu"), split)  # every labeled image
    with pytest.raises(ConfigError, match=f"{labeled + 1} labeled images per step, but the split holds {labeled}"):
        prepare_data(tiny_config(f"train.batch_size={labeled + 1}"), torch.device("cpu"), split)


def test_pseudo_label_statistics_by_hand():
    """Five unlabeled images of true classes 0, 0, 0, 1, 2 pseudo-labelled 0, 1, 0, 1, 0, the third and fourth
    masked out; a fourth class never seen. Counted per true class (seen, used, correct) and per pseudo-label
    (predicted): seen 3 1 1 0, used 2 0 1 0, correct 1 0 0 0, predicted 2 1 0 0."""
    from cissl.engine.diagnostics import PseudoLabelStats

    def matches(summary, wanted):
        return summary.keys() == wanted.keys() and all(summary[k] == pytest.approx(wanted[k]) for k in wanted)

    stats = PseudoLabelStats(4, torch.device("cpu"))
    assert stats.summary() == {"mask_rate": 0.0, "used_accuracy": 0.0, "per_class_mask_rate": [0.0] * 4,
                               "per_class_used_accuracy": [0.0] * 4, "pseudo_label_distribution": [0.0] * 4,
                               "true_distribution": [0.0] * 4}
    stats.update(torch.tensor([0, 0, 0, 1, 2]), torch.tensor([0, 1, 0, 1, 0]),
                 torch.tensor([True, True, False, False, True]))
    expected = {"mask_rate": 0.6, "used_accuracy": 1 / 3, "per_class_mask_rate": [2 / 3, 0.0, 1.0, 0.0],
                "per_class_used_accuracy": [0.5, 0.0, 0.0, 0.0], "pseudo_label_distribution": [2 / 3, 1 / 3, 0.0, 0.0],
                "true_distribution": [0.6, 0.2, 0.2, 0.0]}
    assert matches(stats.summary(), expected)
    state = stats.state_dict()
    restored = PseudoLabelStats(4, torch.device("cpu"))
    restored.load_state_dict(state)
    assert matches(restored.summary(), expected)
    stats.update(torch.tensor([3]), torch.tensor([3]), torch.tensor([1.0]))  # a float mask counts as used
    assert stats.summary()["per_class_used_accuracy"] == pytest.approx([0.5, 0.0, 0.0, 1.0])
    assert state["seen"].tolist() == [3, 1, 1, 0]  # the checkpointed counts do not follow later updates
    stats.reset()
    assert all(v.sum() == 0 for v in stats.counts.values()) and matches(restored.summary(), expected)
    stats.update(torch.tensor([2]), torch.tensor([1]), torch.tensor([True]))  # one image: totals of 1
    assert matches(stats.summary(), {"mask_rate": 1.0, "used_accuracy": 0.0, "per_class_mask_rate": [0, 0, 1.0, 0],
                                     "per_class_used_accuracy": [0.0] * 4,
                                     "pseudo_label_distribution": [0, 1.0, 0, 0], "true_distribution": [0, 0, 1.0, 0]})


def test_the_first_stop_signal_is_a_request_and_a_second_acts_as_before():
    """Inside StopSignals a SIGTERM / SIGINT only records its number and puts back the handlers that were
    there (a second signal then does what it did before); leaving restores them; outside the main thread
    (where Python cannot install handlers) it installs none and still works as a context."""
    import os
    import signal
    import threading

    from cissl.engine.stop import StopSignals

    before = {sig: [] for sig in (signal.SIGTERM, signal.SIGINT)}
    previous = {sig: signal.signal(sig, lambda number, frame: before[number].append(number)) for sig in before}
    try:
        for sig in before:
            installed = {s: signal.getsignal(s) for s in before}
            with StopSignals() as signals:
                assert all(signal.getsignal(s) == signals._handle for s in before)
                os.kill(os.getpid(), sig)
                assert signals.requested == sig and before[sig] == []
                assert all(signal.getsignal(s) == installed[s] for s in before)  # the next one acts at once
                os.kill(os.getpid(), sig)
                assert before[sig] == [sig] and signals.requested == sig
            assert all(signal.getsignal(s) == installed[s] for s in before)
        with StopSignals() as signals:
            pass
        assert signals.requested is None and all(signal.getsignal(s) == installed[s] for s in before)
        seen = []

        def in_a_thread():
            with StopSignals() as inner:
                seen.append((inner._previous, {s: signal.getsignal(s) for s in before}))

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join()
        assert seen == [({}, installed)]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
