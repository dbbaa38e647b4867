"""Batch norm over the global batch under DistributedDataParallel (``train.sync_batchnorm``).

On CUDA this is torch's :class:`torch.nn.SyncBatchNorm`. torch's module serves accelerators only, so
on the CPU (the gloo backend) :class:`CrossRankBatchNorm2d` does the same arithmetic with two
differentiable all-reduces per layer: the global mean, then the global variance about it. Either way a
training step of W ranks x B/W images normalises with the statistics of all B images, as one process
with the whole batch does, and updates identical running statistics on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class _SumOverRanks(torch.autograd.Function):
    """y = the sum over ranks of x; dL/dx = the sum over ranks of dL/dy (every rank's loss depends on y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of every rank's rows together
    (biased variance for normalising, unbiased for the running variance, as ``nn.BatchNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        dims = (0, 2, 3)
        local = torch.cat([x.sum(dims), x.new_full((1,), x.numel() / channels)])
        total = all_reduce(local)  # sums over ranks; its backward sums the gradients over ranks
        count = total[channels]
        mean = total[:channels] / count
        centred = x - mean.view(1, channels, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        y = centred * torch.rsqrt(var + self.eps).view(1, channels, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, channels, 1, 1) + self.bias.view(1, channels, 1, 1)
        return y


def convert_to_cross_rank(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` of ``module`` as a :class:`CrossRankBatchNorm2d` sharing its parameters
    and buffers (the optimizer's references and the state_dict keys stay as they were)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossRankBatchNorm2d):
        converted = CrossRankBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_cross_rank(child))
    return module


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with batch norm over the global batch: torch's SyncBatchNorm on CUDA, else
    :class:`CrossRankBatchNorm2d`."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_to_cross_rank(module)
