import math

import pytest
import torch
from helpers import tiny_config

from cissl.engine.data import prepare_data
from cissl.engine.run import start_run
from cissl.engine.trainer import Trainer


@pytest.mark.parametrize("switch", ["train.precision=bf16", "train.channels_last=false", "train.channels_last=true",
                                    "train.compile=true"])
@pytest.mark.parametrize("algorithm", ["fixmatch", "semi"])
def test_a_few_steps_run_under_each_switch(tmp_path, switch, algorithm):
    config = tiny_config("train.iterations=3", "train.eval_every=3", "train.checkpoint_every=3", switch,
                         "algorithm.threshold=0.1" if algorithm == "fixmatch" else "algorithm.warmup_epochs=0",
                         algorithm=algorithm)
    results = start_run(config, tmp_path / "run", quiet=True)
    assert math.isfinite(results["top1"]) and results["iterations"] == 3


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: calls.append(kwargs) or module)
    config = tiny_config("train.compile=true", "train.compile_mode=reduce-overhead")
    Trainer.from_config(config, prepare_data(config, torch.device("cpu")), tmp_path)
    assert calls == [{"mode": "reduce-overhead"}]
