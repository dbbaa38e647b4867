"""The network as the ranks of a torchrun run train it: through DistributedDataParallel (gradients
averaged over the ranks), with a zero gradient for heads a step leaves out, and batch-norm running
statistics averaged after each step."""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from cissl import distributed


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
