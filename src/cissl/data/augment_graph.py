"""Weak / strong views replayed from CUDA graphs: the same kernels as eager mode, launched at once.

A RandAugment batch on an accelerator runs every op on the whole batch and keeps it where drawn
(thousands of small operator calls per training step at the paper's batch). On a GPU that is launch
overhead, not arithmetic: measured on an H200, the eager views took about half of a SeMi step
(benchmarks/RESULTS.md). Here the random draws stay eager (few calls, same generator, same order),
and the pure part, :meth:`BatchAugment.apply_weak` / :meth:`BatchAugment.apply_strong`, is captured
once per input shape into a CUDA graph and replayed. The graph holds exactly the eager kernels, so
the images are bit-identical to eager mode (tested on CUDA).
"""

from __future__ import annotations

import torch

from cissl.data.augment import BatchAugment

_WARMUP_CALLS = 2  # eager calls on a side stream before capture, as torch.cuda.graph asks


class _Graphed:
    """One captured call: static input buffers, the graph, its output buffer."""

    def __init__(self, fn, images: torch.Tensor, params: dict[str, torch.Tensor]):
        self.images = images.clone()
        self.params = {k: v.clone() for k, v in params.items()}
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_CALLS):
                fn(self.images, self.params)
        torch.cuda.current_stream(images.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self.output = fn(self.images, self.params)
        except RuntimeError as exc:
            raise RuntimeError(f"capturing the augmentation in a CUDA graph failed ({exc}); "
                               "run with train.cuda_graphs=false to augment eagerly") from exc

    def __call__(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        self.images.copy_(images)
        for key, value in params.items():
            self.params[key].copy_(value)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output


class GraphedViews:
    """Drop-in for :class:`BatchAugment`'s ``weak`` / ``strong`` / ``apply_*`` on CUDA, one graph per (view, shape)."""

    def __init__(self, augment: BatchAugment):
        if augment.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {augment.device}")
        self.augment = augment
        self._graphs: dict[tuple, _Graphed] = {}

    def _run(self, view: str, fn, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        key = (view, tuple(images.shape), images.dtype)
        graphed = self._graphs.get(key)
        if graphed is None:
            graphed = self._graphs[key] = _Graphed(fn, images, params)
        return graphed(images, params)

    def apply_weak(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("weak", self.augment.apply_weak, images, params)

    def apply_strong(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("strong", self.augment.apply_strong, images, params)

    def weak(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply_weak(images, self.augment.draw_weak(images.shape[0]))

    def strong(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply_strong(images, self.augment.draw_strong(images.shape[0]))
