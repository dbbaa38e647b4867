"""The device, numeric precision and memory layout of a run: one policy for training, evaluation and the bench."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from cissl.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device': {name} requested but CUDA is not available; "
                          f"use cpu or auto")
    return torch.device(name)


@dataclass(frozen=True)
class ComputePolicy:
    """``precision``: fp32, or bf16 autocast; ``channels_last``: the memory format of images and
    convolution weights (the fast path on CPU)."""

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = True

    @classmethod
    def from_config(cls, train_config, device: torch.device | None = None) -> "ComputePolicy":
        return cls(device or resolve_device(train_config.device), train_config.precision, train_config.channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A float image batch in the policy's memory format."""
        return images.contiguous(memory_format=self.memory_format)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module on the policy's device, in its memory format."""
        return module.to(self.device).to(memory_format=self.memory_format)


def configure_backends(train_config, device: torch.device) -> None:
    """Process-wide backend switches a run asks for: cuDNN's autotuner on CUDA (fixed batch shapes)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = train_config.cudnn_benchmark
