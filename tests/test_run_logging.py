"""Run logging, line by line: the console's progress, evaluation and generation lines (speed and ETA from
a fake clock), the records of metrics.jsonl, and the metric window the step metrics are averaged in."""

import io
import re

import pytest
import torch
from helpers import logged_records

from cissl.engine import logging as run_logging
from cissl.engine.logging import MetricWindow, RunLogger, format_duration
from cissl.errors import ConfigError


@pytest.mark.parametrize("seconds, text", [(-5, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (61, "1m01s"),
                                           (3599, "59m59s"), (3600, "1h00m"), (3661, "1h01m"), (90061, "25h01m")])
def test_durations_read_as_hours_minutes_or_seconds(seconds, text):
    assert format_duration(seconds) == text


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(run_logging.time, "perf_counter", clock)
    return clock


def test_a_progress_line_gives_the_speed_since_the_start_and_the_time_left(tmp_path, clock):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 1000, stream=stream)
    clock.now += 100.0  # building the data and the model: not training time
    logger.start(200)  # a resumed run: the speed counts the iterations and the seconds since its start
    clock.now += 40.0
    logger.log_train(300, {"loss": 1.23456, "mask_rate": 0.25})
    clock.now += 280.0
    logger.log_train(1000, {"loss": 0.5, "mask_rate": 1.0})  # the last step: 100 %, nothing left
    logger.close()
    assert stream.getvalue() == ("[cissl] it 300/1000 (30%) loss 1.235 mask_rate 0.25 | 2.50 it/s | ETA 4m40s\n"
                                 "[cissl] it 1000/1000 (100%) loss 0.5 mask_rate 1 | 2.50 it/s | ETA 0s\n")
    assert logged_records(tmp_path) == [{"kind": "train", "iteration": 300, "loss": 1.23456, "mask_rate": 0.25,
                                         "it_per_s": 2.5},
                                        {"kind": "train", "iteration": 1000, "loss": 0.5, "mask_rate": 1.0,
                                         "it_per_s": 2.5}]


def test_a_line_at_the_start_instant_has_no_speed(tmp_path, clock):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 10, stream=stream)
    logger.log_train(0, {"loss": 2.0})
    logger.close()
    assert stream.getvalue() == "[cissl] it 0/10 (0%) loss 2 | 0.00 it/s | ETA 0s\n"
    assert logged_records(tmp_path)[0]["it_per_s"] == 0.0


def test_a_logger_never_started_counts_from_iteration_0(tmp_path, clock):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 10, stream=stream)
    clock.now += 2.0
    logger.log_train(4, {"loss": 1.0})
    logger.close()
    assert stream.getvalue() == "[cissl] it 4/10 (40%) loss 1 | 2.00 it/s | ETA 3s\n"


@pytest.mark.parametrize("seconds, iterations, line", [
    (0.5, 10, "20.00 it/s | ETA 49s"),      # a window under a second still has its speed
    (250.0, 100, "0.40 it/s | ETA 37m30s"),  # under one step a second (a paper-batch run on a CPU): its ETA
])
def test_speed_and_time_left_of_short_windows_and_slow_runs(tmp_path, clock, seconds, iterations, line):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 1000, stream=stream)
    logger.start(0)
    clock.now += seconds
    logger.log_train(iterations, {"loss": 1.0})
    logger.close()
    assert stream.getvalue().endswith(f"| {line}\n")


