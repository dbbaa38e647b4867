import math
import warnings

import pytest
import torch
from helpers import tiny_config

from cissl.engine.data import prepare_data
from cissl.engine.precision import ComputePolicy
from cissl.engine.run import start_run
from cissl.engine.trainer import Trainer


@pytest.mark.parametrize("switch", ["train.precision=bf16", "train.channels_last=false", "train.channels_last=true",
                                    "train.compile=true"])
@pytest.mark.parametrize("algorithm", ["fixmatch", "semi"])
def test_a_few_steps_run_under_each_switch(tmp_path, switch, algorithm):
    # SeMi's own terms run from epoch E_w + 1: with epochs of one step, from the second step
    extra = ["algorithm.threshold=0.1"] if algorithm == "fixmatch" else ["algorithm.warmup_epochs=0",
                                                                         "train.epoch_length=1"]
    config = tiny_config("train.iterations=3", "train.eval_every=3", "train.checkpoint_every=3", switch, *extra,
                         algorithm=algorithm)
    try:
        results = start_run(config, tmp_path / "run", quiet=True)
    finally:  # PyTorch 2.4's compiled CPU kernels turn on flushing denormals for the whole process (linked with
        # -ffast-math; pytorch/pytorch#126848; 2.13 does not): the tests after this one must not inherit it
        torch.set_flush_denormal(False)
    assert math.isfinite(results["top1"]) and results["iterations"] == 3


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: calls.append(kwargs) or module)
    config = tiny_config("train.compile=true", "train.compile_mode=reduce-overhead")
    Trainer.from_config(config, prepare_data(config, torch.device("cpu")), tmp_path)
    assert calls == [{"mode": "reduce-overhead"}]


def test_a_compiled_backbone_is_the_one_the_forward_runs_and_the_weights_stay_the_backbones(monkeypatch):
    from cissl.config import ModelConfig
    from cissl.models import build_model

    model = build_model(ModelConfig(depth=10, widen=1), 3, 4, (0.5,) * 3, (0.25,) * 3, 0)
    keys = list(model.state_dict())
    calls = []

    def compile_(module, **kwargs):
        def compiled(x):
            calls.append(kwargs)
            return module(x)
        return compiled

    monkeypatch.setattr(torch, "compile", compile_)
    model.compile_backbone(mode="max-autotune")
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x).features, model.backbone((x - 0.5) / 0.25))
    assert calls == [{"mode": "max-autotune"}]  # the forward above went through the compiled backbone
    assert list(model.state_dict()) == keys


def test_the_policy_and_the_device_a_config_names(monkeypatch):
    from cissl.engine import precision
    from cissl.engine.precision import ComputePolicy, resolve_device
    from cissl.errors import ConfigError

    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"^config key 'train.device': {name} requested but CUDA is not "
                                              f"available; use cpu or auto$"):
            resolve_device(name)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    policy = ComputePolicy.from_config(tiny_config("train.precision=bf16", "train.channels_last=false").train,
                                       torch.device("cpu"))
    assert (policy.precision, policy.channels_last, policy.memory_format) == ("bf16", False, torch.contiguous_format)
    with policy.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    fast = ComputePolicy(torch.device("cpu"))
    with fast.autocast():
        assert not torch.is_autocast_enabled("cpu")
    images = fast.images(torch.rand(2, 3, 4, 4))
    assert images.is_contiguous(memory_format=torch.channels_last)
    conv = fast.place(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert ComputePolicy.from_config(tiny_config("train.device=cpu").train).device == torch.device("cpu")


def test_cudnn_autotuning_is_switched_only_for_cuda_runs(monkeypatch):
    from cissl.engine.precision import configure_backends

    before = torch.backends.cudnn.benchmark
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)  # restored after the test
    configure_backends(tiny_config(f"train.cudnn_benchmark={str(not before).lower()}").train, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is before
    for wanted in (True, False):
        configure_backends(tiny_config(f"train.cudnn_benchmark={str(wanted).lower()}").train, torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark is wanted


def test_bf16_autocasts_to_bfloat16_on_a_gpu_too():
    """CUDA's autocast defaults to float16 (the CPU's to bfloat16): the policy names bfloat16 itself."""
    with warnings.catch_warnings():  # without a GPU, torch disables CUDA autocast with a warning; its dtype is set
        warnings.simplefilter("ignore")
        on_gpu = ComputePolicy(torch.device("cuda"), "bf16").autocast()
    assert on_gpu.device == "cuda" and on_gpu.fast_dtype == torch.bfloat16
