"""Run logging: the metric window of the training steps, console progress lines, ``metrics.jsonl``,
optional TensorBoard."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from cissl import distributed
from cissl.errors import ConfigError
from cissl.rundir import RunDir, atomic_write_text


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def truncate_jsonl(path: Path, after_iteration: int) -> None:
    """Drop records past ``after_iteration`` (a resumed run rewrites them), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("iteration", 0) <= after_iteration:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricWindow:
    """Sums of the step metrics since the last flush; :meth:`flush` returns their means.

    Tensors stay on their device and host numbers on the host: a copy to the GPU (or a read back)
    per step would synchronise the step with the device. The sums are part of the checkpoint, so a
    resumed run logs the same means.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor | float] = {}
        self.steps = 0

    def add(self, metrics: dict) -> None:
        for key, value in metrics.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0) + value
        self.steps += 1

    def flush(self) -> dict[str, float] | None:
        """Means over the window (None when empty), and a new window."""
        if not self.steps:
            return None
        means = {key: float(value / self.steps) for key, value in self.sums.items()}
        self.sums, self.steps = {}, 0
        return means

    def average_over_ranks(self) -> None:
        """Every rank's sums become the ranks' mean (under DDP, before a checkpoint: the later means
        over ranks are then the same whether the run was resumed or not). Reads the sums back once."""
        means = distributed.mean_over_ranks({key: float(value) for key, value in self.sums.items()})
        self.sums = {key: torch.tensor(means[key], device=self.device) if isinstance(value, torch.Tensor)
                     else means[key] for key, value in self.sums.items()}

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.sums.items()},
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in state["sums"].items()}
        self.steps = int(state["steps"])


def _tensorboard_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("config key 'train.tensorboard': needs the tensorboard package; "
                          "pip install 'cissl[tensorboard]'") from None
    return SummaryWriter


def _rich_progress():
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        raise ConfigError("config key 'train.progress': 'rich' needs the rich package; "
                          "pip install 'cissl[progress]'") from None
    return BarColumn, Progress, TextColumn, TimeRemainingColumn


def check_logging_packages(train_config, quiet: bool) -> None:
    """The packages the logger of a run with this ``train`` section will import, checked before the run
    reads its data or writes anything: one line naming the key and the extra to install."""
    if train_config.tensorboard:
        _tensorboard_writer()
    if train_config.progress == "rich" and not quiet:
        _rich_progress()


class RunLogger:
    """Writes train / eval records to ``metrics.jsonl`` and progress lines to the console."""

    def __init__(self, run_dir: Path | RunDir, total_iterations: int, tensorboard: bool = False, stream=None,
                 quiet: bool = False, progress: str = "plain"):
        run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.path = run_dir.metrics
        self.total = total_iterations
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.writer = None
        if tensorboard:
            self.writer = _tensorboard_writer()(str(run_dir.tensorboard))
        self.bar = None
        if progress == "rich" and not quiet:
            BarColumn, Progress, TextColumn, TimeRemainingColumn = _rich_progress()
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn())
            self.task = self.bar.add_task("training", total=total_iterations)
            self.bar.start()
        self._file = open(self.path, "a", encoding="utf-8")
        self._start_time = time.perf_counter()
        self._start_iteration = 0

    def start(self, iteration: int) -> None:
        self._start_time = time.perf_counter()
        self._start_iteration = iteration

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(f"[cissl] {text}", markup=False, highlight=False)
        else:
            print(f"[cissl] {text}", file=self.stream, flush=True)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_train(self, iteration: int, values: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self._start_time
        done = iteration - self._start_iteration
        speed = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - iteration) / speed if speed > 0 else 0.0
        self._write({"kind": "train", "iteration": iteration, **values, "it_per_s": speed})
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, iteration)
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.update(self.task, completed=iteration,
                            description=f"loss {values.get('loss', 0):.3f} | {speed:.2f} it/s")
            return
        self.message(f"it {iteration}/{self.total} ({100 * iteration / self.total:.0f}%) {shown} | "
                     f"{speed:.2f} it/s | ETA {format_duration(eta)}")

    def log_eval(self, record: dict) -> None:
        self._write({"kind": "eval", **record})
        if self.writer is not None:
            for split in ("test", "val"):
                for head, metrics in record.get(split, {}).items():
                    for key, value in metrics.items():
                        self.writer.add_scalar(f"{split}/{head}/{key}", value, record["iteration"])
        parts = [f"{head} top1 {100 * m['top1']:.2f}% bal {100 * m['balanced_accuracy']:.2f}%"
                 for head, m in record["test"].items()]
        self.message(f"eval it {record['iteration']}: " + " | ".join(parts))

    def log_generation(self, record: dict) -> None:
        """A generation's end (CReST): how many pseudo-labeled images join the labeled set and, where the
        pool's labels are known, how many of them carry their true label."""
        self._write({"kind": "generation", **record})
        added, correct = record["added"], record.get("added_correct")
        precision = "" if correct is None or not added else \
            f", {correct} ({100 * correct / added:.1f} %) with their true label"
        self.message(f"generation {record['generation']} ended at iteration {record['iteration']}: {added} "
                     f"pseudo-labeled images join the labeled set{precision} ({record['seconds']:.1f} s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        self._file.close()
        if self.writer is not None:
            self.writer.close()
