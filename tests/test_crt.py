"""cRT: class-aware sampling, the frozen network started from a finished run, the parent in the row
name, the checks on the parent, and a resumed cRT stage equal to an uninterrupted one."""

import json

import pytest
import torch
from helpers import tiny_config, uninterrupted_and_resumed
from test_training import assert_same_state

from cissl.algorithms import ViewSpec
from cissl.algorithms.components.class_weights import class_sampling_weights
from cissl.algorithms.crt import Crt
from cissl.config import load_config
from cissl.data.stream import ClassBalancedStream
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.run import evaluate_run, start_run
from cissl.errors import CheckpointError, ConfigError

PARENT = ("train.iterations=8", "train.eval_every=4", "train.checkpoint_every=4", "train.keep_checkpoints=4")


def test_sampling_weights_by_hand():
    """Labels 0, 0, 0, 1: beta = 1 gives 1/3 each to the class-0 images and 1 to the class-1 image;
    beta = 1/2 gives (1/2) / (1 - 1/8) = 4/7 and (1/2) / (1/2) = 1."""
    labels = torch.tensor([0, 0, 0, 1])
    for beta, head in ((1.0, 1 / 3), (0.5, 4 / 7)):
        expected = torch.tensor([head] * 3 + [1.0], dtype=torch.float64)
        assert torch.allclose(class_sampling_weights(labels, 2, beta), expected)


def test_class_balanced_stream_draws_classes_equally_and_resumes():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2])
    stream = ClassBalancedStream(class_sampling_weights(labels, 3, 1.0), 64, seed=5)
    drawn = labels[torch.cat([stream.next() for _ in range(200)])]
    shares = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert torch.allclose(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)
    saved = stream.state_dict()
    ahead = [stream.next() for _ in range(3)]
    again = ClassBalancedStream(class_sampling_weights(labels, 3, 1.0), 64, seed=0)
    again.load_state_dict(saved)
    assert all(torch.equal(a, again.next()) for a in ahead)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    run = tmp_path_factory.mktemp("crt") / "parent"
    start_run(tiny_config(*PARENT, algorithm="fixmatch"), run, quiet=True)
    return run


def crt_config(parent, *overrides):
    return tiny_config("train.iterations=12", "train.eval_every=6", "train.checkpoint_every=6",
                       "train.keep_checkpoints=3", "train.ema_decay=0", f"train.init_from={parent}", *overrides,
                       algorithm="crt")


def backbone(state, key):
    return {k: v for k, v in state[key].items() if k.startswith("backbone.")}


def test_the_network_stays_frozen_and_only_the_fresh_head_learns(tmp_path, parent):
    results = start_run(crt_config(parent), tmp_path / "crt", quiet=True)
    assert results["algorithm"] == "fixmatch+crt"
    source = load_checkpoint(parent / "checkpoints/ckpt_00000008.pt")
    final = load_checkpoint(tmp_path / "crt/checkpoints/ckpt_00000012.pt")
    for key in ("model", "ema"):  # weights and BN statistics: the parent's EMA backbone, untouched (EMA decay 0)
        assert_same_state(backbone(source, "ema"), backbone(final, key))
    fresh = load_checkpoint(tmp_path / "crt/checkpoints/ckpt_00000006.pt")["model"]["heads.main.weight"]
    assert not torch.equal(fresh, final["model"]["heads.main.weight"])
    assert not torch.equal(source["ema"]["heads.main.weight"], fresh)  # the head did not come from the parent
    assert json.loads((tmp_path / "crt/results.json").read_text())["algorithm"] == "fixmatch+crt"
    assert evaluate_run(tmp_path / "crt")["algorithm"] == "fixmatch+crt"  # re-evaluation keeps the parent


def test_training_weights_of_the_parent_on_request(tmp_path, parent):
    start_run(crt_config(parent, "train.init_weights=model", "train.iterations=6", "train.report_last=1"),
              tmp_path / "crt", quiet=True)
    source = load_checkpoint(parent / "checkpoints/ckpt_00000008.pt")
    final = load_checkpoint(tmp_path / "crt/checkpoints/ckpt_00000006.pt")
    assert_same_state(backbone(source, "model"), backbone(final, "model"))
    assert not all(torch.equal(a, b) for a, b in zip(backbone(source, "model").values(),
                                                    backbone(source, "ema").values()))


def test_a_resumed_crt_stage_equals_an_uninterrupted_one(tmp_path, parent):
    whole, resumed = uninterrupted_and_resumed(crt_config(parent), tmp_path, 12)  # cut after iteration 6
    assert_same_state(whole, resumed)
    assert json.loads((tmp_path / "cut/results.json").read_text())["algorithm"] == "fixmatch+crt"


