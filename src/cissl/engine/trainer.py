"""The training loop every method shares: same streams, augmentation, optimizer, schedule, EMA.

The trainer never knows which method it runs: it draws a :class:`Batch`, calls
``algorithm.step`` and back-propagates the returned loss. Everything that determines the rest of
a run (parameters, EMA, optimizer, schedule, algorithm state, stream positions, every generator,
evaluation history) is in the checkpoint, so a resumed run continues bit-for-bit on CPU / fp32.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from cissl.algorithms import AlgorithmContext, Batch, build_algorithm
from cissl.algorithms.registry import entry
from cissl.config import Config
from cissl.data.augment import BatchAugment
from cissl.data.augment_graph import GraphedViews
from cissl.data.stream import IndexStream
from cissl.engine.checkpoint import save_checkpoint
from cissl.engine.data import TrainingData
from cissl.engine.diagnostics import PseudoLabelStats
from cissl.engine.ema import EMA
from cissl.engine.logging import RunLogger
from cissl.engine.optim import build_optimizer, build_scheduler
from cissl.errors import CheckpointError, ConfigError
from cissl.evaluation.evaluate import evaluate_logits, predict
from cissl.evaluation.metrics import class_groups
from cissl.models import build_model

CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device': {name} requested but CUDA is not available; "
                          f"use cpu or auto")
    return torch.device(name)


def derive_seed(seed: int, stream: str) -> int:
    """A separate 63-bit seed per named random stream of a run."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def atomic_write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class Trainer:
    def __init__(self, config: Config, data: TrainingData, run_dir: Path, logger: RunLogger | None = None,
                 device: torch.device | None = None):
        self.config = config
        self.data = data
        self.run_dir = Path(run_dir)
        self.device = device or resolve_device(config.train.device)
        tc = config.train
        seed = tc.seed
        self.logger = logger
        algo_entry = entry(config.algorithm.name)
        heads = algo_entry.algorithm_cls.required_heads(config.algorithm)
        if self.device.type == "cuda":  # fixed batch shapes: let cuDNN pick the fastest kernels
            torch.backends.cudnn.benchmark = tc.cudnn_benchmark
        self.model = build_model(config.model, data.channels, data.num_classes, data.mean, data.std,
                                 derive_seed(seed, "model") % (2 ** 31), heads).to(self.device)
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.ema = EMA(self.model, tc.ema_decay)
        if tc.compile:
            self.model.compile_backbone(mode=tc.compile_mode)
        self.context = AlgorithmContext(
            num_classes=data.num_classes, labeled_counts=tuple(data.split.labeled_counts),
            feature_dim=self.model.feature_dim, iterations=tc.iterations, epoch_length=tc.epoch_length,
            device=self.device, seed=derive_seed(seed, "algorithm"))
        self.algorithm = build_algorithm(config.algorithm, self.context)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, tc.iterations)
        self.labeled_stream = IndexStream(len(data.labeled), tc.batch_size, derive_seed(seed, "labeled"))
        self.unlabeled_stream = IndexStream(len(data.unlabeled), tc.batch_size * tc.mu,
                                            derive_seed(seed, "unlabeled"))
        aug = config.augment
        self.augment = BatchAugment(
            data.image_size, aug.crop_padding, aug.padding_mode, aug.randaugment_ops, aug.randaugment_prob,
            aug.cutout, torch.Generator(device=self.device).manual_seed(derive_seed(seed, "augment")),
            self.device)
        # the views: eager, or on CUDA replayed from graphs (bit-identical, far fewer launches)
        self.views = GraphedViews(self.augment) if tc.cuda_graphs and self.device.type == "cuda" else self.augment
        self.pseudo_stats = PseudoLabelStats(data.num_classes, self.device)
        self.iteration = 0
        self.history: list[dict] = []
        self.window: dict[str, torch.Tensor | float] = {}
        self.window_steps = 0
        self.elapsed = 0.0

    # ------------------------------------------------------------------ one step
    def autocast(self):
        if self.config.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=self.memory_format)

    def next_batch(self) -> tuple[Batch, torch.Tensor | None]:
        """Draw and augment one step's batch; returns it with the unlabeled ground truth (diagnostics)."""
        images, labels, _ = self.data.labeled.take(self.labeled_stream.next())
        batch = Batch(x=self._prepare(self.views.weak(images)), y=labels)
        truth = None
        if self.algorithm.uses_unlabeled:
            u_images, truth, positions = self.data.unlabeled.take(self.unlabeled_stream.next())
            batch.u_weak = self._prepare(self.views.weak(u_images))
            views = self.config.train.strong_views
            strong = self.views.strong(u_images.repeat(views, 1, 1, 1))  # independent draws per copy
            batch.u_strong = tuple(self._prepare(view) for view in strong.chunk(views))
            batch.u_index = positions
        return batch, truth

    def train_step(self) -> None:
        t = self.iteration
        batch, truth = self.next_batch()
        self.model.train()
        with self.autocast():
            out = self.algorithm.step(self.model, batch, t)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.algorithm.after_optimizer_step(t)
        self.iteration = t + 1
        metrics = {"loss": out.loss.detach(), **out.metrics}
        for key, value in metrics.items():
            # tensors stay on the device; host numbers stay on the host (a copy to the GPU would
            # synchronise the step with the device)
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.window[key] = self.window.get(key, 0) + value
        self.window_steps += 1
        if truth is not None and out.pseudo_labels is not None and out.mask is not None:
            self.pseudo_stats.update(truth, out.pseudo_labels, out.mask)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, full: bool = False) -> dict:
        model = self.ema.model
        counts = self.data.split.labeled_counts
        record = {"iteration": self.iteration}
        for split_name, pool in (("test", self.data.test), ("val", self.data.val)):
            if pool is None:
                continue
            logits = predict(model, pool.images, self.config.train.eval_batch_size, self.autocast,
                             self.config.train.channels_last)
            record[split_name] = evaluate_logits(logits, pool.labels, self.data.num_classes, counts, full)
        return record

    def _flush_window(self) -> None:
        if not self.window_steps:
            return
        values = {k: float(v / self.window_steps) for k, v in self.window.items()}
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        self.window, self.window_steps = {}, 0
        if self.logger:
            self.logger.log_train(self.iteration, values)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = {
            "version": CHECKPOINT_VERSION,
            "iteration": self.iteration,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "labeled_stream": self.labeled_stream.state_dict(),
            "unlabeled_stream": self.unlabeled_stream.state_dict(),
            "augment": self.augment.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "pseudo_stats": self.pseudo_stats.state_dict(),
            "window": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.window.items()},
            "window_steps": self.window_steps,
            "history": json.dumps(self.history),
            "elapsed": self.elapsed,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.algorithm.load_state_dict(state["algorithm"])
            self.labeled_stream.load_state_dict(state["labeled_stream"])
            self.unlabeled_stream.load_state_dict(state["unlabeled_stream"])
            self.augment.load_state_dict(state["augment"])
            self.pseudo_stats.load_state_dict(state["pseudo_stats"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match this run's config: {exc}") from None
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.window = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in state["window"].items()}
        self.window_steps = int(state["window_steps"])
        self.history = json.loads(state["history"])
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed"])

    def save(self) -> Path:
        return save_checkpoint(self.state_dict(), self.run_dir / "checkpoints", self.iteration,
                               self.config.train.keep_checkpoints)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        tc = self.config.train
        total = tc.iterations
        if self.logger:
            self.logger.start(self.iteration)
        start = time.perf_counter()
        elapsed_before = self.elapsed
        while self.iteration < total:
            self.train_step()
            t = self.iteration
            if t % tc.log_every == 0 or t == total:
                self._flush_window()
            if t % tc.eval_every == 0 or t == total:
                record = self.evaluate()
                if self.algorithm.uses_unlabeled and self.data.unlabeled.labels is not None:
                    record["pseudo_labels"] = self.pseudo_stats.summary()
                    self.pseudo_stats.reset()
                self.history.append(record)
                if self.logger:
                    self.logger.log_eval(record)
            self.elapsed = elapsed_before + time.perf_counter() - start
            if t % tc.checkpoint_every == 0 or t == total:
                self.save()
        results = self.results()
        atomic_write_json(self.run_dir / "results.json", results)
        return results

    def results(self) -> dict:
        """The run's summary (results.json): final EMA metrics of the reported head and every head,
        median / mean of the last ``report_last`` evaluations, best-on-test under its own key."""
        tc = self.config.train
        head = self.algorithm.reported_head
        final = self.evaluate(full=True)
        report = final["test"][head]
        curve = [r["test"][head]["top1"] for r in self.history]
        curve_bal = [r["test"][head]["balanced_accuracy"] for r in self.history]
        last, last_bal = curve[-tc.report_last:], curve_bal[-tc.report_last:]
        best = int(np.argmax(curve)) if curve else None
        results = {
            "setting": self.config.name,
            "algorithm": self.config.algorithm.name,
            "seed": tc.seed,
            "iterations": self.iteration,
            "reported_head": head,
            **report,
            "class_groups": class_groups(self.data.split.labeled_counts),
            "heads": final["test"],
            "last_k": len(last),
            "median_last_top1": statistics.median(last) if last else None,
            "mean_last_top1": statistics.fmean(last) if last else None,
            "median_last_balanced_accuracy": statistics.median(last_bal) if last_bal else None,
            "mean_last_balanced_accuracy": statistics.fmean(last_bal) if last_bal else None,
            "best_on_test_top1": None if best is None else {
                "value": curve[best], "iteration": self.history[best]["iteration"],
                "note": "selected on the test set; not a fair model-selection number"},
            "wall_time_s": self.elapsed,
            "device": str(self.device),
        }
        if "val" in final:
            results["val"] = final["val"]
        pseudo = [r["pseudo_labels"] for r in self.history if "pseudo_labels" in r]
        if pseudo:
            results["pseudo_labels"] = pseudo[-1]
        return results
