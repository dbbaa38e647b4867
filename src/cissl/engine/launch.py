"""Training under ``torchrun``: the process group, each rank's device, a consistent launch.

``torchrun --nproc_per_node N -m cissl train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` set (and torchrun's rendezvous for several nodes); :func:`launched` joins them in a
process group (NCCL on CUDA, gloo on the CPU; host-side agreement always over a gloo group) and gives
each rank its device (``cuda:LOCAL_RANK`` on GPUs). Without those variables it does nothing and a run
is the plain single-process one. What stays identical across ranks, and why, is said in
:mod:`cissl.distributed` and :mod:`cissl.engine.batches`; what the ranks check they agree on, in
:mod:`cissl.engine.agreement`; the network as the ranks train it, in :mod:`cissl.engine.replicas`.
"""

from __future__ import annotations

import gc
import os
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cissl import distributed
from cissl.config import flat_keys
from cissl.engine.precision import resolve_device
from cissl.errors import CisslError, ConfigError, for_this_rank

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


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


def wait_for_the_printing_rank(limit_s: float = 60.0) -> None:
    """On a rank of a torchrun launch whose error another rank prints: wait until torchrun ends this process
    (at most ``limit_s``). torchrun stops every rank once one exits with an error, so a rank that exited at
    once could have the printing rank stopped before it printed, and the launch would fail without its line
    (seen on a loaded 2-core machine, rank 0 still loading its config). A signal now ends this rank at once."""
    if "LOCAL_RANK" not in os.environ:
        return
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    time.sleep(limit_s)


@contextmanager
def met_by_every_local_rank():
    """For errors that depend only on the command line and this node's files (a config that does not
    load), met before the ranks can talk: every process of a node meets the same one, so under torchrun
    its local rank 0 alone prints it (not N copies of one line)."""
    try:
        yield
    except CisslError as exc:
        raise for_this_rank(exc, os.environ.get("LOCAL_RANK", "0") == "0") from None


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
        # active exception": 2 in 66 resumed 2-rank runs on a busy machine, benchmarks/RESULTS.md section 4).
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
        raise for_this_rank(exc, distributed.is_main()) from None


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
