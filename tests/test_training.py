import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import CONFIGS, run_cli
from helpers import logged_records, tiny_config

from cissl.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.diagnostics import PseudoLabelStats
from cissl.engine.precision import ComputePolicy
from cissl.engine.run import resume_run, start_run
from cissl.engine.stop import TrainingStopped
from cissl.engine.trainer import Trainer
from cissl.errors import CheckpointError
from cissl.evaluation.evaluate import brief, evaluate_model, predict, predict_with_features
from cissl.models import ModelOutput

RESULT_KEYS = {"top1", "balanced_accuracy", "per_class_accuracy", "many_accuracy", "medium_accuracy",
               "few_accuracy", "geometric_mean", "confusion_matrix", "median_last_top1", "mean_last_top1",
               "best_on_test_top1", "heads", "reported_head"}


def assert_same_state(a: dict, b: dict, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            if key == "elapsed":
                continue
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, str) and path.endswith("history"):
        strip = [{k: v for k, v in r.items()} for r in json.loads(a)]
        assert strip == json.loads(b), path
    else:
        assert a == b, path


SHORT_DARP = ("algorithm.refiner.warmup_fraction=0.25", "algorithm.refiner.period=2")
SHORT_DASO = ("algorithm.refiner.pretrain_fraction=0.25", "algorithm.refiner.dist_update_period=3")


EPOCHS_OF_4 = ("train.epoch_length=4",)  # pool predictions at steps 4, 8 and 12, around the checkpoint at 6


@pytest.mark.parametrize("algorithm,overrides", [("fixmatch", ()), ("supervised_la", ()),
                                                 ("fixmatch_darp", SHORT_DARP), ("fixmatch_abc_daso", SHORT_DASO),
                                                 ("fixmatch_debiaspl", ()), ("fixmatch_saw", EPOCHS_OF_4),
                                                 ("fixmatch_adsh", EPOCHS_OF_4),
                                                 ("fixmatch_tras", ("algorithm.warmup_epochs=0",))])
def test_resume_continues_bit_for_bit(tmp_path, algorithm, overrides):
    """The method's state (DARP's pool labels, DASO's queue and distribution, ABC's generator, DebiasPL's
    class-frequency estimate, SAW's weights and ADSH's thresholds from the epoch's pool predictions) is
    checkpointed."""
    config = tiny_config("train.iterations=12", "train.checkpoint_every=6", "train.eval_every=6",
                         "train.log_every=4", "train.keep_checkpoints=3", *overrides, algorithm=algorithm)
    straight = tmp_path / "straight"
    start_run(config, straight, quiet=True)
    reference = load_checkpoint(straight / "checkpoints" / "ckpt_00000012.pt")

    interrupted = tmp_path / "interrupted"
    start_run(config, interrupted, quiet=True)
    (interrupted / "checkpoints" / "ckpt_00000012.pt").unlink()  # as if killed after iteration 6
    (interrupted / "results.json").unlink()
    resume_run(interrupted, quiet=True)
    resumed = load_checkpoint(interrupted / "checkpoints" / "ckpt_00000012.pt")
    assert_same_state(reference, resumed)
    lines = logged_records(interrupted)
    assert [r["iteration"] for r in lines if r["kind"] == "eval"] == [6, 12]  # no duplicated records


def test_a_checkpoint_from_a_gpu_ddp_or_an_earlier_release_resumes_as_if_written_here(tmp_path):
    """A GPU run's checkpoints carry the CUDA generator's state besides the CPU one: a CPU resume leaves it.
    One written by 2 processes resumes in one, with a note. Version-2 checkpoints written before the
    skipped-step count (9c0d650) and the run's environments (18fe5b4) were recorded lack those keys: they
    resume with none skipped and this machine as the first."""
    config = tiny_config("train.iterations=12", "train.checkpoint_every=6", "train.eval_every=6")
    start_run(config, tmp_path / "straight", quiet=True)
    run = tmp_path / "other"
    start_run(config, run, quiet=True)
    (run / "checkpoints/ckpt_00000012.pt").unlink()
    (run / "results.json").unlink()
    middle = run / "checkpoints/ckpt_00000006.pt"
    state = load_checkpoint(middle)
    assert state["world_size"] == 1 and "cuda_rng" not in state  # what this one-process CPU run wrote
    state["cuda_rng"] = torch.zeros(16, dtype=torch.uint8)  # what torch.cuda.get_rng_state() returns
    state["world_size"] = 2
    del state["skipped_steps"], state["environments"]
    torch.save(state, middle)
    said = io.StringIO()
    resume_run(run, stream=said)
    lines = said.getvalue().splitlines()
    assert lines[0] == f"[cissl] resumed {run} from ckpt_00000006.pt at iteration 6"
    assert lines[1].startswith("[cissl] note: the checkpoint was written by 2 process(es), 1 continue it: ")
    assert_same_state(load_checkpoint(tmp_path / "straight/checkpoints/ckpt_00000012.pt"),
                      load_checkpoint(run / "checkpoints/ckpt_00000012.pt"))
    (run / "checkpoints/ckpt_00000012.pt").unlink()
    (run / "results.json").unlink()
    del state["world_size"]  # written before the number of processes was recorded: by one
    torch.save(state, middle)
    said = io.StringIO()
    resume_run(run, stream=said)
    assert "process(es)" not in said.getvalue()


