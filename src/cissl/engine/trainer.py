"""The training loop every method shares: same streams, augmentation, optimizer, schedule, EMA.

The loop never knows which method it runs: it draws a batch, calls ``algorithm.step`` and
back-propagates the returned loss, then runs the method's hooks (``cissl.algorithms.base``).
Everything that determines the rest of a run (parameters, EMA, optimizer, schedule, the method's
state, stream positions, every generator, the metric window, the evaluation history) is in the
checkpoint, so a resumed run continues bit-for-bit on CPU / fp32.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch

from cissl import distributed
from cissl.algorithms import LabeledPredictions, PoolPredictions, StepOutput, ValidationPredictions
from cissl.algorithms.base import run_hooks
from cissl.config import Config
from cissl.engine.agreement import check_ranks_agree
from cissl.engine.assemble import RunParts, build_training, generation_length, last_generation_start
from cissl.engine.checkpoint import first_line, save_checkpoint
from cissl.engine.data import TrainingData
from cissl.engine.diagnostics import PseudoLabelStats
from cissl.engine.logging import MetricWindow, RunLogger
from cissl.engine.precision import resolve_device
from cissl.engine.replicas import ReplicatedModel, average_buffers
from cissl.engine.stop import StopSignals, TrainingStopped
from cissl.environment import changes, describe_environment
from cissl.errors import CheckpointError, CisslError
from cissl.evaluation.evaluate import brief, evaluate_model, predict, predict_with_features
from cissl.evaluation.summary import summarize_run
from cissl.plugins import plugin_digests
from cissl.rundir import RunDir, atomic_write_json

CHECKPOINT_VERSION = 2


class TrainingDiverged(CisslError):
    """A loss or a weight became non-finite: the run stops, its last good checkpoint kept."""


class Trainer:
    def __init__(self, parts: RunParts, run_dir: RunDir | Path | str | None = None, logger: RunLogger | None = None):
        self.parts = parts
        self.config = parts.config
        self.data = parts.data
        self.device = parts.policy.device
        self.run_dir = None if run_dir is None else (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir))
        self.logger = logger
        self.model, self.ema, self.algorithm = parts.model, parts.ema, parts.algorithm
        self.optimizer, self.batches = parts.optimizer, parts.batches
        self.uses_unlabeled = parts.batches.spec.unlabeled
        self.periodic = self.algorithm.periodic()
        self.pool_each_epoch = type(self.algorithm).pool_each_epoch(self.config.algorithm)
        self.validation_every = type(self.algorithm).validation_every(self.config.algorithm)
        self.stage_iterations = set(self.algorithm.stage_iterations())
        self.frozen_backbone = not type(self.algorithm).trains_backbone(self.config.algorithm)
        self.generation_length = generation_length(self.config)
        self.pseudo_stats = PseudoLabelStats(self.data.num_classes, self.device)
        self.window = MetricWindow(self.device)
        self.iteration = 0
        self.history: list[dict] = []
        self.final_evaluation: dict | None = None  # the last step's full evaluation, reused by results()
        self.elapsed = 0.0
        self.skipped_steps = 0  # steps whose loss was not finite, skipped (train.skip_nonfinite_steps)
        self.parent_algorithm: str | None = None  # the method of the run train.init_from started this one from
        self.environments: list[dict] = []  # where the run has trained, in order (a resume elsewhere adds one)
        self.ranks = distributed.world_size()  # > 1 under torchrun: only rank 0 writes
        self.average_bn = self.ranks > 1 and not self.config.train.sync_batchnorm

    @classmethod
    def from_config(cls, config: Config, data: TrainingData, run_dir=None, logger: RunLogger | None = None,
                    device: torch.device | None = None) -> "Trainer":
        return cls(build_training(config, data, device or resolve_device(config.train.device)), run_dir, logger)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> StepOutput:
        """One step: batch, the method's step, backward, SGD, LR schedule, EMA, the method's hooks."""
        t = self.iteration
        batch, truth = self.batches.next()
        self.model.train()
        if self.frozen_backbone:  # its BN statistics stay those of the run it started from
            self.model.backbone.eval()
        guard = self.config.train.skip_nonfinite_steps
        buffers = [b.detach().clone() for b in self.model.buffers()] if guard else None  # BN statistics
        with self.parts.policy.autocast():
            out = self.algorithm.step(self.parts.step_model, batch, t)
        loss = out.loss
        if isinstance(self.parts.step_model, ReplicatedModel):  # DDP: every head's logits reach the loss
            zero = self.parts.step_model.untouched_heads_term()  # (taken every step: it forgets the outputs)
            loss = loss if zero is None else loss + zero
        self.optimizer.zero_grad(set_to_none=True)
        skip = guard and distributed.agree_any(not bool(torch.isfinite(out.loss.detach())))
        if skip:  # weights, BN statistics and EMA as before the step; the method's state of this step stays
            self.skipped_steps += 1
            for buffer, saved in zip(self.model.buffers(), buffers):
                buffer.copy_(saved)
        else:
            loss.backward()
            self.optimizer.step()
        self.parts.scheduler.step()
        if self.average_bn:
            average_buffers(self.model)
        if not skip:
            self.ema.update(self.model)
        epoch_length = self.config.train.epoch_length
        run_hooks(self.algorithm, t, epoch_length, self.periodic)
        if self.pool_each_epoch and (t + 1) % epoch_length == 0:
            self.algorithm.on_epoch_pool((t + 1) // epoch_length - 1, self.pool_predictions())
        if self.validation_every and (t + 1) % self.validation_every == 0:
            self.algorithm.on_validation(t, self.validation_predictions())
        if t in self.stage_iterations:
            self.start_stage(t)
        self.iteration = t + 1
        if not skip:
            self.window.add({"loss": out.loss.detach(), **out.metrics})
        if truth is not None and out.pseudo_labels is not None and out.mask is not None:  # over the global batch
            self.pseudo_stats.update(*(distributed.gather_rows(t) for t in (truth, out.pseudo_labels, out.mask)))
        return out

    # ------------------------------------------------------------------ generations
    def end_generation(self) -> None:
        """Between generations: the method sees the EMA model's predictions on the unlabeled pool and
        may extend the labeled set; the LR schedule restarts (and the network, if asked)."""
        generation = self.iteration // self.generation_length - 1
        start = time.perf_counter()
        update = self.algorithm.on_generation_end(generation, self.pool_predictions())
        if update is not None:
            self.batches.set_labeled_additions(update.labeled_indices, update.labels, generation + 1)
            if update.reinitialize_model:
                self.parts.reinitialize_model(generation + 1)
        self.parts.restart_schedule()
        if self.logger:
            record = {"iteration": self.iteration, "generation": generation,
                      "added": 0 if update is None else len(update.labels),
                      "seconds": time.perf_counter() - start}
            truth = self.data.unlabeled.labels  # known on the benchmarks, not on a user's own pool
            if update is not None and truth is not None:
                chosen = truth[update.labeled_indices.to(truth.device)].cpu()
                record["added_correct"] = int((chosen == update.labels.cpu()).sum())
            self.logger.log_generation(record)

    def pool_predictions(self, images=None) -> PoolPredictions:
        """The EMA model's logits and embeddings on the whole unlabeled pool, or on ``images`` (eval mode,
        no augmentation)."""
        images = self.data.unlabeled.images if images is None else images
        logits, features = predict_with_features(self.ema.model, images, self.config.train.eval_batch_size,
                                                 self.parts.policy)
        return PoolPredictions(logits, features)

    def start_stage(self, iteration: int) -> None:
        """The method's stage hook (after step ``iteration``, -1: before the first): it sees the EMA
        model's predictions on the labeled images and the pool; the head weights it returns are loaded
        into the network and its EMA."""
        predicted = self.pool_predictions(self.data.labeled.images)
        labeled = LabeledPredictions(predicted.logits, predicted.features, self.data.labeled.labels.cpu())
        for update in self.algorithm.on_stage(iteration, labeled, self.pool_predictions()):
            head = self.model.heads[update.head]
            with torch.no_grad():
                head.load_state_dict(update.weights)
                self.ema.model.heads[update.head].load_state_dict(update.ema_weights)
            for param in head.parameters():  # new weights start without the old ones' momentum
                self.optimizer.state.pop(param, None)
        if self.logger:  # counted as metrics.jsonl and the checkpoints count: iteration N is N steps done
            when = "before the first step" if iteration == -1 else f"after iteration {iteration + 1}"
            self.logger.message(f"stage of {self.config.algorithm.name} {when}: EMA model's predictions on "
                                f"{len(labeled.labels)} labeled and {len(self.data.unlabeled)} unlabeled images")

    def validation_predictions(self) -> ValidationPredictions:
        """The EMA model's logits on the validation split (eval mode, no augmentation), with its labels."""
        logits = predict(self.ema.model, self.data.val.images, self.config.train.eval_batch_size, self.parts.policy)
        return ValidationPredictions(logits, self.data.val.labels.cpu())

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, full: bool = False) -> dict:
        record = {"iteration": self.iteration}
        record.update(evaluate_model(self.ema.model, self.algorithm, self.data, self.parts.policy,
                                     self.config.train.eval_batch_size, full))
        return record

    def _flush_window(self) -> None:
        values = distributed.mean_over_ranks(self.window.flush())  # the same means on every rank
        if values is None:
            return
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.config.train.skip_nonfinite_steps:
            values["skipped_nonfinite_steps"] = self.skipped_steps  # in the whole run so far
        if self.logger:
            self.logger.log_train(self.iteration, values)
        bad = [name for name, value in values.items() if name.startswith("loss") and not math.isfinite(value)]
        if bad:  # checked when the window is read (no per-step device sync); nothing after it is saved
            raise TrainingDiverged(f"training diverged: {', '.join(f'{n} = {values[n]}' for n in bad)} in the steps "
                                   f"logged at iteration {self.iteration}; the newest checkpoint before them is "
                                   f"the last good one (lower optim.lr, or check the data)")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = {
            "version": CHECKPOINT_VERSION,
            "iteration": self.iteration,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.parts.scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "batches": self.batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "pseudo_stats": self.pseudo_stats.state_dict(),
            "window": self.window.state_dict(),
            "skipped_steps": self.skipped_steps,
            "history": json.dumps(self.history),
            "elapsed": self.elapsed,
            "world_size": self.ranks,  # processes that trained it (any number can resume it)
            "environments": self.environments,
        }
        if self.parent_algorithm is not None:
            state["parent_algorithm"] = self.parent_algorithm
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        version = state.get("version")
        if version != CHECKPOINT_VERSION:
            raise CheckpointError(f"checkpoint format version {version} is not this cissl's ({CHECKPOINT_VERSION}); "
                                  f"resume it with the cissl release that wrote it")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.parts.scheduler.load_state_dict(state["scheduler"])
            self.algorithm.load_state_dict(state["algorithm"])
            self.batches.load_state_dict(state["batches"])
            self.pseudo_stats.load_state_dict(state["pseudo_stats"])
            self.window.load_state_dict(state["window"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match this run's config: {first_line(exc)}") from None
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = json.loads(state["history"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed"])
        self.parent_algorithm = state.get("parent_algorithm")
        self.environments = list(state.get("environments", []))  # not recorded before 2026-12-02

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint (under DDP every rank first checks that all hold the same state,
        and takes the ranks' mean metric window, so a resumed run logs what an uninterrupted one does)."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]  # weights and BN statistics
        if not all(bool(torch.isfinite(t).all()) for t in tensors):  # at checkpoints only
            raise TrainingDiverged(f"training diverged: non-finite weights or BN statistics at iteration "
                                   f"{self.iteration}; not saved, the newest checkpoint is the last good one "
                                   f"(lower optim.lr)")
        if self.ranks > 1:
            self._agree_across_ranks()
        if not distributed.is_main() or self.run_dir is None:
            return None
        return save_checkpoint(self.state_dict(), self.run_dir.checkpoints, self.iteration,
                               self.config.train.keep_checkpoints)

    def _agree_across_ranks(self) -> None:
        check_ranks_agree({"parameters": self.model.state_dict(), "EMA": self.ema.state_dict(),
                           "method state": self.algorithm.state_dict(), "streams": self.batches.state_dict()},
                          self.iteration)
        self.window.average_over_ranks()

    # ------------------------------------------------------------------ the loop
    def _record_environment(self) -> None:
        """Where the run computes from now on joins its ``environments`` when it differs from the last
        entry; a run resumed elsewhere says what changed (its steps from here will not repeat an
        uninterrupted run's last bits, e.g. at another thread count)."""
        here = describe_environment(self.device, plugin_digests(self.config.plugins))
        if self.environments and self.environments[-1] == here:
            return
        changed = changes(self.environments[-1], here) if self.environments else []
        if changed and self.logger:
            before = self.environments[-1].get("threads")
            hint = (f"; OMP_NUM_THREADS={before} resumes at the run's thread count"
                    if any(c.startswith("threads ") for c in changed) else "")
            self.logger.message(f"note: the run goes on with {', '.join(changed)}: its steps from here will not "
                                f"repeat an uninterrupted run's last bits{hint}")
        self.environments.append(here)

    def fit(self) -> dict:
        tc = self.config.train
        total = tc.iterations
        if self.logger:
            self.logger.start(self.iteration)
        self._record_environment()
        start = time.perf_counter()
        elapsed_before = self.elapsed
        if self.iteration == 0 and -1 in self.stage_iterations:
            self.start_stage(-1)
        with StopSignals() as signals:
            while self.iteration < total:
                self._fit_step(tc, total, start, elapsed_before)
                stop = distributed.agree_any(signals.requested is not None)  # every rank stops at the same step
                if stop and self.iteration < total:
                    self._stop(signals.requested if signals.requested is not None else signal.SIGTERM)
        results = self.results()
        if distributed.is_main() and self.run_dir is not None:  # without a run directory nothing is written
            atomic_write_json(self.run_dir.results, results)
        return results

    def _stop(self, signal_number: int) -> None:
        path = distributed.broadcast_from_main(self.save())  # rank 0 writes it; every rank's message names it
        name = signal.Signals(signal_number).name
        where = (f"checkpoint {path}; continue with `cissl train --resume {self.run_dir}`" if self.run_dir is not None
                 else "nothing saved (the trainer has no run directory)")
        raise TrainingStopped(signal_number, f"{name}: stopped after iteration {self.iteration}, {where}",
                              printed_by_this_rank=distributed.is_main())

    def _fit_step(self, tc, total: int, start: float, elapsed_before: float) -> None:
        """One step and what follows it: logging, evaluation, the generation's end, the checkpoint."""
        self.train_step()
        t = self.iteration
        if t % tc.log_every == 0 or t == total:
            self._flush_window()
        if t % tc.eval_every == 0 or t == total:
            if t == total:  # the run's final full evaluation (results()) and its last periodic one: one pass
                self.final_evaluation = self.evaluate(full=True)
                record = brief(self.final_evaluation)
            else:
                record = self.evaluate()
            if self.uses_unlabeled and self.data.unlabeled.labels is not None:
                record["pseudo_labels"] = self.pseudo_stats.summary()
                self.pseudo_stats.reset()
            self.history.append(record)
            if self.logger:
                self.logger.log_eval(record)
        if t % self.generation_length == 0 and t < total:
            self.end_generation()
        self.elapsed = elapsed_before + time.perf_counter() - start
        if t % tc.checkpoint_every == 0 or t == total:
            self.save()

    def results(self) -> dict:
        """The run's summary (results.json), from a final full evaluation of the EMA model."""
        final = self.final_evaluation
        if final is None:  # set at the last step only: e.g. a finished run resumed to write results.json
            final = self.evaluate(full=True)
        return summarize_run(self.config, self.history, final, self.algorithm.reported_head,
                             self.data.split.labeled_counts, self.iteration, self.elapsed, str(self.device),
                             self.parent_algorithm, self.environments,
                             last_generation_start=last_generation_start(self.config))
