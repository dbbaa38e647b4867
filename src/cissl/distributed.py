"""The collectives a run needs under DistributedDataParallel, as no-ops in a single process.

A method's step sees only its rank's rows of the global batch (``cissl.engine.batches``). Whatever
the method keeps across steps (SeMi's memory bank, class counts and EA centre, DASO's queue, DARP's
pool predictions, every running mean of a batch) must be updated from the whole global batch, so that
every rank holds the same state and that state is the one a single process with the global batch
would hold. :func:`gather_rows` gives that batch (every rank's rows in rank order: the global batch's
order); :func:`local_rows` cuts a tensor drawn for the global batch back to this rank's rows (per-image
random draws of a method, such as ABC's Bernoulli masks); :func:`all_sum` sums counts.

Without an initialised process group (a plain ``cissl train``) every function returns its input and
nothing is communicated. Object-level agreement between ranks (a stop request, log values, a
checkpoint to resume from) goes over :func:`control_group`, a gloo group, so that it never touches
the accelerator's stream.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_control = None  # the gloo group for host-side agreement (set by cissl.engine.launch)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes logs, checkpoints and results."""
    return rank() == 0


def set_control_group(group) -> None:
    global _control
    _control = group


def control_group():
    return _control


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on each) concatenated along dim 0 in rank order; no gradient."""
    world = world_size()
    if world == 1:
        return tensor
    is_bool = tensor.dtype == torch.bool
    local = tensor.detach().contiguous()
    if is_bool:  # not every backend reduces bool tensors
        local = local.to(torch.uint8)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    gathered = torch.cat(parts)
    return gathered.bool() if is_bool else gathered


def local_rows(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a tensor that holds the global batch's rows (the inverse of :func:`gather_rows`)."""
    world = world_size()
    if world == 1:
        return tensor
    size = tensor.shape[0] // world
    return tensor.narrow(0, rank() * size, size)


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor; the input where there is one process)."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def shard_bounds(count: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of ``count`` items (evaluation), ceil-sized shares first."""
    share = -(-count // world_size())
    start = min(rank() * share, count)
    return start, min(start + share, count)


def gather_shards(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` rows of every rank's :func:`shard_bounds` share, in order (CPU tensors, any dtype)."""
    world = world_size()
    if world == 1:
        return tensor
    share = -(-count // world)
    padded = tensor.new_zeros((share, *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=_control)  # CPU tensors: over the gloo group
    sizes = [min(share, max(0, count - r * share)) for r in range(world)]
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def agree_any(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a stop request, a skipped step)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of each value (every rank has the same keys: the same code ran)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    vector = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(vector, group=_control)
    vector /= world_size()
    return {**values, **dict(zip(keys, vector.tolist()))}


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (pickled over the gloo group)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    boxes = [None] * world_size()
    dist.all_gather_object(boxes, obj, group=_control)
    return boxes
