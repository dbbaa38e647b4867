"""The CUDA path: data on the device, batched augmentation there, training under each switch, resume.

Skipped without a GPU (CI has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import math

import pytest
import torch
from helpers import ACTIVE_TERMS, tiny_config
from scipy.stats import chisquare
from test_augment import random_images

from cissl.data.augment import OPS, BatchAugment
from cissl.data.augment_graph import GraphedViews
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.data import prepare_data
from cissl.engine.run import resume_run, start_run
from cissl.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = ["train.device=cuda"]


def cuda_trainer(tmp_path, *overrides, algorithm="fixmatch"):
    config = tiny_config(*CUDA, *overrides, algorithm=algorithm)
    device = torch.device("cuda")
    return Trainer.from_config(config, prepare_data(config, device), tmp_path, device=device)


def test_images_live_on_the_device_and_batches_are_seeded(tmp_path):
    a = cuda_trainer(tmp_path)
    b = cuda_trainer(tmp_path)
    for pool in (a.data.labeled, a.data.unlabeled):
        assert pool.images.device.type == "cuda" and pool.images.dtype == torch.uint8
    for _ in range(3):
        (batch_a, truth_a), (batch_b, truth_b) = a.batches.next(), b.batches.next()
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


@pytest.mark.parametrize("channels,size,cutout", [(3, 32, 16), (1, 28, 14)])
def test_views_replayed_from_cuda_graphs_equal_eager_views(channels, size, cutout):
    def augmenter():
        return BatchAugment(size, cutout=cutout, generator=torch.Generator(device="cuda").manual_seed(7), device="cuda")

    eager, graphed = augmenter(), GraphedViews(augmenter())
    for n in (64, 128, 64):  # a second shape gets its own graph; the first is replayed again
        images = torch.from_numpy(random_images(n, channels, size=size, seed=n)).cuda()
        assert torch.equal(eager.weak(images), graphed.weak(images))
        first = graphed.strong(images)
        assert torch.equal(eager.strong(images), first)
        second = graphed.strong(images)  # the replay must not overwrite what was returned before
        assert torch.equal(eager.strong(images), second) and not torch.equal(first, second)
    assert torch.equal(eager.generator.get_state(), graphed.augment.generator.get_state())


def test_cuda_op_draws_follow_the_intended_distribution():
    aug = BatchAugment(32, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    params = aug.draw_randaugment(20_000)
    counts = torch.bincount(params["op"].flatten(), minlength=len(OPS)).cpu().numpy()
    assert chisquare(counts).pvalue > 1e-3
    assert abs(params["applied"].float().mean().item() - 0.5) < 0.01
    strong = aug.strong(torch.from_numpy(random_images(256, 3)).cuda())
    assert strong.device.type == "cuda" and 0 <= strong.min() and strong.max() <= 1


@pytest.mark.parametrize("switch", ["train.precision=fp32", "train.precision=bf16", "train.channels_last=false",
                                    "train.compile=true", "train.compile=true,train.compile_mode=reduce-overhead",
                                    "train.cuda_graphs=false", "train.cudnn_benchmark=false", "optim.fused=true"])
@pytest.mark.parametrize("algorithm", ["supervised_la", "fixmatch", "semi"])
def test_a_few_steps_run_on_cuda_under_each_switch(tmp_path, switch, algorithm):
    if switch.startswith("train.compile=true") and algorithm != "semi":
        pytest.skip("compile is checked once, on the algorithm with the most terms")
    extra = {"fixmatch": "algorithm.threshold=0.1", "semi": "algorithm.warmup_epochs=0"}.get(algorithm)
    config = tiny_config(*CUDA, "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2",
                         "train.epoch_length=2", *switch.split(","), *([extra] if extra else []), algorithm=algorithm)
    results = start_run(config, tmp_path / "run", quiet=True)
    assert math.isfinite(results["top1"]) and results["iterations"] == 4


@pytest.fixture
def deterministic_cuda():
    """cuDNN and PyTorch's deterministic kernels for one test (warn where an op has none)."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def max_weight_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def test_resume_on_cuda_restores_generators_and_continues(tmp_path, deterministic_cuda):
    config = tiny_config(*CUDA, "train.iterations=12", "train.checkpoint_every=6", "train.eval_every=6",
                         "train.epoch_length=6", "algorithm.warmup_epochs=0", "train.cudnn_benchmark=false",
                         algorithm="semi")
    for name in ("straight", "again", "interrupted"):
        start_run(config, tmp_path / name, quiet=True)
    (tmp_path / "interrupted" / "checkpoints" / "ckpt_00000012.pt").unlink()
    (tmp_path / "interrupted" / "results.json").unlink()
    resume_run(tmp_path / "interrupted", quiet=True)
    a, again, b = (load_checkpoint(tmp_path / name / "checkpoints" / "ckpt_00000012.pt")
                   for name in ("straight", "again", "interrupted"))
    # the random streams depend only on how many draws were made, so they must agree exactly
    assert torch.equal(a["augment"]["generator"], b["augment"]["generator"])
    assert torch.equal(a["unlabeled_stream"]["perm"], b["unlabeled_stream"]["perm"])
    assert a["iteration"] == b["iteration"] == 12
    # a resumed run may differ from a straight one only as much as two straight runs do
    noise = max_weight_difference(a["model"], again["model"])
    drift = max_weight_difference(a["model"], b["model"])
    print(f"max weight difference: straight vs straight {noise:.3g}, straight vs resumed {drift:.3g}")
    assert drift == 0.0 if noise == 0.0 else drift <= 10 * noise




