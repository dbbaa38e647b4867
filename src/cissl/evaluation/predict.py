"""Predictions of a trained run on new images: the reported head, as ``cissl evaluate`` scores it.

Images come as uint8 arrays or tensors and are brought to the run's channels and size: numpy arrays
are channels-last (N, H, W) or (N, H, W, C), as image libraries give them; torch tensors are
channels-first (N, C, H, W), as the library holds them. Grey images feed an RGB run as three equal
channels; RGB images feed a grey run as their luminance (ITU-R 601, as Pillow's "L"); other sizes
are resized bilinearly with antialiasing (as the STL-10 reader does).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cissl.data.sources.own import IMAGE_SUFFIXES, is_grey, read_images
from cissl.data.sources.stl10 import resize_uint8
from cissl.errors import DataError
from cissl.evaluation.evaluate import predict

LUMA = (0.299, 0.587, 0.114)


@dataclass
class Predictions:
    """``probs`` (N, K) softmax of the reported head; ``labels`` (N,) its argmax; the run's class names."""

    probs: torch.Tensor
    class_names: list[str]

    @property
    def labels(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    def top_k(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, class indices), each (N, min(k, K)), most probable first."""
        return self.probs.topk(min(k, self.probs.shape[1]), dim=1)


def as_run_images(images, channels: int, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) images for a run with ``channels`` channels of ``size`` x ``size`` pixels."""
    if isinstance(images, torch.Tensor):
        array = images.detach().cpu().numpy()
        if array.ndim == 3:
            array = array[:, None]
    else:
        array = np.asarray(images)
        if array.ndim == 3:
            array = array[:, None]
        elif array.ndim == 4:
            array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3, 4):
        raise DataError(f"images must be (N, H, W) or (N, H, W, C) arrays / (N, C, H, W) tensors with 1, 3 or 4 "
                        f"channels, got shape {tuple(np.shape(images))}")
    if array.dtype != np.uint8:
        raise DataError(f"images must be uint8 (0..255), got {array.dtype}")
    array = array[:, :3]  # an alpha channel carries no class
    if array.shape[1] != channels:
        if channels == 1:
            weights = np.asarray(LUMA, dtype=np.float64).reshape(1, 3, 1, 1)
            array = np.rint((array.astype(np.float64) * weights).sum(1, keepdims=True)).astype(np.uint8)
        else:
            array = np.repeat(array, channels, axis=1)
    if array.shape[-2] != array.shape[-1] or array.shape[-1] != size:
        if array.shape[-2] != array.shape[-1]:
            raise DataError(f"images must be square to be resized to {size} x {size}, got "
                            f"{array.shape[-2]} x {array.shape[-1]}")
        array = resize_uint8(array, size)
    return torch.from_numpy(np.ascontiguousarray(array))


def predict_images(trained, images, batch_size: int | None = None) -> Predictions:
    """The reported head's class probabilities of a loaded run (:func:`cissl.engine.run.load_trained_run`)."""
    data, algorithm = trained.data, trained.algorithm
    pool = as_run_images(images, data.channels, data.image_size).to(trained.device)
    batch_size = batch_size or trained.config.train.eval_batch_size
    logits = algorithm.evaluation_logits(predict(trained.model, pool, batch_size, trained.policy))
    return Predictions(torch.softmax(logits[algorithm.reported_head].float(), dim=1), list(data.class_names))


def image_files(path: Path) -> list[Path]:
    """The image files of a folder (recursively, sorted) or the one file given."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"--images {path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--images {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def read_image_files(files: list[Path], stream=None) -> torch.Tensor:
    """uint8 (N, C, H, W) of image files, read as the folder data source reads them (grey when every file
    is grey, else RGB); one line names a file that cannot be read; progress on long input."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("reading image files needs Pillow: pip install 'cissl[images]'") from None
    return torch.from_numpy(read_images(files, None, is_grey(files), stream or sys.stderr))