def test_train_writes_run_directory_and_results(tmp_path, capsys):
    out = tmp_path / "run"
    started = time.perf_counter()
    code, stdout, _ = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", "--out", out, "--quiet",
                               "model.depth=10", "model.widen=1", "train.iterations=10", "train.eval_every=2",
                               "train.checkpoint_every=5", "train.report_last=2"], capsys)
    took = time.perf_counter() - started
    assert code == 0 and "top-1" in stdout and "balanced accuracy" in stdout
    for name in ("config.yaml", "split.json", "metrics.jsonl", "results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert len(results["confusion_matrix"]) == 10 and results["last_k"] == 2
    assert results["iterations"] == 10 and results["device"] == "cpu" and 0 < results["wall_time_s"] < took
    evaluations = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert [r["iteration"] for r in evaluations] == [2, 4, 6, 8, 10]
    tail = [r["test"]["main"]["top1"] for r in evaluations[-2:]]  # the window is the run's tail
    assert results["mean_last_top1"] == pytest.approx(sum(tail) / 2)
    assert results["best_on_test_top1"]["note"].startswith("selected on the test set")

    # re-evaluation from the checkpoint reproduces the final numbers
    before = dict(results)
    code, stdout, _ = run_cli(["evaluate", out], capsys)
    after = json.loads((out / "results.json").read_text())
    assert code == 0 and after["top1"] == before["top1"] and after["confusion_matrix"] == before["confusion_matrix"]

    # a second train into the same directory refuses instead of overwriting
    code, _, err = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", "--out", out], capsys)
    assert code == 2 and "already holds a run" in err


def test_the_last_steps_evaluation_is_the_final_one_made_in_one_pass(tmp_path, monkeypatch):
    """At the last iteration the EMA model is evaluated once, in full: metrics.jsonl's last record is its
    brief form and results.json its full form (no second pass over the pools); a finished run resumed
    without its results.json evaluates afresh and writes the same numbers."""
    import cissl.engine.trainer as trainer

    passes = []

    def counted(model, algorithm, data, policy, batch_size, full=False):
        passes.append(full)
        return evaluate_model(model, algorithm, data, policy, batch_size, full)

    monkeypatch.setattr(trainer, "evaluate_model", counted)
    config = tiny_config("train.iterations=5", "train.eval_every=2", "train.checkpoint_every=5",
                         "data.val_per_class=3")
    results = start_run(config, tmp_path / "run", quiet=True)
    assert passes == [False, False, True]  # iterations 2, 4 and the last, 5
    last = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "eval"][-1]
    assert last["iteration"] == 5 and set(last["test"]["main"]) == {"top1", "balanced_accuracy"}
    assert last["test"]["main"]["top1"] == results["top1"] and last["val"]["main"] == {
        k: results["val"]["main"][k] for k in ("top1", "balanced_accuracy")}
    assert "confusion_matrix" in results["val"]["main"]

    (tmp_path / "run" / "results.json").unlink()
    passes.clear()
    again = resume_run(tmp_path / "run", quiet=True)
    assert passes == [True] and again["confusion_matrix"] == results["confusion_matrix"]
    assert again["val"] == results["val"]


