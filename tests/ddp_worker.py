"""Trains a few steps of one or more methods in the process group torchrun starts (or in one plain
process) and saves what each rank holds, for tests/test_distributed.py to compare.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT STEPS METHOD[,METHOD...] [key=value ...]

Per method it writes OUT/METHOD/rank{R}.pt: the global mean loss of every step, the network, the EMA,
the method's state, the streams' state and the pseudo-label statistics. ``check_config`` as the method
list gives every rank another seed (a launch with mismatched configs) and prints the error; ``leave``
keeps rank 1 two seconds longer in the process group and writes when each rank left it; ``diverge``
trains DARP with its cross-rank gather removed, and prints the error the checkpoint check gives;
``one_rank_differs`` trains a run (``cissl train`` from Python) in which rank 1 alone sees a non-finite
loss at step 2 and alone receives SIGTERM during step 4, and saves each rank's own losses and end in
OUT/one_rank_differs/rank{R}.json; ``download`` reads a served CIFAR-10 with data.download=true on
both ranks and writes who downloaded and when each read; ``other_data`` starts ``cissl train`` with
rank 1's test images changed in one pixel and writes each rank's exit status and whether it would have
waited for torchrun to end it; ``released``
(``released_stopped``: stopped by SIGTERM; ``released_api_stopped``: the same through
``cissl.api.train``) trains a run and writes whether its DDP wrapper was still alive when the process
group was destroyed and when the command returned;
``slow_printer`` runs ``cissl train --resume`` of a folder that is no run on both ranks, rank 0 three
seconds after rank 1 (a rank still loading on a busy machine), and exits with its status;
``collectives`` calls each collective of cissl.distributed (and of the launch) on inputs that differ
from rank to rank and saves what each rank got, in OUT/collectives/rank{R}.pt.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ACTIVE_TERMS, CONFIGS, ScriptedStop, tiny_config  # noqa: E402

from cissl import distributed  # noqa: E402
from cissl.engine.data import prepare_data  # noqa: E402
from cissl.engine.launch import launched  # noqa: E402
from cissl.engine.trainer import Trainer  # noqa: E402
from cissl.errors import CisslError  # noqa: E402

# a 4-step run of a WRN-10-1 on digits-LT, evaluated and checkpointed at its end (for `cissl train` commands)
SHORT_RUN = ["model.depth=10", "model.widen=1", "train.batch_size=16", "train.iterations=4", "train.eval_every=4",
             "train.checkpoint_every=4", "train.report_last=1"]


def train(out: Path, steps: int, method: str, overrides: list[str], device) -> None:
    config = tiny_config(*ACTIVE_TERMS.get(method, []), *overrides, algorithm=method)
    data = prepare_data(config, device)
    trainer = Trainer.from_config(config, data, None, None, device)
    losses = []
    for _ in range(steps):
        out_step = trainer.train_step()
        losses.append(distributed.mean_over_ranks({"loss": float(out_step.loss.detach())})["loss"])
    trainer.save()  # without a run directory: only the check that every rank holds the same state
    record = {"losses": losses, "world": distributed.world_size(), "model": trainer.model.state_dict(),
              "ema": trainer.ema.state_dict(), "algorithm": trainer.algorithm.state_dict(),
              "batches": trainer.batches.state_dict(), "pseudo_stats": trainer.pseudo_stats.state_dict(),
              "test_logits": trainer.evaluate(full=False)}
    folder = out / method
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(record, folder / f"rank{distributed.rank()}.pt")


def collectives(out: Path) -> None:
    """Rank r's inputs are built from r, so that the test can write down each result by hand."""
    from cissl.engine.agreement import run_on_main
    from cissl.engine.replicas import average_buffers
    from cissl.errors import PrintedByAnotherRank

    def failing():
        raise CisslError("rank 0's error")

    r = distributed.rank()
    counts = torch.tensor([1.0, r])
    got = {"rank": r, "world": distributed.world_size(), "main": distributed.is_main(),
           "rows": distributed.gather_rows(torch.tensor([[10.0 * r], [10.0 * r + 1]], requires_grad=True)),
           "mask": distributed.gather_rows(torch.tensor([r == 0, True])),
           "local": distributed.local_rows(torch.arange(4)),
           "sum": distributed.all_sum(counts), "counts_after": counts,
           "bounds": [distributed.shard_bounds(n) for n in (5, 1, 0)],
           "shards": distributed.gather_shards(torch.arange(*distributed.shard_bounds(5)).view(-1, 1) * 10, 5),
           "one_shard": distributed.gather_shards(torch.arange(*distributed.shard_bounds(1)), 1),
           "any": [distributed.agree_any(r == 1), distributed.agree_any(False), distributed.agree_any(True)],
           "mean": distributed.mean_over_ranks({"loss": 0.1 * (r + 1), "steps": 4.0}),  # a float64 mean
           "broadcast": distributed.broadcast_from_main({"from": r}),
           "objects": distributed.gather_objects(f"rank {r}"),
           "on_main": run_on_main(lambda: f"done by rank {distributed.rank()}")}
    try:
        run_on_main(failing)
    except PrintedByAnotherRank as exc:
        got["error"] = ("PrintedByAnotherRank", str(exc))
    except CisslError as exc:
        got["error"] = (type(exc).__name__, str(exc))
    norm = torch.nn.BatchNorm1d(2)
    norm.running_mean.fill_(float(r))
    norm.running_var.fill_(2.0 + 2 * r)
    norm.num_batches_tracked.fill_(3 + r)
    average_buffers(norm)
    got["buffers"] = norm.state_dict()
    got["cross_rank_batchnorm"] = {momentum: cross_rank_batchnorm(r, momentum) for momentum in (0.1, None)}
    folder = out / "collectives"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(got, folder / f"rank{r}.pt")