# the passes between steps read predictions back to the host by design (SEVAL's fit, CoSSL's stage): the
# checked steps 6-9 fall between them here (SEVAL fits every 1000 steps; CoSSL's stage is after step 4)
BETWEEN_PASSES = {"fixmatch_seval": ["algorithm.fit_every=1000"],
                  "fixmatch_cossl": ["algorithm.pretrain_fraction=0.25"]}


@pytest.mark.parametrize("algorithm", ["supervised_la", "fixmatch", "semi", "fixmatch_darp", "fixmatch_daso",
                                       "fixmatch_abc", "fixmatch_abc_daso", "fixmatch_la_crest_plus", "acr",
                                       "fixmatch_debiaspl", "fixmatch_tras", "fixmatch_seval", "fixmatch_cossl"])
def test_a_training_step_never_waits_for_the_device(tmp_path, algorithm):
    """A step that synchronises with the GPU (``.item()``, a blocking copy, boolean indexing) stalls
    the host until the device is idle, so the next step's launches cannot overlap this step's work."""
    extra = ACTIVE_TERMS.get(algorithm, []) + (["algorithm.generations=1"] if "crest" in algorithm else [])
    extra += BETWEEN_PASSES.get(algorithm, [])
    trainer = cuda_trainer(tmp_path, "train.epoch_length=2", *extra, algorithm=algorithm)
    for _ in range(6):  # past the warm-up (every SeMi term active) and every graph capture
        trainer.train_step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):  # includes a bank decay and a class-weight refresh (every 2 steps here)
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_torchrun_with_nccl_trains_and_resumes_on_one_gpu(tmp_path):
    """World size 1 under torchrun on a one-GPU machine: NCCL, the rank on cuda:0, CUDA-graph views,
    rank 0 writing, and a resume from the middle (the streams and state restored; weights not compared:
    cuDNN's kernels are not deterministic by default)."""
    from test_distributed import torchrun

    run = tmp_path / "run"
    args = ["-m", "cissl", "train", "--config", "configs/quickstart.yaml", "--out", run, "--algorithm", "semi",
            "model.depth=10", "model.widen=1", "train.iterations=24", "train.eval_every=8", "train.log_every=4",
            "train.checkpoint_every=8", "train.report_last=1", "train.device=cuda", *ACTIVE_TERMS["semi"]]
    result = torchrun(*args, processes=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP over 1 ranks (nccl)" in result.stdout and "device cuda:0" in result.stdout
    (run / "checkpoints" / "ckpt_00000024.pt").unlink()
    (run / "results.json").unlink()
    result = torchrun("-m", "cissl", "train", "--resume", run, processes=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "ckpt_00000024.pt")["iteration"] == 24