def test_evaluation_and_generation_lines_and_records(tmp_path, clock):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 10, stream=stream)
    logger.log_eval({"iteration": 5, "test": {"main": {"top1": 0.8123, "balanced_accuracy": 0.5},
                                              "aux": {"top1": 0.7, "balanced_accuracy": 0.65432}}})
    logger.log_generation({"generation": 1, "iteration": 6, "added": 40, "added_correct": 30, "seconds": 1.25})
    logger.log_generation({"generation": 2, "iteration": 8, "added": 0, "added_correct": 0, "seconds": 2.0})
    logger.log_generation({"generation": 3, "iteration": 9, "added": 5, "seconds": 0.5})  # labels unknown
    logger.close()
    assert stream.getvalue().splitlines() == [
        "[cissl] eval it 5: main top1 81.23% bal 50.00% | aux top1 70.00% bal 65.43%",
        "[cissl] generation 1 ended at iteration 6: 40 pseudo-labeled images join the labeled set, 30 (75.0 %) "
        "with their true label (1.2 s)",
        "[cissl] generation 2 ended at iteration 8: 0 pseudo-labeled images join the labeled set (2.0 s)",
        "[cissl] generation 3 ended at iteration 9: 5 pseudo-labeled images join the labeled set (0.5 s)"]
    assert [r["kind"] for r in logged_records(tmp_path)] == ["eval", "generation", "generation", "generation"]
    assert logged_records(tmp_path)[0]["test"]["aux"]["balanced_accuracy"] == 0.65432


def test_quiet_writes_the_records_but_prints_nothing(tmp_path, clock):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 10, stream=stream, quiet=True)
    logger.message("hello")
    logger.log_train(1, {"loss": 1.0})
    logger.log_eval({"iteration": 1, "test": {"main": {"top1": 0.1, "balanced_accuracy": 0.1}}})
    logger.close()
    assert stream.getvalue() == "" and len(logged_records(tmp_path)) == 2


def test_a_logger_appends_to_the_records_of_a_resumed_run(tmp_path, clock):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "iteration": 1}\n')
    logger = RunLogger(tmp_path, 10, stream=io.StringIO())
    logger.log_train(2, {"loss": 1.0})
    assert len(logged_records(tmp_path)) == 2  # flushed at once: a crash loses no written record
    logger.close()


def test_the_window_averages_tensors_and_numbers_and_restarts():
    window = MetricWindow(torch.device("cpu"))
    assert window.flush() is None
    window.add({"loss": torch.tensor(1.0, dtype=torch.float64), "mask": 0.5})
    window.add({"loss": torch.tensor(3.0), "mask": 1})
    assert isinstance(window.sums["loss"], torch.Tensor) and window.sums["loss"].dtype == torch.float32
    assert isinstance(window.sums["mask"], float)
    assert window.flush() == {"loss": 2.0, "mask": 0.75}
    assert window.flush() is None and window.sums == {} and window.steps == 0


def test_a_window_restored_from_its_state_gives_the_same_means():
    window = MetricWindow(torch.device("cpu"))
    window.add({"loss": torch.tensor(2.0), "mask": 0.25})
    state = window.state_dict()
    assert state == {"sums": {"loss": torch.tensor(2.0), "mask": 0.25}, "steps": 1}
    restored = MetricWindow(torch.device("cpu"))
    restored.load_state_dict(state)
    for w in (window, restored):
        w.add({"loss": torch.tensor(4.0), "mask": 0.75})
    assert restored.flush() == window.flush() == {"loss": 3.0, "mask": 0.5}


def test_averaging_over_one_rank_keeps_the_sums_and_their_kinds():
    window = MetricWindow(torch.device("cpu"))
    window.add({"loss": torch.tensor(2.0), "mask": 0.5})
    window.average_over_ranks()
    assert isinstance(window.sums["loss"], torch.Tensor) and isinstance(window.sums["mask"], float)
    assert window.flush() == {"loss": 2.0, "mask": 0.5}


@pytest.fixture
def summary_writers(monkeypatch):
    """A stand-in for torch.utils.tensorboard: the list of the SummaryWriters made, each keeping its scalars."""
    import sys
    import types

    writers = []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.log_dir, self.scalars, self.closed = log_dir, [], False
            writers.append(self)

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    return writers


