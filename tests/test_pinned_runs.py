"""Short runs whose final weights are pinned: a refactor that changes any number fails here.

The digests were taken from the code before the engine was split into parts (contract v2), on
this project's CI kind of machine: CPU PyTorch 2.13.0, AVX512 kernels, 2 threads, and later, from code
that still gave those, on a machine with AVX2 kernels. Floating-point results depend on all three, so on
any other setup the test is skipped with the reason. They also depend on
the processor beyond these: a second kind of machine with the same three gives other bits for the same
code (capping oneDNN's or MKL's instruction set there does not bring the first kind's bits back; why
it differs is not known), so each kind's digests are kept,
and a run must match those of one kind. No code change reproduces another machine's 64-bit digest,
so either set still catches any change of a number.
"""

import hashlib

import pytest
import torch
from helpers import tiny_config

from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.run import start_run

PINNED_ON = {("2.13.0+cpu", "AVX512", 2), ("2.13.0+cpu", "AVX2", 2)}
SETTINGS = {  # SeMi: every term on from iteration 2, a non-empty mask, bank decay every 2 steps
    "supervised_la": [],
    "fixmatch": ["algorithm.threshold=0.3"],
    "semi": ["algorithm.threshold=0.3", "algorithm.warmup_epochs=0", "train.epoch_length=2",
             "algorithm.bank.decay_step=2", "algorithm.bank.capacity=8"],
}
DIGESTS = {  # machine kind -> algorithm -> digest of the final model and EMA weights
    # the CI kind of 2026-12-01, from the code before contract v2
    "kind A (2026-12-01)": {"supervised_la": "d18561da1c8ef974", "fixmatch": "648b952539806580",
                            "semi": "0c7acefbb9c2a858"},
    # a Xeon with AMX tiles and a 480 MiB L3 (2026-12-02): the same digests from the code before
    # contract v2 (d325b47) and from 45d9c5e, which gives kind A's digests on kind A
    "kind B (2026-12-02)": {"supervised_la": "d693d07e0715cbd3", "fixmatch": "2b88329efe7c98b5",
                            "semi": "c642270c427e9967"},
    # an AMD EPYC with AVX2 kernels and an 8 MiB L3 (2026-12-02), from 9189476, whose run code is that of
    # 01c5c5c, which gives kind B's digests on kind B; the same digests twice, with the other core busy
    # (also on an AMD EPYC of cpu family 25, model 1, 32 MiB L3, 2026-12-03, from 5f7c209, where whole
    # Fashion-LT runs gave kind C's printed values back as well)
    "kind C (2026-12-02)": {"supervised_la": "0b8e0301ea698a21", "fixmatch": "d817be7d75974cd4",
                            "semi": "05c371d1b28b08d9"},
}


def weights_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for part in ("model", "ema"):
        for name in sorted(state[part]):
            digest.update(name.encode())
            digest.update(state[part][name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("algorithm", list(SETTINGS))
def test_short_run_final_weights_are_pinned(tmp_path, algorithm):
    here = (torch.__version__, torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
    if here not in PINNED_ON:
        pytest.skip(f"digests pinned on {sorted(PINNED_ON)}, this is {here}")
    config = tiny_config("train.iterations=6", "train.eval_every=3", "train.checkpoint_every=6",
                         *SETTINGS[algorithm], algorithm=algorithm)
    start_run(config, tmp_path / "run", quiet=True)
    digest = weights_digest(load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000006.pt"))
    known = {kind: digests[algorithm] for kind, digests in DIGESTS.items()}
    assert digest in known.values(), (
        f"{algorithm}: final weights {digest}, pinned {known}: a number changed, or this is a new kind "
        f"of machine (record its digests only from code that matches a known kind's)")