def test_a_trainer_without_a_run_directory_trains_to_its_results_and_writes_nothing(tmp_path, monkeypatch):
    """The run directory is optional (the throughput bench steps a Trainer without one): its checkpoint
    iterations check the weights and write nothing, and fit() returns the results without writing them."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    results = trainer.fit()
    assert results["iterations"] == 4 and trainer.save() is None and list(tmp_path.iterdir()) == []


def test_a_trainer_without_a_run_directory_stopped_by_a_signal_says_nothing_was_saved(tmp_path, monkeypatch):
    """A signal stops such a trainer at the step's end, as it stops a run; the message cannot name a checkpoint
    or a folder to resume (it said `--resume None`)."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config("train.iterations=6")
    trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
    step = trainer.train_step

    def step_then_signal():
        out = step()
        if trainer.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # StopSignals holds it until the step's end
        return out

    monkeypatch.setattr(trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.fit()
    assert str(stopped.value) == "SIGTERM: stopped after iteration 2, nothing saved (the trainer has no run directory)"
    assert trainer.iteration == 2 and list(tmp_path.iterdir()) == []


def test_brief_keeps_each_heads_periodic_numbers_and_the_other_entries():
    record = {"iteration": 7, "test": {"main": {"top1": 0.5, "balanced_accuracy": 0.4, "geometric_mean": 0.3}},
              "val": {"main": {"top1": 0.6, "balanced_accuracy": 0.55, "confusion_matrix": [[1]]},
                      "aux": {"top1": 0.1, "balanced_accuracy": 0.2, "many_accuracy": 0.9}}}
    assert brief(record) == {"iteration": 7, "test": {"main": {"top1": 0.5, "balanced_accuracy": 0.4}},
                             "val": {"main": {"top1": 0.6, "balanced_accuracy": 0.55},
                                     "aux": {"top1": 0.1, "balanced_accuracy": 0.2}}}
    assert record["test"]["main"]["geometric_mean"] == 0.3  # the full record is left as it was


def test_scored_logits_are_brief_unless_the_full_report_is_asked_for_and_labels_may_be_numpy():
    from cissl.evaluation.evaluate import evaluate_logits

    logits = {"main": torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), "aux": torch.tensor([[0.0, 1.0]] * 3)}
    for labels in (torch.tensor([0, 1, 1]), np.array([0, 1, 1])):
        scored = evaluate_logits(logits, labels, 2, (2, 1))
        assert scored == {"main": {"top1": 2 / 3, "balanced_accuracy": 0.75},
                          "aux": {"top1": 2 / 3, "balanced_accuracy": 0.5}}
    full = evaluate_logits(logits, np.array([0, 1, 1]), 2, (2, 1), full=True)["main"]
    assert full["top1"] == 2 / 3 and full["confusion_matrix"] == [[1, 0], [1, 1]]


def test_broken_checkpoint_is_a_one_line_error(tmp_path, capsys):
    config = tiny_config("train.iterations=4", "train.checkpoint_every=2")
    start_run(config, tmp_path / "run", quiet=True)
    newest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:1000])
    code, _, err = run_cli(["evaluate", tmp_path / "run"], capsys)
    assert code == 2 and "unreadable" in err and newest.name in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="not a run directory"):
        resume_run(tmp_path / "nothing")


WRITER = textwrap.dedent("""
    import sys, torch
    from cissl.engine.checkpoint import save_checkpoint
    big = torch.randn(8_000_000)  # 32 MB per checkpoint: most of the loop's time is spent writing
    i = 0
    while True:
        i += 1
        save_checkpoint({"iteration": i, "model": {"w": big + i}}, sys.argv[1], i, keep=2)
""")