def test_tensorboard_gets_each_train_and_evaluation_scalar_at_its_iteration(tmp_path, clock, summary_writers):
    """train.tensorboard: the writer logs into RUN/tensorboard, train/KEY for each step metric,
    SPLIT/HEAD/KEY for each evaluation metric, and is closed with the logger."""
    writers = summary_writers
    logger = RunLogger(tmp_path, 10, tensorboard=True, quiet=True)
    logger.log_train(2, {"loss": 1.5, "mask_rate": 0.25})
    metrics = {"top1": 0.5, "balanced_accuracy": 0.25}
    logger.log_eval({"iteration": 4, "test": {"main": metrics, "balanced": {"top1": 0.75, "balanced_accuracy": 0.5}},
                     "val": {"main": metrics}})
    logger.log_eval({"iteration": 6, "test": {"main": metrics}})  # a run without a validation split
    (writer,) = writers
    assert writer.log_dir == str(tmp_path / "tensorboard") and not writer.closed
    logger.close()
    assert writer.closed and writer.scalars == [
        ("train/loss", 1.5, 2), ("train/mask_rate", 0.25, 2), ("test/main/top1", 0.5, 4),
        ("test/main/balanced_accuracy", 0.25, 4), ("test/balanced/top1", 0.75, 4),
        ("test/balanced/balanced_accuracy", 0.5, 4), ("val/main/top1", 0.5, 4),
        ("val/main/balanced_accuracy", 0.25, 4),
        ("test/main/top1", 0.5, 6), ("test/main/balanced_accuracy", 0.25, 6)]


def test_the_rich_bar_shows_the_progress_prints_messages_above_it_and_its_absence_names_the_extra(
        tmp_path, monkeypatch, capsys):
    pytest.importorskip("rich")
    from rich.console import Console

    logger = RunLogger(tmp_path, 10, progress="rich")
    logger.message("a [bold]message[/bold]")  # printed as it is: no markup
    logger.close()
    assert "[cissl] a [bold]message[/bold]" in capsys.readouterr().out
    bar = RunLogger(tmp_path, 10, progress="rich")  # the bar shows the iteration, the loss and the speed
    drawn = Console(file=io.StringIO(), width=100, record=True, color_system=None)
    drawn.print(bar.bar.get_renderable())
    assert drawn.export_text().startswith("training ")  # before the first step's line
    bar.log_train(4, {"mask_rate": 0.5, "loss": 1.23456})
    task = bar.bar.tasks[0]
    drawn.print(bar.bar.get_renderable())
    bar.close()
    assert (task.completed, task.total) == (4, 10)
    assert task.description.startswith("loss 1.235 | ") and task.description.endswith(" it/s")
    # its columns: that description, the bar, the count and the time left
    assert re.fullmatch(r"loss 1\.235 \| \S+ it/s [━╸]+ +4/10 (-:--:--|\d+:\d\d:\d\d)\n", drawn.export_text())
    monkeypatch.setitem(__import__("sys").modules, "rich.progress", None)
    with pytest.raises(ConfigError, match=r"^config key 'train.progress': 'rich' needs the rich package; "
                                          r"pip install 'cissl\[progress\]'$"):
        RunLogger(tmp_path, 10, progress="rich")
    RunLogger(tmp_path, 10, progress="rich", quiet=True).close()  # quiet: no bar, so rich is not needed


def test_a_run_logs_to_tensorboard_and_draws_the_rich_bar_as_its_config_asks(tmp_path, summary_writers, capsys):
    """start_run hands the logger the config's train.tensorboard and train.progress."""
    pytest.importorskip("rich")
    from helpers import tiny_config

    from cissl.engine.run import start_run

    start_run(tiny_config("train.tensorboard=true", "train.progress=rich", "train.iterations=2", "train.eval_every=2",
                          "train.checkpoint_every=2", "train.report_last=1"), tmp_path / "run")
    (writer,) = summary_writers
    assert writer.log_dir == str(tmp_path / "run/tensorboard") and writer.closed
    assert {(tag, step) for tag, _, step in writer.scalars} >= {("train/loss", 2), ("test/main/top1", 2)}
    assert re.search(r" [━╸]+ 2/2 ", capsys.readouterr().out)  # the bar's last frame
