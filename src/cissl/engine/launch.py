"""Training under ``torchrun``: the process group, each rank's device, a consistent launch.

``torchrun --nproc_per_node N -m cissl train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set (and torchrun's rendezvous for several nodes); :func:`launched` joins them in a
process group (NCCL on CUDA, gloo on the CPU; host-side agreement always over a gloo group) and gives
each rank its device (``cuda:LOCAL_RANK`` on GPUs). Without those variables it does nothing and a run
is the plain single-process one. What stays identical across ranks, and why, is said in
:mod:`cissl.distributed` and :mod:`cissl.engine.batches`.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from cissl import distributed
from cissl.config import flat_keys
from cissl.engine.precision import resolve_device
from cissl.errors import CisslError, ConfigError, DataError, PrintedByAnotherRank

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class RanksDiverged(CisslError):
    """The ranks of a DDP run no longer hold the same weights or method state."""


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int


def torchrun_launch(environ=None) -> Launch | None:
    """The rank of this process as torchrun sets it, or None outside torchrun."""
    environ = os.environ if environ is None else environ
    present = [key for key in ENVIRONMENT if key in environ]
    if not present:
        return None
    if len(present) < len(ENVIRONMENT):
        missing = ", ".join(key for key in ENVIRONMENT if key not in environ)
        raise ConfigError(f"distributed launch: {', '.join(present)} set but not {missing}; start several "
                          f"processes with torchrun (it sets {', '.join(ENVIRONMENT)})")
    try:
        launch = Launch(*(int(environ[key]) for key in ENVIRONMENT))
    except ValueError:
        raise ConfigError(f"distributed launch: {', '.join(f'{k}={environ[k]!r}' for k in ENVIRONMENT)} must be "
                          f"integers") from None
    if not 0 <= launch.rank < launch.world_size:
        raise ConfigError(f"distributed launch: RANK {launch.rank} is not in 0..WORLD_SIZE-1 ({launch.world_size})")
    return launch


@contextmanager
def met_by_every_local_rank():
    """For errors that depend only on the command line and this node's files (a config that does not
    load), met before the ranks can talk: every process of a node meets the same one, so under torchrun
    its local rank 0 alone prints it (not N copies of one line)."""
    try:
        yield
    except CisslError as exc:
        if os.environ.get("LOCAL_RANK", "0") != "0" and not isinstance(exc, PrintedByAnotherRank):
            raise PrintedByAnotherRank(str(exc)) from None
        raise


def rank_device(config, launch: Launch | None) -> torch.device:
    """The device ``train.device`` names; under torchrun on GPUs, ``cuda:LOCAL_RANK``."""
    name = config.train.device
    if launch is None:
        return resolve_device(name)
    if name.startswith("cuda:"):
        raise ConfigError(f"config key 'train.device': under torchrun each rank trains on cuda:LOCAL_RANK; "
                          f"set cuda or auto, not {name}")
    device = resolve_device(name)
    if device.type == "cuda":
        if launch.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"distributed launch: LOCAL_RANK {launch.local_rank} but this node has "
                              f"{torch.cuda.device_count()} GPUs; start at most that many processes per node")
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    return device


@contextmanager
def launched(config):
    """The rank's device, inside a process group when torchrun started this process."""
    launch = torchrun_launch()
    device = rank_device(config, launch)
    if launch is None:
        yield device
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    distributed.set_control_group(dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD)
    try:
        check_consistent_launch(config)
        yield device
        # on a normal end, every rank waits for the others before any tears the groups down
        dist.barrier(group=distributed.control_group())
    except BaseException as exc:
        # a run that raised (a stop on SIGTERM, an error) left its trainer in the locals of the frames its
        # exception passed through; without them, the collection below frees the run in this path too
        release_frames(exc)
        raise
    finally:
        distributed.set_control_group(None)
        # the run's DistributedDataParallel wrapper holds the group, and the trainer's reference cycles keep
        # it alive past the run: collected only at the interpreter's exit, the group's gloo threads would
        # free their tensors while Python finalizes, and the rank would abort ("terminate called without an
        # active exception", about once in 40 resumed 2-rank runs on a busy machine). Let it go now.
        gc.collect()
        dist.destroy_process_group()