def one_rank_differs(out: Path, overrides: list[str]) -> None:
    """What only one rank meets must be agreed on by all: rank 1's loss is nan at step 2 (both ranks skip
    it: train.skip_nonfinite_steps) and rank 1 alone is signalled during step 4 (both stop after it). Each
    rank's own loss of every step is saved, so that the test can check that the logged loss is the mean
    over the ranks. A rank that went on alone would wait forever in the next collective."""
    import dataclasses

    from cissl.engine import trainer as trainer_module
    from cissl.engine.run import start_run
    from cissl.engine.stop import TrainingStopped

    r = int(os.environ["RANK"])  # (the process group exists only inside start_run)
    losses = []
    original_step = trainer_module.Trainer.train_step

    def train_step(self):
        step = self.iteration + 1
        if r == 1 and step == 2:
            step_of = self.algorithm.step
            self.algorithm.step = lambda *args: dataclasses.replace(step_of(*args), loss=torch.tensor(float("nan")))
        result = original_step(self)
        self.algorithm.__dict__.pop("step", None)
        losses.append(float(result.loss.detach()))
        return result

    trainer_module.Trainer.train_step = train_step
    trainer_module.StopSignals = ScriptedStop(lambda: r == 1 and len(losses) >= 4)  # rank 1 alone, in step 4
    config = tiny_config("train.iterations=6", "train.log_every=1", "train.skip_nonfinite_steps=true", *overrides)
    try:
        start_run(config, out / "run", quiet=True)
        end = "finished"
    except TrainingStopped as exc:
        end = {"message": str(exc), "printed": exc.printed_by_this_rank}
    folder = out / "one_rank_differs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{r}.json").write_text(json.dumps({"losses": losses, "end": end}))


