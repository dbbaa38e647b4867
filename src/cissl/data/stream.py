"""Infinite shuffled batch streams over in-memory images, drawn by seeded generators.

Each stream walks a fresh permutation of its pool and yields batches without replacement; the
incomplete tail of a permutation is dropped and a new permutation starts (drop_last, spec 1.7).
A pool smaller than one batch is covered by concatenating successive permutations. The stream's
whole state (generator, permutation, position) is in :meth:`IndexStream.state_dict`.
"""

from __future__ import annotations

import numpy as np
import torch


class IndexStream:
    """Batches of positions 0..pool_size-1 (CPU int64), reproducible from ``seed``."""

    def __init__(self, pool_size: int, batch_size: int, seed: int):
        if pool_size < 1:
            raise ValueError("an index stream needs a non-empty pool")
        self.pool_size = pool_size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def _new_permutation(self) -> torch.Tensor:
        return torch.randperm(self.pool_size, generator=self.generator)

    def next(self) -> torch.Tensor:
        b = self.batch_size
        if self.pool_size < b:  # small pool: successive permutations back to back
            parts, need = [], b
            while need > 0:
                perm = self._new_permutation()
                parts.append(perm[:need])
                need -= len(parts[-1])
            return torch.cat(parts)
        if self.pos + b > len(self.perm):
            self.perm = self._new_permutation()
            self.pos = 0
        batch = self.perm[self.pos:self.pos + b]
        self.pos += b
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])



class ClassBalancedStream:
    """Batches of positions drawn with replacement, position i with probability proportional to
    ``weights[i]`` (class-aware sampling: cRT's labeled batches), reproducible from ``seed``."""

    def __init__(self, weights: torch.Tensor, batch_size: int, seed: int):
        if len(weights) < 1:
            raise ValueError("a class-balanced stream needs a non-empty pool")
        self.weights = weights.double()
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class HostImages:
    """uint8 images (N, C, H, W) left in host memory, typically a memory-mapped file: the rows ``rows`` of
    ``array``. Indexing (a slice, or positions) reads those rows, in file order, and sends them to
    ``device``; so a pool larger than the device streams one batch at a time."""

    def __init__(self, array: np.ndarray, rows, device: torch.device | str):
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        self.device = torch.device(device)
        self.dtype = torch.uint8
        self.shape = (len(self.rows), *array.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            rows = self.rows[index]
        else:
            rows = self.rows[torch.as_tensor(index).cpu().numpy()]
        order = np.argsort(rows, kind="stable")  # sequential reads of the file
        block = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        block[order] = self.array[rows[order]]
        tensor = torch.from_numpy(block)
        if self.device.type == "cuda":  # a copy from pinned memory never makes the host wait
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)


class ImagePool:
    """uint8 images (and optional labels) living on the training device, indexed by stream batches
    (or, :meth:`streamed`, left in host memory and sent to the device batch by batch)."""

    def __init__(self, images, labels=None, device: torch.device | str = "cpu"):
        images = np.asarray(images)
        if not images.flags.writeable:  # e.g. a view of a read-only file buffer
            images = images.copy()
        self.images = torch.from_numpy(images).to(device)
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        self.device = torch.device(device)

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor | None) -> "ImagePool":
        """A pool of tensors already on their device (no copy)."""
        pool = cls.__new__(cls)
        pool.images, pool.labels, pool.device = images, labels, images.device
        return pool

    @classmethod
    def streamed(cls, array: np.ndarray, rows, labels, device: torch.device | str) -> "ImagePool":
        """Rows ``rows`` of a host array (a memory-mapped file) as a pool: labels on the device, images
        read per batch (:class:`HostImages`)."""
        pool = cls.__new__(cls)
        pool.device = torch.device(device)
        pool.images = HostImages(array, rows, pool.device)
        pool.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
        return pool

    def __len__(self) -> int:
        return len(self.images)

    def extended(self, other: "ImagePool", positions: torch.Tensor, labels: torch.Tensor) -> "ImagePool":
        """This pool followed by ``other``'s images at ``positions``, labeled ``labels`` (CReST's additions)."""
        labels = torch.cat([self.labels, labels.to(self.labels.device)])
        if isinstance(self.images, HostImages):
            if not isinstance(other.images, HostImages) or other.images.array is not self.images.array:
                raise ValueError("a streamed pool extends only with images of its own file")
            rows = np.concatenate([self.images.rows, other.images.rows[positions.cpu().numpy()]])
            pool = ImagePool.streamed(self.images.array, rows, None, self.device)
            pool.labels = labels
            return pool
        images = torch.cat([self.images, other.images[positions.to(self.images.device)]])
        return ImagePool.from_tensors(images, labels)

    def take(self, positions: torch.Tensor):
        if isinstance(self.images, HostImages):
            images = self.images[positions]
            positions = positions.to(self.device)
            return images, None if self.labels is None else self.labels[positions], positions
        if self.device.type == "cuda":  # a copy from pinned memory never makes the host wait
            positions = positions.pin_memory()
        positions = positions.to(self.device, non_blocking=True)
        labels = None if self.labels is None else self.labels[positions]
        return self.images[positions], labels, positions