def test_the_parent_must_exist_and_match(tmp_path, parent):
    with pytest.raises(ConfigError, match=r"^config key 'train.init_from': crt trains only the classifier"):
        tiny_config(algorithm="crt")
    with pytest.raises(CheckpointError, match=r"^train.init_from: .*nowhere is neither a checkpoint file nor a run"):
        start_run(crt_config(tmp_path / "nowhere"), tmp_path / "a", quiet=True)
    with pytest.raises(CheckpointError, match=r"other data or another network: train.seed 0 \(this run: 1\)$"):
        start_run(crt_config(parent, "train.seed=1"), tmp_path / "b", quiet=True)
    with pytest.raises(CheckpointError, match=r"other data or another network: model.widen 1 \(this run: 2\)$"):
        start_run(crt_config(parent, "model.widen=2"), tmp_path / "c", quiet=True)
    (tmp_path / "empty/checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"^train.init_from: run .*empty has no checkpoint$"):
        start_run(crt_config(tmp_path / "empty"), tmp_path / "d", quiet=True)


def test_any_method_can_start_from_a_run(tmp_path, parent):
    """train.init_from is general: a FixMatch run fine-tuning the parent's backbone names it too."""
    config = load_config(None, [])  # defaults: no init_from, the row name is the method's
    assert config.train.init_from == "" and config.train.init_weights == "ema"
    results = start_run(tiny_config("train.iterations=4", "train.eval_every=2", "train.report_last=1",
                                    f"train.init_from={parent}", algorithm="supervised"), tmp_path / "ft", quiet=True)
    assert results["algorithm"] == "fixmatch+supervised"


def test_crt_declares_labeled_class_aware_batches_and_a_frozen_network(parent):
    config = crt_config(parent, "algorithm.sampler_beta=0.5").algorithm
    assert Crt.views(config) == ViewSpec(unlabeled=False, labeled_sampling="class_balanced", sampling_beta=0.5)
    assert not Crt.trains_backbone(config)
    with pytest.raises(ValueError, match="labeled_sampling must be 'shuffled' or 'class_balanced'"):
        ViewSpec(labeled_sampling="balanced")


def test_a_checkpoint_file_is_a_parent_and_the_log_names_it(tmp_path, parent):
    """train.init_from names one checkpoint file (not the newest): the backbone is that file's EMA backbone,
    and the run's log says where it came from; a parent trained on other data is named by its data key."""
    import io

    older = parent / "checkpoints/ckpt_00000004.pt"
    stream = io.StringIO()
    start_run(crt_config(older, "train.iterations=6", "train.report_last=1"), tmp_path / "crt", stream=stream)
    final = load_checkpoint(tmp_path / "crt/checkpoints/ckpt_00000006.pt")
    assert_same_state(backbone(load_checkpoint(older), "ema"), backbone(final, "model"))
    assert (f"backbone from {older} (ema weights of a fixmatch run at iteration 4); heads start afresh"
            in stream.getvalue())
    with pytest.raises(CheckpointError, match=rf"^train.init_from: {older} was trained on other data or another "
                                              rf"network: data.imbalance_ratio 10(\.0)? \(this run: 5(\.0)?\)$"):
        start_run(crt_config(older, "data.imbalance_ratio=5"), tmp_path / "other", quiet=True)
    state = load_checkpoint(older)
    del state["config"]  # nothing to check the parent's data and network against: refused, not trusted
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=rf"^train.init_from: {tmp_path / 'bare.pt'} records no config, so its "
                                              rf"data and network cannot be checked against this run's$"):
        start_run(crt_config(tmp_path / "bare.pt"), tmp_path / "bare", quiet=True)


def test_a_parent_whose_backbone_does_not_fit_is_one_line(tmp_path, parent):
    """A checkpoint whose recorded config matches but whose backbone weights lack a tensor (edited by hand)."""
    state = load_checkpoint(parent / "checkpoints/ckpt_00000008.pt")
    dropped = next(key for key in state["ema"] if key.startswith("backbone."))
    del state["ema"][dropped]
    torch.save(state, tmp_path / "edited.pt")
    message = (rf"^train.init_from: {tmp_path / 'edited.pt'} does not fit this network: Error\(s\) in loading "
               rf"state_dict for WideResNet: Missing key\(s\) in state_dict: \"{dropped[9:]}\"\.$")
    with pytest.raises(CheckpointError, match=message):
        start_run(crt_config(tmp_path / "edited.pt"), tmp_path / "crt", quiet=True)
