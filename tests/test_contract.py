"""The algorithm contract v2 (docs/algorithms.md), with small methods and parts defined here.

Declared views checked against the config; pool size and per-image pool positions; the evaluation
logits hook; the hooks after each step, every N steps, at epoch ends and between generations, with
resume bit-exact mid-generation; FixMatch composed with a refiner and an auxiliary head by
configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from helpers import logged_records, tiny_config, uninterrupted_and_resumed
from test_training import assert_same_state

from cissl.algorithms import ALGORITHMS, AUX_HEADS, REFINERS, GenerationUpdate, Hooks, Periodic, StepOutput, ViewSpec
from cissl.algorithms.base import run_hooks
from cissl.algorithms.components.logit_adjust import class_prior
from cissl.algorithms.fixmatch import FixMatch, FixMatchConfig
from cissl.algorithms.parts import AuxiliaryHead, PseudoLabelRefiner
from cissl.algorithms.supervised import Supervised, SupervisedConfig
from cissl.config import load_config
from cissl.engine.assemble import build_network
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.precision import ComputePolicy
from cissl.engine.run import resume_run, start_run
from cissl.engine.trainer import Trainer
from cissl.errors import ConfigError
from cissl.evaluation.evaluate import predict
from cissl.schema import NamedConfig, option


@pytest.fixture
def registered():
    """Register entries for one test: ``registered(REGISTRY, name, config_cls, target)``."""
    added = []

    def add(registry, name, config_cls, target, **kwargs):
        registry.register(name, config_cls, **kwargs)(target)
        added.append((registry, name))

    yield add
    for registry, name in added:
        registry.unregister(name)


# ----------------------------------------------------------------------------- declared views
class OneStrongView(FixMatch):
    @classmethod
    def views(cls, config) -> ViewSpec:
        return ViewSpec(strong_views=(1,))


def test_declared_views_are_checked_against_the_config(registered):
    registered(ALGORITHMS, "test_one_view", FixMatchConfig, OneStrongView)
    with pytest.raises(ConfigError, match=r"^config key 'train.strong_views': test_one_view takes 1 strong view\(s\) "
                                          r"per unlabeled image, got 2$"):
        tiny_config("train.strong_views=2", algorithm="test_one_view")
    config = tiny_config("train.strong_views=1", "train.mu=2", algorithm="test_one_view")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    batch, _ = trainer.batches.next()
    assert len(batch.u_strong) == 1 and len(batch.u_weak) == 2 * config.train.batch_size


def test_a_labeled_only_method_gets_no_unlabeled_views():
    config = tiny_config(algorithm="supervised")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    batch, truth = trainer.batches.next()
    assert batch.u_weak is None and batch.u_strong == () and batch.u_index is None and truth is None
    assert trainer.batches.images_per_step == config.train.batch_size
    assert type(trainer.algorithm).views(config.algorithm) == ViewSpec(unlabeled=False)
    assert trainer.algorithm.context.num_classes == 10 and trainer.algorithm.config is config.algorithm


def test_the_method_gets_the_runs_facts_and_a_seed_of_its_own_from_the_run_seed():
    """Every field of AlgorithmContext comes from the run: CReST+'s alignment temperature follows
    context.generations, and ABC's masks, CoSSL's draws and SeMi's bank draw from context.seed (a method given
    the default seed would draw the same for every run seed)."""
    from cissl.engine.seeds import derive_seed

    contexts = []
    for seed in (0, 1):
        config = tiny_config(f"train.seed={seed}", "algorithm.generations=3", "train.iterations=12",
                             algorithm="fixmatch_crest_plus")
        data = prepare_data(config, torch.device("cpu"))
        trainer = Trainer.from_config(config, data)
        context = trainer.algorithm.context
        assert (context.num_classes, context.labeled_counts, context.feature_dim) == \
            (10, tuple(data.split.labeled_counts), trainer.model.feature_dim)
        assert (context.iterations, context.epoch_length, context.generations) == (12, config.train.epoch_length, 3)
        assert context.unlabeled_pool_size == len(data.unlabeled) and context.device == torch.device("cpu")
        assert context.seed == derive_seed(seed, "algorithm")
        contexts.append(context)
    assert contexts[0].seed != contexts[1].seed


def test_pool_size_and_positions_of_the_unlabeled_images():
    config = tiny_config(algorithm="fixmatch")
    data = prepare_data(config, torch.device("cpu"))
    trainer = Trainer.from_config(config, data)
    assert trainer.algorithm.context.unlabeled_pool_size == len(data.unlabeled) > 0
    assert trainer.algorithm.ema_model is trainer.ema.model  # for methods that extract features with it
    batch, truth = trainer.batches.next()
    assert batch.u_index.shape == (config.train.batch_size * config.train.mu,)
    assert int(batch.u_index.max()) < len(data.unlabeled)
    assert torch.equal(data.unlabeled.labels[batch.u_index], truth)  # row i of the batch is pool image u_index[i]


# ----------------------------------------------------------------------------- evaluation logits
class AdjustedAtTest(FixMatch):
    """Reports the standard head's logits minus log pi (test-time logit adjustment) as 'main_la'."""

    @property
    def reported_head(self) -> str:
        return "main_la"

    def evaluation_logits(self, logits):
        prior = class_prior(self.context.labeled_counts)
        return {**logits, "main_la": logits["main"] - prior.log()}


