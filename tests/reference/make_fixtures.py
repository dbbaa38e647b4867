"""Writes the reference values the parity tests compare with (tests/reference/fixtures/*.json).

Run by hand, in a separate virtual environment (never in the project's dependencies):

    python3 -m venv /tmp/refvenv && . /tmp/refvenv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 scipy numpy
    pip install --no-deps semilearn==0.3.2
    git clone https://github.com/ytaek-oh/daso /tmp/daso   # the DASO framework (CReST+'s alignment)
    DASO_REPO=/tmp/daso python tests/reference/make_fixtures.py   # from the repository root

USB's ``semilearn`` 0.3.2 imports torchaudio, wandb, aim, transformers, timm and ruamel at import
time; none of them is needed for the arithmetic used here, so an import hook below gives empty stub
packages for them. The inputs are drawn from fixed seeds and written next to the outputs, so the
tests feed the project's implementation exactly what the reference got.

What each fixture holds, and where the project follows the method's authors instead of USB (the
tests check those departures on their own):
- darp.json: USB's DARP removal of small entries (``estimate_pseudo`` + rescaling) and its dual
  solver (``opt_solver``, scipy's secant root finder) on a 60 x 4 pool.
- daso.json: USB's DASO class queue (prototypes after a sequence of enqueues), the semantic
  pseudo-label distribution, the distribution-aware blend and the semantic alignment loss. USB takes
  the confidence mask on the unblended prediction; DASO's authors (and the project) on the blend.
- crest.json: USB's CReST selection of pseudo-labeled images per predicted class (``get_split``) on
  an exactly exponential labeled profile, and the DASO framework's distribution alignment
  (``lib/models/dist_align.py``: the 128-batch running mean; USB uses an exponential moving average).
- abc.json: USB's ABC loss for given Bernoulli masks (the project draws them from its own
  generator). USB's unlabeled ABC loss uses hard pseudo-labels; ABC's authors (and the project, by
  default) soft ones: the fixture holds both inputs, the hard-label value is compared with
  ``soft_targets: false``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

STUBBED = {"torchaudio", "wandb", "aim", "transformers", "timm", "ruamel"}
OUT = Path(__file__).resolve().parent / "fixtures"


class _Stub(types.ModuleType):
    __path__ = []  # a package, so that submodules import too

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _Stub(f"{self.__name__}()")

    def __mro_entries__(self, bases):
        return (object,)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def lists(value):
    if isinstance(value, torch.Tensor):
        return value.detach().double().tolist()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64).tolist()
    return value


def write(name: str, data: dict) -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({k: lists(v) for k, v in data.items()}, indent=None) + "\n")
    print("wrote", path)


def darp_fixture() -> None:
    from semilearn.imb_algorithms.darp.utils import DARPPseudoLabelingHook

    gen = torch.Generator().manual_seed(0)
    n, k = 60, 4
    logits = torch.randn(n, k, generator=gen) * 2.0 + torch.tensor([1.5, 0.5, 0.0, -0.5])
    predictions = torch.softmax(logits, dim=1)
    labeled_counts = np.array([20, 10, 5, 2])
    dist = labeled_counts / labeled_counts.sum()
    target = dist * n / dist.sum()  # USB's target: labeled proportions scaled to the pool size
    hook = DARPPseudoLabelingHook(warmup_epochs=0, alpha=2.0, iter_T=10, num_refine_iter=10,
                                  dataset_len=n, num_classes=k, target_disb=target)
    keep, weights = hook.estimate_pseudo(hook.target_disb, predictions)
    scale = keep * weights.reshape(1, -1)
    truncated = (predictions * scale + 1e-6) / (predictions * scale + 1e-6).sum(dim=1, keepdim=True)
    refined = hook.opt_solver(truncated, hook.target_disb, 10)
    write("darp", {"predictions": predictions, "labeled_counts": labeled_counts.tolist(), "alpha": 2.0,
                   "solver_iterations": 10, "newton_tol": 0.1, "target": target, "truncated": truncated,
                   "refined": refined})


def daso_fixture() -> None:
    from semilearn.core.criterions import ce_loss
    from semilearn.imb_algorithms.daso.utils import DASOFeatureQueue, DASOPseudoLabelingHook

    gen = torch.Generator().manual_seed(1)
    k, dim, size, b = 3, 5, 4, 6
    queue = DASOFeatureQueue(num_classes=k, feat_dim=dim, queue_length=size)
    pushes = []
    # three pushes; class 0 overflows its queue in the second (6 rows of class 0 > 4 slots), class 2 first
    # appears in the third
    for labels in ([0, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [2, 1, 1, 0, 2, 2]):
        features = torch.randn(len(labels), dim, generator=gen)
        queue.enqueue(features, torch.tensor(labels))
        pushes.append({"features": lists(features), "labels": labels})
    prototypes = queue.prototypes.clone()

    weak_features = torch.randn(b, dim, generator=gen)
    strong_features = torch.randn(b, dim, generator=gen)
    probs = torch.softmax(torch.randn(b, k, generator=gen) * 2, dim=1)
    similarity = torch.nn.CosineSimilarity(dim=2)
    t_proto, t_dist = 0.05, 1.5
    semantic = (similarity(weak_features.unsqueeze(1), prototypes.unsqueeze(0)) / t_proto).softmax(dim=1)
    strong_similarity = similarity(strong_features.unsqueeze(1), prototypes.unsqueeze(0)) / t_proto
    alignment_loss = ce_loss(strong_similarity, semantic, reduction="mean")

    pl_counts = [30.0, 12.0, 3.0]  # pseudo-label counts of the last period
    hook = DASOPseudoLabelingHook(num_classes=k, T_dist=t_dist, with_dist_aware=True, interp_alpha=0.5)
    hook.pseudo_label_dist = pl_counts
    algorithm = types.SimpleNamespace(it=100, num_pretrain_iter=10, T_dist=t_dist, with_dist_aware=True,
                                      interp_alpha=0.5, probs_sim=semantic)
    blended = hook.gen_ulb_targets(algorithm, probs, use_hard_label=False, softmax=False)
    algorithm.with_dist_aware = False
    blended_fixed = hook.gen_ulb_targets(algorithm, probs, use_hard_label=False, softmax=False)
    write("daso", {"num_classes": k, "queue_size": size, "pushes": pushes, "prototypes": prototypes,
                   "weak_features": weak_features, "strong_features": strong_features, "probs": probs,
                   "proto_temperature": t_proto, "dist_temperature": t_dist, "semantic": semantic,
                   "alignment_loss": float(alignment_loss), "pl_counts": pl_counts, "blended": blended,
                   "interp_alpha": 0.5, "blended_fixed": blended_fixed})


def abc_fixture() -> None:
    from semilearn.core.criterions import CELoss
    from semilearn.imb_algorithms.abc.abc import ABC

    gen = torch.Generator().manual_seed(2)
    k, b, bu = 3, 6, 8
    counts = np.array([12, 4, 2])
    algo = ABC.__new__(ABC)  # only the loss arithmetic: no network, data or optimizer
    algo.lb_class_dist = torch.from_numpy(np.min(counts) / counts)
    algo.abc_p_cutoff, algo.epoch, algo.epochs = 0.95, 3, 10
    algo.ce_loss = CELoss()
    algo.compute_prob = lambda logits: torch.softmax(logits, dim=-1)
    drawn = []

    def masks(rates):  # record the Bernoulli rates USB asks for, answer with fixed draws
        mask = (torch.rand(rates.shape, generator=gen) < rates).float()
        drawn.append({"rates": lists(rates), "mask": lists(mask)})
        return mask

    algo.bernouli_mask = masks
    labeled_logits = torch.randn(b, k, generator=gen)
    labels = torch.tensor([0, 0, 1, 2, 0, 1])
    weak_logits = torch.randn(bu, k, generator=gen) * 4
    strong_logits = [torch.randn(bu, k, generator=gen), torch.randn(bu, k, generator=gen)]
    loss = algo.compute_abc_loss(logits_x_lb=labeled_logits, y_lb=labels, logits_x_ulb_w=weak_logits,
                                 logits_x_ulb_s=strong_logits)
    write("abc", {"labeled_counts": counts.tolist(), "threshold": 0.95, "epoch": 3, "epochs": 10,
                  "labeled_logits": labeled_logits, "labels": labels.tolist(), "weak_logits": weak_logits,
                  "strong_logits": [lists(s) for s in strong_logits], "labeled_rates": drawn[0]["rates"],
                  "labeled_mask": drawn[0]["mask"], "unlabeled_rates": drawn[1]["rates"],
                  "unlabeled_bernoulli": drawn[1]["mask"], "loss": float(loss)})


def crest_fixture() -> None:
    import os

    from semilearn.imb_algorithms.crest.crest import CReST

    gen = torch.Generator().manual_seed(3)
    k, n = 3, 40
    counts = np.array([16, 4, 1])  # exactly exponential: gamma = 16
    probs = torch.softmax(torch.randn(n, k, generator=gen) * 3, dim=1)
    score, pred = probs.max(1)
    pseudo_label_list = []
    for c in range(k):  # as CReST.train() builds it after a generation
        idx = torch.where(pred == c)[0]
        pseudo_label_list.append(idx[torch.argsort(score[idx], descending=True)].numpy())
    algo = CReST.__new__(CReST)
    algo.lb_class_dist, algo.num_classes, algo.sampling_alpha = counts / counts.sum(), k, 3.0
    np.math = __import__("math")  # numpy 2 dropped np.math, which get_split uses
    lb_data = np.full(5, -1)
    data, targets = algo.get_split(lb_data, np.zeros(5, dtype=int), np.arange(n), np.zeros(n, dtype=int),
                                   pseudo_label_list)
    picked = data >= 0  # the pool positions that joined (eval_ulb "images" are their positions)

    # the DASO framework's DistributionAlignment, read from its repository
    source = (Path(os.environ["DASO_REPO"]) / "lib" / "models" / "dist_align.py").read_text()
    namespace: dict = {}
    exec(compile(source, "dist_align.py", "exec"), namespace)
    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(DIST_ALIGN=types.SimpleNamespace(TEMPERATURE=1.0)),
                                GPU_ID="cpu")
    target = torch.tensor(counts / counts.sum(), dtype=torch.float32)
    aligner = namespace["DistributionAlignment"](cfg, target)
    aligner.avg_pred.max_size = 3  # a short window, so that the fixture's 5 steps wrap around it
    batches, aligned = [], []
    for step in range(5):
        p = torch.softmax(torch.randn(4, k, generator=gen) * 2, dim=1)
        batches.append(lists(p))
        aligned.append(lists(aligner(p, temperature=0.75)))
    write("crest", {"labeled_counts": counts.tolist(), "alpha": 3.0, "probs": probs,
                    "picked_positions": data[picked].tolist(), "picked_labels": targets[picked].tolist(),
                    "window": 3, "temperature": 0.75, "batches": batches, "aligned": aligned})


def main() -> None:
    sys.meta_path.insert(0, _StubFinder())
    torch.set_default_dtype(torch.float32)
    darp_fixture()
    daso_fixture()
    abc_fixture()
    crest_fixture()


if __name__ == "__main__":
    main()