def download(out: Path, overrides: list[str]) -> None:
    """Both ranks read CIFAR-10 with data.download=true from an empty data.root, the archive served from
    a file:// URL (OUT/served.json: url, archive md5, file checksums, as the test wrote them); writes
    which rank downloaded, and when each rank read the data, to OUT/download{R}.json."""
    from cissl.data.sources import base, cifar
    from cissl.engine import data as data_module

    served = json.loads((out / "served.json").read_text())
    sums = served["checksums"]
    cifar.CIFAR10.update(url=served["url"], archive_md5=served["archive_md5"],
                         train={name: sums[name] for name in cifar.CIFAR10["train"]},
                         test={"test_batch": sums["test_batch"]}, meta=("batches.meta", sums["batches.meta"],
                                                                        "label_names"))
    downloads, reads = [], []
    download_file, prepare_data = base.download_file, data_module.prepare_data

    def noted_download(*args, **kwargs):
        downloads.append(os.environ["RANK"])
        return download_file(*args, **kwargs)

    def noted_read(*args, **kwargs):
        start = time.time()
        data = prepare_data(*args, **kwargs)
        reads.append((start, time.time()))
        return data

    base.download_file, data_module.prepare_data = noted_download, noted_read
    config = tiny_config("data.dataset=cifar10", f"data.root={out / 'data'}", "data.download=true",
                         "data.labeled_head=4", "data.unlabeled_head=1", "data.imbalance_ratio=2",
                         "train.batch_size=4", *overrides)
    with launched(config) as device:
        data = data_module.prepare_rank_data(config, device)
    record = {"downloads": downloads, "reads": reads, "labeled": len(data.labeled)}
    (out / f"download{os.environ['RANK']}.json").write_text(json.dumps(record))


def other_data(out: Path, overrides: list[str]) -> None:
    """``cissl train`` (the command line) where rank 1's copy of the data set differs from rank 0's in one
    pixel of its first test image, as a damaged copy on another node would; writes each rank's exit status."""
    from cissl import cli
    from cissl.engine import data as data_module

    if os.environ["RANK"] == "1":
        load_source = data_module.load_source

        def damaged(data_config):
            source = load_source(data_config)
            source.test.images = source.test.images.copy()
            source.test.images[0, 0, 0, 0] ^= 1
            return source

        data_module.load_source = damaged
    from cissl.engine import launch

    waited = []  # the rank that does not print waits for torchrun to end it (here both ranks return)
    launch.wait_for_the_printing_rank = lambda: waited.append(True)
    code = cli.main(["train", "--config", str(CONFIGS / "quickstart.yaml"), "--out", str(out / "run"), "--quiet",
                     *SHORT_RUN, *overrides])
    (out / f"other_data{os.environ['RANK']}.json").write_text(json.dumps({"exit": code, "waited": bool(waited)}))


def released(out: Path, mode: str, overrides: list[str]) -> None:
    """A run that finishes (``released``), or that a SIGTERM stops after its second step, through the
    command line (``released_stopped``) or through ``cissl.api.train``, whose caller keeps the
    TrainingStopped it raised (``released_api_stopped``): whether the run's DistributedDataParallel wrapper
    (which holds the process group) was alive when the launch destroyed the group, and when the command
    or the API call had returned. Automatic garbage collection is off, so only a collection of cissl's own
    can free the wrapper's reference cycles. (One run per process: a second process group in the same
    torchrun workers does not always connect.)"""
    import gc
    import weakref

    from cissl import api, cli
    from cissl.engine import assemble
    from cissl.engine import trainer as trainer_module
    from cissl.engine.stop import TrainingStopped

    wrappers, steps = [], []
    wrap_for_ranks = assemble.wrap_for_ranks

    def wrap_and_note(model, device):
        wrapped = wrap_for_ranks(model, device)
        wrappers.append(weakref.ref(wrapped.ddp))
        return wrapped

    destroy = torch.distributed.destroy_process_group
    alive_at_destroy = []

    def note_and_destroy(*args, **kwargs):
        alive_at_destroy.append(wrappers[-1]() is not None)
        return destroy(*args, **kwargs)

    assemble.wrap_for_ranks = wrap_and_note
    torch.distributed.destroy_process_group = note_and_destroy
    def after_the_second_step() -> bool:  # the trainer checks once after each step
        steps.append(1)
        return mode != "released" and len(steps) >= 2

    trainer_module.StopSignals = ScriptedStop(after_the_second_step)
    settings = [*SHORT_RUN, *overrides]
    gc.disable()
    if mode == "released_api_stopped":
        try:
            api.train(api.load_config(CONFIGS / "quickstart.yaml", settings), out / "run")
            code = 0
        except TrainingStopped as stopped:
            held = stopped  # the caller still holds the exception, and with it its traceback
            code = 128 + held.signal_number
    else:
        code = cli.main(["train", "--config", str(CONFIGS / "quickstart.yaml"), "--out", str(out / "run"), "--quiet",
                         *settings])
    record = {"exit": code, "alive_at_destroy": alive_at_destroy, "alive_after_return": wrappers[-1]() is not None}
    (out / f"released{os.environ['RANK']}.json").write_text(json.dumps(record))