def test_evaluation_scores_the_logits_the_method_returns(tmp_path, registered, capsys):
    registered(ALGORITHMS, "test_tta", FixMatchConfig, AdjustedAtTest)
    config = tiny_config("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=4",
                         algorithm="test_tta")
    results = start_run(config, tmp_path / "run", quiet=True)
    assert results["reported_head"] == "main_la" and set(results["heads"]) == {"main", "main_la"}
    data = prepare_data(config, torch.device("cpu"))
    trainer = Trainer.from_config(config, data)
    trainer.ema.load_state_dict(load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt")["ema"])
    logits = predict(trainer.ema.model, data.test.images, 500, trainer.parts.policy)["main"]
    adjusted = logits - class_prior(data.split.labeled_counts).log()
    expected = (adjusted.argmax(1) == data.test.labels).float().mean().item()
    assert results["top1"] == pytest.approx(expected) and results["heads"]["main_la"]["top1"] == results["top1"]
    code, _, _ = run_cli(["evaluate", tmp_path / "run"], capsys)  # the checkpoint path reaches the same hook
    assert code == 0 and json.loads((tmp_path / "run/results.json").read_text())["top1"] == results["top1"]


# ----------------------------------------------------------------------------- hooks and generations
@dataclass(frozen=True)
class RecorderConfig(SupervisedConfig):
    name: str = option("test_recorder")
    every: int = option(3, min=1)


class HookRecorder(Supervised):
    """Supervised, recording every hook call in its (checkpointed) state."""

    def __init__(self, config, context):
        super().__init__(config, context)
        self.calls: list[list] = []

    def after_step(self, iteration):
        self.calls.append(["step", iteration])

    def periodic(self):
        return [Periodic(self.config.every, lambda t: self.calls.append(["every", t]))]

    def on_epoch_end(self, epoch):
        self.calls.append(["epoch", epoch])

    def state_dict(self):
        return {"calls": [list(c) for c in self.calls]}

    def load_state_dict(self, state):
        self.calls = [list(c) for c in state["calls"]]


def test_hooks_run_after_each_step_every_n_steps_and_at_epoch_ends(tmp_path, registered):
    registered(ALGORITHMS, "test_recorder", RecorderConfig, HookRecorder)
    config = tiny_config("train.iterations=8", "train.epoch_length=4", "train.eval_every=4",
                         "train.checkpoint_every=4", algorithm="test_recorder")
    start_run(config, tmp_path / "run", quiet=True)
    calls = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000008.pt")["algorithm"]["calls"]
    expected = []
    for t in range(8):
        expected.append(["step", t])
        if (t + 1) % 3 == 0:
            expected.append(["every", t])
        if (t + 1) % 4 == 0:
            expected.append(["epoch", t // 4])
    assert calls == expected



class PoolRecorder(HookRecorder):
    """HookRecorder that asks for the pool's predictions after every epoch and records their sum."""

    @classmethod
    def pool_each_epoch(cls, config) -> bool:
        return True

    def on_epoch_pool(self, epoch, pool):
        self.calls.append(["pool", epoch, len(pool.logits["main"]), len(pool.features),
                           float(pool.logits["main"].double().sum())])


def test_pool_predictions_come_after_each_epoch_end_from_the_ema_model(tmp_path, registered):
    registered(ALGORITHMS, "test_pool_recorder", RecorderConfig, PoolRecorder)
    config = tiny_config("train.iterations=8", "train.epoch_length=4", "train.eval_every=4",
                         "train.checkpoint_every=4", "algorithm.every=100", algorithm="test_pool_recorder")
    start_run(config, tmp_path / "run", quiet=True)
    final = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000008.pt")
    calls = [c for c in final["algorithm"]["calls"] if c[0] != "step"]
    data = prepare_data(config, torch.device("cpu"))
    size = len(data.unlabeled)
    assert [c[:4] for c in calls] == [["epoch", 0], ["pool", 0, size, size], ["epoch", 1], ["pool", 1, size, size]]
    trainer = Trainer.from_config(config, data)
    trainer.ema.load_state_dict(final["ema"])  # the EMA after step 8, the one the last call saw
    logits = predict(trainer.ema.model, data.unlabeled.images, 500, trainer.parts.policy)["main"]
    assert calls[3][4] == pytest.approx(float(logits.double().sum()), rel=1e-9)
    assert calls[1][4] != pytest.approx(calls[3][4])  # epoch 0's call saw the EMA of step 4


def test_pool_calls_of_one_step_epochs_are_numbered_by_epoch(registered):
    """Epochs of one step: the pool call after step t is epoch t (an int, as on_epoch_end's)."""
    registered(ALGORITHMS, "test_pool_recorder", RecorderConfig, PoolRecorder)
    config = tiny_config("train.epoch_length=1", "algorithm.every=100", algorithm="test_pool_recorder")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    for _ in range(3):
        trainer.train_step()
    pools = [c[1] for c in trainer.algorithm.calls if c[0] == "pool"]
    assert pools == [0, 1, 2] and all(type(epoch) is int for epoch in pools)


@dataclass(frozen=True)
class SwitchesConfig(RecorderConfig):
    name: str = option("test_switches")
    pool: bool = option(True)
    frozen: bool = option(False)


class SwitchesRecorder(PoolRecorder):
    """Whether it sees the pool each epoch and trains its backbone, as its config says."""

    @classmethod
    def pool_each_epoch(cls, config) -> bool:
        return config.pool

    @classmethod
    def trains_backbone(cls, config) -> bool:
        return not config.frozen


@pytest.mark.parametrize("pool", [True, False])
def test_the_engine_asks_a_methods_switches_with_the_methods_config(registered, pool):
    """pool_each_epoch(config) and trains_backbone(config) get the method's section of the run's config
    (docs/algorithms.md): a plugin's switch may depend on its options (none of the shipped methods' does)."""
    registered(ALGORITHMS, "test_switches", SwitchesConfig, SwitchesRecorder)
    config = tiny_config(f"algorithm.pool={str(pool).lower()}", algorithm="test_switches")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    assert trainer.pool_each_epoch is pool and trainer.frozen_backbone is False


class ValidationRecorder(HookRecorder):
    """HookRecorder that asks for the validation split's predictions every ``every`` steps."""

    @classmethod
    def validation_every(cls, config) -> int:
        return config.every

    def on_validation(self, iteration, predictions):
        self.calls.append(["val", iteration, predictions.labels.tolist(),
                           float(predictions.logits["main"].double().sum())])


def test_validation_predictions_come_every_n_steps_from_the_ema_model(tmp_path, registered):
    registered(ALGORITHMS, "test_val_recorder", RecorderConfig, ValidationRecorder)
    config = tiny_config("train.iterations=8", "train.epoch_length=100", "train.eval_every=4",
                         "train.checkpoint_every=4", "algorithm.every=3", "data.val_per_class=2",
                         algorithm="test_val_recorder")
    start_run(config, tmp_path / "run", quiet=True)
    final = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000008.pt")
    calls = [c for c in final["algorithm"]["calls"] if c[0] not in ("step", "every")]
    data = prepare_data(config, torch.device("cpu"))
    assert [c[:3] for c in calls] == [["val", 2, data.val.labels.tolist()], ["val", 5, data.val.labels.tolist()]]
    assert sorted(calls[0][2]) == sorted(list(range(10)) * 2)  # 2 held-out images of every class
    trainer = Trainer.from_config(config, data)
    trainer.load_state_dict(load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt"))
    for _ in range(2):  # steps 5 and 6: the EMA the second call (after step index 5) saw
        trainer.train_step()
    logits = predict(trainer.ema.model, data.val.images, 500, trainer.parts.policy)["main"]
    assert calls[1][3] == pytest.approx(float(logits.double().sum()), rel=1e-9)


def test_a_method_that_fits_on_validation_needs_a_validation_split(registered):
    registered(ALGORITHMS, "test_val_recorder", RecorderConfig, ValidationRecorder)
    with pytest.raises(ConfigError, match=r"^config key 'data.val_per_class': test_val_recorder fits .* "
                                          r"set data.val_per_class >= 1$"):
        tiny_config(algorithm="test_val_recorder")


@dataclass(frozen=True)
class SelfTrainingConfig(FixMatchConfig):
    name: str = option("test_self_training")
    generations: int = option(3, min=1)
    per_class: int = option(2, min=1)
    reinitialize: bool = option(False)


class SelfTraining(FixMatch):
    """FixMatch in generations; between two, the most confident pool images of each predicted class
    join the labeled set with their pseudo-labels (a CReST-like toy)."""

    seen: list = []  # (generation, pool logits shape, features shape) of every call, for the test

    @classmethod
    def generations(cls, config) -> int:
        return config.generations

    def on_generation_end(self, generation, pool):
        conf, pred = torch.softmax(pool.logits["main"], dim=1).max(dim=1)
        SelfTraining.seen.append((generation, tuple(pool.logits["main"].shape), tuple(pool.features.shape)))
        chosen = torch.cat([torch.nonzero(pred == k).flatten()[conf[pred == k].argsort(descending=True)]
                            [: self.config.per_class] for k in range(self.context.num_classes)])
        return GenerationUpdate(chosen, pred[chosen], reinitialize_model=self.config.reinitialize)


@pytest.mark.parametrize("reinitialize", [False, True])
def test_generations_extend_the_labeled_set_restart_the_schedule_and_resume_exactly(tmp_path, registered,
                                                                                    reinitialize):
    registered(ALGORITHMS, "test_self_training", SelfTrainingConfig, SelfTraining)
    SelfTraining.seen = []
    config = tiny_config("train.iterations=12", "train.eval_every=2", "train.checkpoint_every=2",
                         "train.keep_checkpoints=10", "algorithm.threshold=0.2", "train.log_every=1",
                         f"algorithm.reinitialize={str(reinitialize).lower()}", algorithm="test_self_training")
    start_run(config, tmp_path / "straight", quiet=True)
    data = prepare_data(config, torch.device("cpu"))
    assert [s[0] for s in SelfTraining.seen] == [0, 1]  # between generations 0-1 and 1-2, not after the last
    assert all(type(s[0]) is int for s in SelfTraining.seen)
    assert SelfTraining.seen[0][1] == (len(data.unlabeled), 10) and SelfTraining.seen[0][2][0] == len(data.unlabeled)
    lr = [r["lr"] for r in map(json.loads, (tmp_path / "straight/metrics.jsonl").read_text().splitlines())
          if r["kind"] == "train"]
    # the lr logged after the first step of each 4-step generation: the schedule restarted each time
    assert lr[0] == lr[4] == lr[8] == pytest.approx(0.03 * math.cos(7 * math.pi / 16 / 4))
    assert lr[3] < lr[2] < lr[1] < lr[0]
    at_boundary = load_checkpoint(tmp_path / "straight/checkpoints/ckpt_00000004.pt")
    added = at_boundary["batches"]["additions"]
    assert added["generation"] == 1 and 0 < len(added["indices"]) <= 20
    policy = ComputePolicy.from_config(config.train, torch.device("cpu"))
    for generation, boundary in ((1, 4), (2, 8)):  # saved right after the generation's end, before a step
        fresh = build_network(config, data, policy, stream=f"model-generation{generation}").state_dict()
        saved = load_checkpoint(tmp_path / f"straight/checkpoints/ckpt_{boundary:08d}.pt")
        # reinitialized: the network and its EMA seeded by the generation's number; else trained on
        same = [torch.equal(saved[part][key], value) for part in ("model", "ema") for key, value in fresh.items()
                if value.is_floating_point()]
        assert all(same) == reinitialize
        assert (saved["optimizer"]["state"] == {}) == reinitialize  # a fresh network starts without momentum
    # resume from inside generation 1 and from the boundary itself: the same run, bit for bit
    reference = load_checkpoint(tmp_path / "straight/checkpoints/ckpt_00000012.pt")
    for cut in (6, 4, 8):
        run = tmp_path / f"cut{cut}"
        start_run(config, run, quiet=True)
        for path in sorted((run / "checkpoints").iterdir()):
            if int(path.stem.split("_")[1]) > cut:
                path.unlink()
        (run / "results.json").unlink()
        resume_run(run, quiet=True)
        assert_same_state(reference, load_checkpoint(run / "checkpoints/ckpt_00000012.pt"))


class PlainGenerations(FixMatch):
    """FixMatch in generations whose ends change nothing (the contract's default hook returns None)."""

    @classmethod
    def generations(cls, config) -> int:
        return config.generations


def test_a_generation_end_that_adds_nothing_keeps_the_labeled_set_and_logs_no_additions(tmp_path, registered):
    registered(ALGORITHMS, "test_plain_generations", SelfTrainingConfig, PlainGenerations)
    config = tiny_config("train.iterations=6", "train.eval_every=6", "train.checkpoint_every=6",
                         "algorithm.generations=2", algorithm="test_plain_generations")
    before = time.time()
    start_run(config, tmp_path / "run", quiet=True)
    took = time.time() - before
    ends = [r for r in logged_records(tmp_path / "run") if r["kind"] == "generation"]
    assert len(ends) == 1 and (ends[0]["generation"], ends[0]["iteration"], ends[0]["added"]) == (0, 3, 0)
    assert "added_correct" not in ends[0]  # nothing added: nothing to count against the pool's labels
    assert 0 <= ends[0]["seconds"] <= took
    assert "additions" not in load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000006.pt")["batches"]


class GlobalRngConfig(FixMatchConfig):
    name: str = option("test_global_rng")


class GlobalRng(FixMatch):
    """FixMatch whose loss is scaled by a draw from torch's global generator (a user's method may draw
    without a generator of its own)."""

    def step(self, model, batch, iteration):
        out = super().step(model, batch, iteration)
        return dataclasses.replace(out, loss=out.loss * (1 + torch.rand(())))


def test_a_method_drawing_from_the_global_generator_resumes_bit_for_bit(tmp_path, registered):
    registered(ALGORITHMS, "test_global_rng", GlobalRngConfig, GlobalRng)
    config = tiny_config("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2",
                         algorithm="test_global_rng")
    whole, resumed = uninterrupted_and_resumed(config, tmp_path, 4)
    assert_same_state(whole, resumed)


def test_generations_must_divide_the_run(registered):
    registered(ALGORITHMS, "test_self_training", SelfTrainingConfig, SelfTraining)
    with pytest.raises(ConfigError, match=r"'train.iterations': .* 3 generations .* multiple of 3, got 20"):
        tiny_config(algorithm="test_self_training")


# ----------------------------------------------------------------------------- composition
@dataclass(frozen=True)
class SharpenConfig(NamedConfig):
    name: str = option("test_sharpen")
    temperature: float = option(0.5, min=0.0, min_exclusive=True)


class Sharpen(PseudoLabelRefiner):
    """p^(1/T), renormalised; counts the images it refined (state) and its periodic calls."""

    def __init__(self, config, context):
        super().__init__(config, context)
        self.refined = 0
        self.ticks = 0
        self.steps = 0
        self.epochs: list[int] = []

    def after_step(self, iteration):
        assert iteration == self.steps  # the iteration just finished reaches the part
        self.steps += 1

    def on_epoch_end(self, epoch):
        self.epochs.append(epoch)

    def refine(self, probs, views, batch, iteration):
        # the step's own views, batch and iteration reach the part
        assert probs.shape == views.weak_logits["main"].shape == (len(batch.u_index), self.context.num_classes)
        assert iteration == self.steps
        self.refined += len(probs)
        sharp = probs ** (1.0 / self.config.temperature)
        return sharp / sharp.sum(dim=1, keepdim=True)

    def periodic(self):
        return [Periodic(2, lambda t: setattr(self, "ticks", self.ticks + 1))]

    def state_dict(self):
        return {"refined": self.refined, "ticks": self.ticks, "steps": self.steps, "epochs": list(self.epochs)}

    def load_state_dict(self, state):
        self.refined, self.ticks, self.steps = state["refined"], state["ticks"], state["steps"]
        self.epochs = list(state["epochs"])


@dataclass(frozen=True)
class AuxConfig(NamedConfig):
    name: str = option("test_aux")
    weight: float = option(0.5)


class AuxHead(AuxiliaryHead):
    """A second head trained on the labeled images and the masked pseudo-labels; reported."""

    head = "aux"
    reported = True

    def loss(self, model, views, batch, pseudo, iteration):
        assert torch.allclose(pseudo.probs.sum(dim=1), torch.ones(len(pseudo.labels)))
        assert pseudo.confidence.shape == pseudo.mask.shape == (len(batch.u_index),)
        labeled = F.cross_entropy(model.heads["aux"](views.labeled), batch.y)
        unlabeled = (F.cross_entropy(views.strong_logits[0]["aux"], pseudo.labels, reduction="none")
                     * pseudo.mask).mean()
        loss = labeled + unlabeled
        return self.config.weight * loss, {"loss_aux": loss.detach(), "aux_iteration": float(iteration)}


def test_fixmatch_composes_a_refiner_and_an_auxiliary_head_by_configuration(tmp_path, registered, capsys):
    registered(REFINERS, "test_sharpen", SharpenConfig, Sharpen)
    registered(AUX_HEADS, "test_aux", AuxConfig, AuxHead)
    registered(ALGORITHMS, "test_fixmatch_sharpen_aux", FixMatchConfig, FixMatch,
               preset={"refiner": "test_sharpen", "aux_head": {"name": "test_aux", "weight": 0.25}})
    config = tiny_config("algorithm.threshold=0.3", "algorithm.refiner.temperature=0.25", "train.epoch_length=2",
                         algorithm="test_fixmatch_sharpen_aux")
    assert config.algorithm.refiner == SharpenConfig(temperature=0.25) and config.algorithm.aux_head.weight == 0.25
    plain = tiny_config("algorithm.threshold=0.3", algorithm="fixmatch")
    composed, base = (Trainer.from_config(c, prepare_data(c, torch.device("cpu"))) for c in (config, plain))
    assert set(composed.model.heads) == {"main", "aux"} and composed.algorithm.reported_head == "aux"
    for _ in range(3):
        out, ref = composed.train_step(), base.train_step()
    assert out.metrics["aux_iteration"] == 2.0 and composed.algorithm.aux_head.context.num_classes == 10
    # the refined (sharper) distribution is what is thresholded: more images pass than in plain FixMatch
    assert out.mask.sum() >= ref.mask.sum()
    terms = {key: float(out.metrics[key]) for key in ("loss_x", "loss_u", "loss_aux")}
    assert out.loss.item() == pytest.approx(terms["loss_x"] + terms["loss_u"] + 0.25 * terms["loss_aux"], rel=1e-6)
    # FixMatch forwards every hook to its parts: 3 steps, a periodic hook every 2, epochs of 2 steps
    assert composed.algorithm.refiner.refined == 3 * 16 and composed.algorithm.refiner.ticks == 1
    # the parts' state is checkpointed and restored
    state = composed.state_dict()["algorithm"]
    assert state == {"refiner": {"refined": 48, "ticks": 1, "steps": 3, "epochs": [0]}, "aux_head": {}}
    fresh = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    fresh.algorithm.load_state_dict(state)
    assert fresh.algorithm.refiner.state_dict() == state["refiner"]
    with pytest.raises(ValueError, match=r"the state of \['refiner'\], this run has \['aux_head', 'refiner'\]"):
        fresh.algorithm.load_state_dict({"refiner": state["refiner"]})
    results = start_run(tiny_config("train.iterations=4", "train.checkpoint_every=2", "train.eval_every=2",
                                    algorithm="test_fixmatch_sharpen_aux"), tmp_path / "run", quiet=True)
    assert results["reported_head"] == "aux" and set(results["heads"]) == {"main", "aux"}
    code, out_text, _ = run_cli(["list", "--algorithm", "test_fixmatch_sharpen_aux"], capsys)
    assert code == 0 and "test_sharpen" in out_text and "algorithm.refiner.temperature" in out_text
    assert "algorithm.aux_head.weight" in out_text


def test_an_unknown_part_is_a_one_line_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"'algorithm.refiner.name': unknown pseudo-label refiner 'nope'"):
        load_config(None, ["algorithm.name=fixmatch", "algorithm.refiner=nope"])
    with pytest.raises(ConfigError, match=r"unknown config key 'algorithm.aux_head.weight'"):
        load_config(None, ["algorithm.name=fixmatch", "algorithm.aux_head.weight=1"])


def test_contract_defaults_and_their_errors():
    with pytest.raises(ValueError, match="weak_pass must be 'joint' or 'no_grad', got 'late'"):
        ViewSpec(weak_pass="late")
    assert ViewSpec(weak_pass="no_grad").weak_pass == "no_grad"
    config = tiny_config(algorithm="supervised")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    method = trainer.algorithm
    with pytest.raises(ValueError, match=r"Supervised has no state but the checkpoint holds \['bank'\]"):
        method.load_state_dict({"bank": 1})
    method.load_state_dict({})
    assert method.state_dict() == {} and method.periodic() == [] and method.reported_head == "main"
    fresh = type(method)(config.algorithm, method.context)
    assert fresh.ema_model is None  # attached by the engine only (as method.ema_model is above)
    assert method.ema_model is trainer.ema.model
    assert method.on_generation_end(0, None) is None and type(method).generations(config.algorithm) == 1
    logits = {"main": torch.zeros(2, 10)}
    assert method.evaluation_logits(logits) is logits
    from cissl.algorithms import Algorithm

    with pytest.raises(NotImplementedError, match="Bare must implement step"):
        type("Bare", (Algorithm,), {})(config.algorithm, method.context).step(None, None, 0)
    with pytest.raises(NotImplementedError, match="Refine must implement refine"):
        type("Refine", (PseudoLabelRefiner,), {})(None, method.context).refine(None, None, None, 0)
    with pytest.raises(NotImplementedError, match="Head must implement loss"):
        type("Head", (AuxiliaryHead,), {})(None, method.context).loss(None, None, None, None, 0)
    assert PseudoLabelRefiner(None, method.context).loss(None, None, None, None, 0) == (None, {})


def test_step_output_of_the_engine_is_the_methods():
    config = tiny_config(algorithm="supervised_la")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    out = trainer.train_step()
    assert isinstance(out, StepOutput) and set(out.metrics) == {"loss_x"} and trainer.iteration == 1


class RollSharpen(Sharpen):
    """Sharpened and rolled by one class: the labels move to the next class, the confidences grow."""

    def refine(self, probs, views, batch, iteration):
        return super().refine(probs, views, batch, iteration).roll(1, dims=1)


class RollSharpenLabelsOnly(RollSharpen):
    masks_refined = False


@pytest.mark.parametrize("refiner", [RollSharpen, RollSharpenLabelsOnly])
def test_a_refiner_sets_the_labels_and_the_mask_unless_it_masks_on_the_raw_probabilities(registered, refiner):
    registered(REFINERS, "test_roll", SharpenConfig, refiner)
    plain = tiny_config("algorithm.threshold=0.25", algorithm="fixmatch")
    refined = tiny_config("algorithm.threshold=0.25", "algorithm.refiner=test_roll", algorithm="fixmatch")
    a, b = (Trainer.from_config(c, prepare_data(c, torch.device("cpu"))) for c in (plain, refined))
    base, out = a.train_step(), b.train_step()  # the same network and batch at step 0
    assert torch.equal(out.pseudo_labels, (base.pseudo_labels + 1) % 10)
    if refiner.masks_refined:  # sharper: at least the images plain FixMatch keeps, and more here
        assert bool((out.mask >= base.mask).all()) and out.mask.sum() > base.mask.sum()
        assert out.metrics["confidence"] > base.metrics["confidence"]
    else:
        assert torch.equal(out.mask, base.mask) and torch.equal(out.metrics["confidence"], base.metrics["confidence"])


@pytest.mark.parametrize("overrides,message", [
    (["algorithm.name=fixmatch", "algorithm.refiner=[darp,daso]"],
     "config key 'algorithm.refiner': one pseudo-label refiner per run"),
    (["algorithm.name=fixmatch", "algorithm.aux_head=[abc,abc]"],
     "config key 'algorithm.aux_head': one auxiliary head"),
    (["algorithm.name=semi", "algorithm.refiner=darp"], "unknown config key 'algorithm.refiner'"),
    (["algorithm.name=fixmatch_daso", "algorithm.refiner.name=darp", "algorithm.refiner.queue_size=8"],
     "unknown config key 'algorithm.refiner.queue_size'"),
])
def test_bad_combinations_fail_up_front_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


class Recorder(Hooks):
    def __init__(self):
        self.calls = []

    def after_step(self, iteration):
        self.calls.append(("step", iteration))

    def periodic(self):
        return [Periodic(2, lambda t: self.calls.append(("own", t)))]

    def on_epoch_end(self, epoch):
        self.calls.append(("epoch", epoch))


def test_run_hooks_with_one_step_epochs_and_the_callers_periodic_list():
    """Epochs of one step: every step ends epoch t (an int); the caller's list replaces part.periodic()."""
    part = Recorder()
    kept = [Periodic(3, lambda t: part.calls.append(("kept", t)))]
    for t in range(3):
        run_hooks(part, t, 1, kept)
    assert part.calls == [("step", 0), ("epoch", 0), ("step", 1), ("epoch", 1), ("step", 2), ("kept", 2), ("epoch", 2)]
    assert all(type(value) is int for _, value in part.calls)
    part.calls.clear()
    run_hooks(part, 1, 4)  # no list: the part's own hooks
    assert part.calls == [("step", 1), ("own", 1)]


def test_every_method_lists_its_keys_even_one_that_needs_a_parent_run(capsys):
    """`cissl list --algorithm NAME` shows the keys of every registered method, including cRT, whose
    runs need train.init_from (a run's config check, not the listing's)."""
    for name in ALGORITHMS.names():
        code, out_text, _ = run_cli(["list", "--algorithm", name], capsys)
        assert code == 0 and f"algorithm.* keys of {name}:" in out_text, name
    code, out_text, _ = run_cli(["list", "--algorithm", "crt"], capsys)
    assert "algorithm.sampler_beta" in out_text
    general = out_text.split("\nalgorithm.* keys of crt:")[0]  # the method's name among the general keys
    assert re.search(r"^  algorithm\.name +fixmatch +the method \(one of: acr, ", general, re.M)
    code, out_text, err = run_cli(["list", "--algorithm", "fixmach"], capsys)  # nothing listed before the error
    assert (code, out_text) == (2, "") and err.startswith("cissl: error: config key 'algorithm.name': unknown "
                                                          "algorithm 'fixmach'; allowed: acr, ")


def test_a_name_registered_twice_is_refused_and_the_first_kept():
    """A second method under a taken name (a plugin's typo, say) fails at import, not by replacing it."""
    original = ALGORITHMS.entry("fixmatch").target
    with pytest.raises(ValueError, match="algorithm 'fixmatch' registered twice"):
        ALGORITHMS.register("fixmatch", FixMatchConfig)(OneStrongView)
    assert ALGORITHMS.entry("fixmatch").target is original