def release_frames(exc: BaseException) -> None:
    """Clear the local variables of the finished frames in the tracebacks of ``exc`` and of the exceptions
    it was raised from or while handling (frames still running keep theirs). The tracebacks print as
    before (file, line, code); a post-mortem debugger no longer sees those frames' variables."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]


def check_consistent_launch(config) -> None:
    """Every rank was given the same config, and the global batch splits evenly across the ranks (every
    rank reaches the same verdict; rank 0's error is the one printed)."""
    try:
        _check_consistent_launch(config)
    except ConfigError as exc:
        raise exc if distributed.is_main() else PrintedByAnotherRank(str(exc)) from None


def _check_consistent_launch(config) -> None:
    world = distributed.world_size()
    configs = distributed.gather_objects(flat_keys(config.to_dict()))
    for other, values in enumerate(configs[1:], start=1):
        differ = [key for key in sorted(set(configs[0]) | set(values)) if configs[0].get(key) != values.get(key)]
        if differ:
            shown = ", ".join(f"{key} {values.get(key)!r} (rank 0: {configs[0].get(key)!r})" for key in differ[:3])
            raise ConfigError(f"distributed launch: rank {other} was started with another config than rank 0: "
                              f"{shown}; give every rank the same command line")
    if config.train.batch_scope == "global" and config.train.batch_size % world:
        raise ConfigError(f"config key 'train.batch_size': {config.train.batch_size} labeled images per step do not "
                          f"split evenly across {world} ranks (train.batch_scope = global); use a multiple of {world} "
                          f"or train.batch_scope=per_rank")


def in_turns(action):
    """``action()`` on every rank in three turns: rank 0, then the first process of each other node,
    then the rest, each turn ending when every rank is through it. For reading a data set that may
    have to be downloaded: one process per node fetches and extracts it (one in all where the nodes
    share the folder) and the others find it there, instead of N processes writing the same files at
    once. An error in a turn stops every rank after that turn: the first rank that met one raises it,
    the others a copy that it prints."""
    launch = torchrun_launch()
    mine = 0 if distributed.is_main() else 1 if launch is None or launch.local_rank == 0 else 2
    result = None
    for turn in range(3):
        error = None
        if turn == mine:
            try:
                result = action()
            except Exception as exc:  # noqa: BLE001 - every rank must hear of it before any stops
                error = exc
        messages = distributed.gather_objects(None if error is None else str(error))
        failed = [rank for rank, message in enumerate(messages) if message is not None]
        if failed:
            if error is not None and failed[0] == distributed.rank():
                raise error
            raise PrintedByAnotherRank(messages[failed[0]])
    return result


def run_on_main(action):
    """``action()`` on rank 0 only; its result, or its one-line error, on every rank."""
    outcome = None
    if distributed.is_main():
        try:
            outcome = ("ok", action())
        except CisslError as exc:
            outcome = ("error", exc)
    kind, value = distributed.broadcast_from_main(outcome)
    if kind == "error":
        raise value if distributed.is_main() else PrintedByAnotherRank(str(value))
    return value


def wrap_for_ranks(model: torch.nn.Module, device: torch.device):
    """``model`` as a method's step calls it: under a process group, through DistributedDataParallel
    (gradients averaged over the ranks), attributes (heads, backbone) still from the network."""
    if not distributed.active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    # buffers are not broadcast from rank 0 at each forward: average_buffers (or SyncBatchNorm) keeps them equal
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                      inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=True,  # e.g. TRAS's student before its warm-up
                                  **no_buffer_sync)
    return ReplicatedModel(ddp)


class ReplicatedModel:
    """The forward through DDP, every other attribute from the network it wraps. It keeps the outputs of
    the step's forwards with gradients, for :meth:`untouched_heads_term`."""

    def __init__(self, ddp):
        self.ddp = ddp
        self.outputs = []

    def __call__(self, *args, **kwargs):
        out = self.ddp(*args, **kwargs)
        if torch.is_grad_enabled():
            self.outputs.append(out)
        return out

    def untouched_heads_term(self) -> torch.Tensor | None:
        """0 x the sum of every head's logits of the step's forwards (then forgotten). DDP expects a
        gradient for every parameter its forward's outputs reach; a head a step leaves out of its loss
        (TRAS's student before its warm-up, CoSSL's teacher before its stage) would otherwise stop the
        next step. So under DDP such a head gets a zero gradient, and the optimizer's weight decay and
        momentum act on it where one process would leave it untouched."""
        outputs, self.outputs = self.outputs, []
        terms = [logits.sum() for out in outputs for logits in out.logits.values()]
        return 0.0 * torch.stack(terms).sum() if terms else None

    def __getattr__(self, name):
        return getattr(self.ddp.module, name)


@torch.no_grad()
def average_buffers(model: torch.nn.Module) -> None:
    """Batch-norm running statistics averaged over the ranks (without sync_batchnorm each rank's
    statistics come from its own rows; this keeps every rank's network, and its EMA, the same)."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers or distributed.world_size() == 1:
        return
    flat = _flatten_dense_tensors(buffers)
    dist.all_reduce(flat)
    flat /= distributed.world_size()
    for buffer, value in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
        buffer.copy_(value)


def fingerprint(tensors) -> str:
    """A digest of tensors' values (nested dicts / lists of tensors and numbers)."""
    digest = hashlib.sha256()

    def visit(value):
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          if value.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(str(key).encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        else:
            digest.update(repr(value).encode())

    visit(tensors)
    return digest.hexdigest()


def rank_that_differs(parts: dict) -> tuple[int, list[str]] | None:
    """The first rank whose ``parts`` (name -> state) differ from rank 0's, with the names that differ
    (the same answer on every rank), or None."""
    if distributed.world_size() == 1:
        return None
    mine = {name: fingerprint(state) for name, state in parts.items()}
    every = distributed.gather_objects(mine)
    for other, prints in enumerate(every[1:], start=1):
        differ = [name for name in mine if prints[name] != every[0][name]]
        if differ:
            return other, differ
    return None


def check_ranks_agree(parts: dict, iteration: int) -> None:
    """Every rank holds the same ``parts`` (name -> state), else one line naming the first that differs."""
    found = rank_that_differs(parts)
    if found:
        other, differ = found
        raise RanksDiverged(f"at iteration {iteration} rank {other} and rank 0 hold different {', '.join(differ)}: "
                            f"the ranks no longer train one model (a method that updates its state from its "
                            f"own rows only? see docs/algorithms.md, 'Distributed training')")


def check_same_data(parts: dict, data_config) -> None:
    """Every rank read the same data (``parts``: name -> what identifies it, see
    :func:`cissl.engine.data.data_identity`): a node whose copy under ``data.root`` differs (another
    version, a damaged file) would otherwise train on other images than rank 0 believes."""
    found = rank_that_differs(parts)
    if found:
        other, differ = found
        message = (f"distributed launch: rank {other} read other data than rank 0 from data.root "
                   f"{data_config.root!r} ({', '.join(differ)} differ); every node must read the same copy "
                   f"of {data_config.dataset}")
        raise DataError(message) if distributed.is_main() else PrintedByAnotherRank(message)