def test_sigkill_during_checkpoint_write_keeps_last_good_checkpoint(tmp_path):
    killed_mid_write = 0
    for attempt in range(6):
        directory = tmp_path / f"checkpoints{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)])
        deadline = time.time() + 60
        while len(list_checkpoints(directory)) < 2 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.013 * attempt)
        writing = any(directory.glob(".ckpt_*.tmp*"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_write += writing and any(directory.glob(".ckpt_*.tmp*"))
        state = load_checkpoint(latest_checkpoint(directory))  # the newest complete one always loads
        assert torch.equal(state["model"]["w"][:3], state["model"]["w"][:3])
        assert len(list_checkpoints(directory)) <= 3
    assert killed_mid_write >= 1, "no kill landed during a write; the test did not exercise the crash"


@pytest.mark.slow
def test_fixmatch_learns_digits_well_above_chance(tmp_path):
    config = tiny_config("model.widen=2", "train.iterations=400", "train.eval_every=400",
                         "train.checkpoint_every=400", "train.ema_decay=0.99", algorithm="fixmatch")
    results = start_run(config, tmp_path / "run", quiet=True)
    assert results["top1"] > 0.6, results["top1"]  # chance is 0.1
    assert results["pseudo_labels"]["mask_rate"] > 0.3


def test_each_evaluations_pseudo_label_statistics_cover_the_steps_since_the_one_before(tmp_path, monkeypatch):
    """With eval_every=2 every evaluation scores the pseudo-labels of two steps' unlabeled rows (B * mu each),
    not every step so far."""
    seen = []
    summary = PseudoLabelStats.summary

    def counted_summary(self):
        seen.append(int(self.counts["seen"].sum()))
        return summary(self)
    monkeypatch.setattr(PseudoLabelStats, "summary", counted_summary)
    config = tiny_config("train.iterations=6", "train.eval_every=2", "train.checkpoint_every=6", algorithm="fixmatch")
    results = start_run(config, tmp_path / "run", quiet=True)
    rows = 2 * config.train.batch_size * config.train.mu
    assert seen == [rows, rows, rows]
    evaluations = [r for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())
                   if r["kind"] == "eval"]
    assert results["pseudo_labels"] == evaluations[-1]["pseudo_labels"] != evaluations[0]["pseudo_labels"]


class _Scaled(torch.nn.Module):
    """A 'network' whose logits are a fixed linear map of its [0, 1] input's pixels, in bf16 under autocast."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        features = x.flatten(1)
        return ModelOutput(features, {"main": self.linear(features), "aux": -self.linear(features)})


def test_predictions_take_uint8_images_to_0_1_in_eval_mode_in_float32_and_leave_the_mode_as_it_was():
    model = _Scaled()
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    expected = model.linear(images.float().flatten(1) / 255.0)
    for training in (True, False):
        model.train(training)
        modes = []
        handle = model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
        logits, features = predict_with_features(model, images, 2, ComputePolicy(torch.device("cpu"), "fp32", False))
        handle.remove()
        assert modes == [False, False, False] and model.training is training  # 3 batches of at most 2
        assert torch.allclose(logits["main"], expected) and torch.allclose(logits["aux"], -expected)
        assert torch.equal(features, images.float().flatten(1) / 255.0)
    logits, _ = predict_with_features(model, images, 8, ComputePolicy(torch.device("cpu"), "bf16", False))
    assert logits["main"].dtype == torch.float32 and torch.allclose(logits["main"], expected, atol=0.05)
    logits, features = predict_with_features(model, images[:0], 8, ComputePolicy(torch.device("cpu"), "fp32", False))
    assert logits["main"].shape == (0, 3) and features.shape == (0, 4)  # an empty pool keeps its shapes


class _Untouchable:
    def float(self):
        raise AssertionError("predict copied the embeddings")


class _ScaledWithoutEmbeddings(_Scaled):
    def forward(self, x):
        out = super().forward(x)
        return ModelOutput(_Untouchable(), out.logits)


def test_predict_gives_every_heads_logits_and_never_copies_the_embeddings():
    """predict serves every evaluation, `cissl predict` and the distribution estimate's pass over the unlabeled
    pool: ResNet-50's 2048-float embedding of each image would be copied to the CPU and gathered for nothing."""
    images = torch.randint(0, 256, (5, 1, 2, 2), dtype=torch.uint8)
    model = _ScaledWithoutEmbeddings()
    logits = predict(model, images, 2, ComputePolicy(torch.device("cpu"), "fp32", False))
    expected = model.linear(images.float().flatten(1) / 255.0)
    assert set(logits) == {"main", "aux"}
    assert torch.allclose(logits["main"], expected) and torch.allclose(logits["aux"], -expected)
    with pytest.raises(AssertionError, match="predict copied the embeddings"):  # the stand-in does fail if read
        predict_with_features(model, images, 2, ComputePolicy(torch.device("cpu"), "fp32", False))


def test_periodic_evaluation_is_brief_and_a_run_evaluated_on_val_scores_it_once_under_test():
    for overrides, splits in ((["data.val_per_class=2"], {"test", "val"}),
                              (["data.val_per_class=2", "train.evaluate_on=val"], {"test"})):
        config = tiny_config(*overrides)
        trainer = Trainer.from_config(config, prepare_data(config, torch.device("cpu")))
        record = trainer.evaluate()
        assert set(record) == {"iteration"} | splits
        assert all(set(report) == {"top1", "balanced_accuracy"}
                   for split in splits for report in record[split].values())
        full = trainer.evaluate(full=True)
        assert "confusion_matrix" in full["test"]["main"]
        if splits == {"test"}:
            assert len(trainer.data.test) == 2 * 10  # the validation split: 2 images of each of 10 classes


def test_a_run_starts_by_saying_what_it_trains_on(tmp_path):
    """The first console line of a run: the setting, the method, the classes, the size of each pool, the
    labeled counts per class and the device (under torchrun the DDP part follows, which test_distributed sees)."""
    import io

    config = tiny_config("train.iterations=2", "train.eval_every=2", "name=my/setting", algorithm="fixmatch")
    data = prepare_data(config, torch.device("cpu"))
    stream = io.StringIO()
    start_run(config, tmp_path / "run", stream=stream)
    assert stream.getvalue().splitlines()[0] == (
        f"[cissl] my/setting: fixmatch, 10 classes, {len(data.labeled)} labeled / {len(data.unlabeled)} unlabeled / "
        f"{len(data.test)} test images, labeled counts {data.split.labeled_counts}, device cpu")