def cross_rank_batchnorm(r: int, momentum) -> dict:
    """Two training steps of a batch norm over a batch of 4 and a loss weighing every output: as a
    CrossRankBatchNorm2d on this rank's 2 rows ("ours"), and as a plain BatchNorm2d on all 4 in this
    process ("whole"). For each step, this rank's rows of the output and of the input gradient; then the
    running statistics."""
    from cissl.models.sync_batchnorm import CrossRankBatchNorm2d

    got = {}
    for name, kind in (("ours", CrossRankBatchNorm2d), ("whole", torch.nn.BatchNorm2d)):
        norm = kind(3, momentum=momentum)
        with torch.no_grad():
            norm.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            norm.bias.copy_(torch.tensor([0.0, -1.0, 0.25]))
        mine = slice(2 * r, 2 * r + 2)
        steps = []
        for step in range(2):
            generator = torch.Generator().manual_seed(step)
            batch = torch.randn(4, 3, 2, 2, generator=generator) * (step + 1) + step
            weights = torch.randn(4, 3, 2, 2, generator=generator)
            if name == "ours":
                batch, weights = batch[mine], weights[mine]
            x = batch.clone().requires_grad_()
            y = norm(x)
            (y * weights).sum().backward()
            rows = slice(0, 2) if name == "ours" else mine
            steps.append((y.detach()[rows], x.grad[rows]))
        got[name] = {"steps": steps, "running": (norm.running_mean.clone(), norm.running_var.clone(),
                                                 int(norm.num_batches_tracked))}
    return got


def slow_printer(out: Path) -> int:
    from cissl import cli

    if os.environ["LOCAL_RANK"] == "0":
        time.sleep(3.0)
    return cli.main(["train", "--resume", str(out / "nothing")])


def main(argv: list[str]) -> int:
    out, steps, methods, overrides = Path(argv[0]), int(argv[1]), argv[2].split(","), argv[3:]
    torch.set_num_threads(1)
    if methods == ["check_config"]:
        config = tiny_config(f"train.seed={os.environ.get('RANK', '0')}", *overrides)
        try:
            with launched(config):
                pass
        except CisslError as exc:
            print(f"error: {exc}")
            return 2
        return 0
    if methods == ["leave"]:  # rank 1 stays 2 s longer in the group: when does each rank leave it?
        with launched(tiny_config(*overrides)):
            if distributed.rank() == 1:
                time.sleep(2.0)
            body_end = time.time()
        (out / f"leave{os.environ['RANK']}.json").write_text(json.dumps({"body_end": body_end, "left": time.time()}))
        return 0
    if methods == ["collectives"]:
        with launched(tiny_config(*overrides)):
            collectives(out)
        return 0
    if methods == ["one_rank_differs"]:  # start_run joins the process group itself
        one_rank_differs(out, overrides)
        return 0
    if methods == ["slow_printer"]:
        return slow_printer(out)
    if methods == ["download"]:
        download(out, overrides)
        return 0
    if methods == ["other_data"]:
        other_data(out, overrides)
        return 0
    if methods in (["released"], ["released_stopped"], ["released_api_stopped"]):
        released(out, methods[0], overrides)
        return 0
    if methods == ["diverge"]:  # DARP as if it kept only its own rows' predictions: the ranks drift apart
        import cissl.algorithms.darp as darp

        darp.gather_rows = lambda tensor: tensor
        methods = ["fixmatch_darp"]
    try:
        # one process group for every method; one method's config may hold its own keys (algorithm.*)
        launch_config = tiny_config(*overrides, algorithm=methods[0] if len(methods) == 1 else None)
        with launched(launch_config) as device:
            for method in methods:
                train(out, steps, method, overrides, device)
    except CisslError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
