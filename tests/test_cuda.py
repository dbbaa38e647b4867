"""The CUDA path: data on the device, batched augmentation there, training under each switch, resume.

Skipped without a GPU (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import math

import numpy as np
import pytest
import torch
from helpers import tiny_config
from scipy.stats import chisquare
from test_augment import random_images

from cissl.data.augment import OPS, BatchAugment
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.run import resume_run, start_run
from cissl.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = ["train.device=cuda"]


def cuda_trainer(tmp_path, *overrides, algorithm="fixmatch"):
    config = tiny_config(*CUDA, *overrides, algorithm=algorithm)
    device = torch.device("cuda")
    return Trainer(config, prepare_data(config, device), tmp_path, device=device)


def test_images_live_on_the_device_and_batches_are_seeded(tmp_path):
    a = cuda_trainer(tmp_path)
    b = cuda_trainer(tmp_path)
    for pool in (a.data.labeled, a.data.unlabeled):
        assert pool.images.device.type == "cuda" and pool.images.dtype == torch.uint8
    for _ in range(3):
        (batch_a, truth_a), (batch_b, truth_b) = a.next_batch(), b.next_batch()
        tensors_a = [batch_a.x, batch_a.y, batch_a.u_weak, *batch_a.u_strong, truth_a]
        tensors_b = [batch_b.x, batch_b.y, batch_b.u_weak, *batch_b.u_strong, truth_b]
        assert all(t.device.type == "cuda" for t in tensors_a)
        assert all(torch.equal(x, y) for x, y in zip(tensors_a, tensors_b))


def test_whole_batch_randaugment_on_cuda_equals_the_cpu_gather_path():
    images = random_images(64, 3, seed=4)
    cpu = BatchAugment(32, generator=torch.Generator().manual_seed(1))
    gpu = BatchAugment(32, device="cuda")
    assert cpu.gather and not gpu.gather
    params = cpu.draw_randaugment(64)
    expected = cpu.randaugment(torch.from_numpy(images).float(), params)
    got = gpu.randaugment(torch.from_numpy(images).float().cuda(), {k: v.cuda() for k, v in params.items()})
    assert torch.equal(expected, got.cpu())


def test_cuda_op_draws_follow_the_intended_distribution():
    aug = BatchAugment(32, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    params = aug.draw_randaugment(20_000)
    counts = torch.bincount(params["op"].flatten(), minlength=len(OPS)).cpu().numpy()
    assert chisquare(counts).pvalue > 1e-3
    assert abs(params["applied"].float().mean().item() - 0.5) < 0.01
    strong = aug.strong(torch.from_numpy(random_images(256, 3)).cuda())
    assert strong.device.type == "cuda" and 0 <= strong.min() and strong.max() <= 1


@pytest.mark.parametrize("switch", ["train.precision=fp32", "train.precision=bf16", "train.channels_last=false",
                                    "train.compile=true"])
@pytest.mark.parametrize("algorithm", ["supervised_la", "fixmatch", "semi"])
def test_a_few_steps_run_on_cuda_under_each_switch(tmp_path, switch, algorithm):
    if switch == "train.compile=true" and algorithm != "semi":
        pytest.skip("compile is checked once, on the algorithm with the most terms")
    extra = {"fixmatch": "algorithm.threshold=0.1", "semi": "algorithm.warmup_epochs=0"}.get(algorithm)
    config = tiny_config(*CUDA, "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2",
                         "train.epoch_length=2", switch, *([extra] if extra else []), algorithm=algorithm)
    results = start_run(config, tmp_path / "run", quiet=True)
    assert math.isfinite(results["top1"]) and results["iterations"] == 4


def test_resume_on_cuda_restores_generators_and_continues(tmp_path):
    config = tiny_config(*CUDA, "train.iterations=12", "train.checkpoint_every=6", "train.eval_every=6",
                         "train.epoch_length=6", "algorithm.warmup_epochs=0", algorithm="semi")
    straight = tmp_path / "straight"
    start_run(config, straight, quiet=True)
    interrupted = tmp_path / "interrupted"
    start_run(config, interrupted, quiet=True)
    (interrupted / "checkpoints" / "ckpt_00000012.pt").unlink()
    (interrupted / "results.json").unlink()
    resume_run(interrupted, quiet=True)
    a = load_checkpoint(straight / "checkpoints" / "ckpt_00000012.pt")
    b = load_checkpoint(interrupted / "checkpoints" / "ckpt_00000012.pt")
    # the random streams depend only on how many draws were made, so they must agree exactly
    assert torch.equal(a["augment"]["generator"], b["augment"]["generator"])
    assert torch.equal(a["unlabeled_stream"]["perm"], b["unlabeled_stream"]["perm"])
    assert a["iteration"] == b["iteration"] == 12
    # cuDNN may pick non-deterministic kernels, so the weights are compared with a tolerance
    for name, value in a["model"].items():
        if value.is_floating_point():
            np.testing.assert_allclose(value.float().numpy(), b["model"][name].float().numpy(),
                                       rtol=1e-2, atol=1e-3, err_msg=name)
