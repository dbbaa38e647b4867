"""Writes the reference values the parity tests compare with (tests/reference/fixtures/*.json).

Run by hand, in a separate virtual environment (never in the project's dependencies):

    python3 -m venv /tmp/refvenv && . /tmp/refvenv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 scipy numpy
    pip install --no-deps semilearn==0.3.2
    git clone https://github.com/ytaek-oh/daso /tmp/daso   # the DASO framework (CReST+'s alignment)
    git clone https://github.com/Gank0078/ACR /tmp/acr      # ACR's authors' code
    git clone https://github.com/Stomach-ache/TRAS /tmp/tras  # TRAS's authors' code
    git clone https://github.com/ZerojumpLine/SEVAL /tmp/seval  # SEVAL's authors' code
    git clone https://github.com/YUE-FAN/CoSSL /tmp/cossl       # CoSSL's authors' code
    # from the repository root:
    DASO_REPO=/tmp/daso ACR_REPO=/tmp/acr TRAS_REPO=/tmp/tras SEVAL_REPO=/tmp/seval COSSL_REPO=/tmp/cossl \
        python tests/reference/make_fixtures.py [NAME ...]   # NAME: e.g. seval; none: every fixture

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
- acr.json: ACR's own step arithmetic, executed from its train.py (the lines from the balanced
  head's labeled loss to the total loss, and the per-epoch tau1 update; ``.cuda()`` removed to run on
  the CPU) over three epochs of fixed logits, epoch 0 before the estimation starts.
- darp_estimate.json: the DASO framework's estimate of the unlabeled class counts for DARP
  (``lib/algorithm/darp_estim.py``: ``confusion`` and ``estimate_q_y``, executed on fixed soft
  predictions through a stand-in model).
- darp_estimate_mean.json: the DASO framework's combination of a run's estimates: ``DARP_ESTIM.evaluate``
  (its acceptance rule and running sum) executed on a stand-in trainer over four evaluations of
  different stand-in models (one accepted, one with a negative count, one ill-conditioned, one
  accepted), then ``final_q / n_infer`` as its ``train`` ends. Written with torch 2.13.0 (the project's),
  not the venv's 2.14.1: DASO's code here needs only torch and numpy; the two differ in the last float32
  bit at most (darp_estimate.json regenerated under 2.13.0 moves one count by 1e-6).
- abc.json: USB's ABC loss for given Bernoulli masks (the project draws them from its own
  generator). USB's unlabeled ABC loss uses hard pseudo-labels; ABC's authors (and the project, by
  default) soft ones: the fixture holds both inputs, the hard-label value is compared with
  ``soft_targets: false``.
- debiaspl.json: USB's DebiasPL over three steps: the class-frequency estimate p_hat, the debiased
  probabilities, FixMatch's mask on them and the consistency loss with the logit offset. USB's loss
  takes the p_hat of before the step's update (its hook sets it first); the project uses the updated
  one in both places, as the authors' code uses one p_hat for both: the fixture holds both values.
- saw.json: USB's SAW effective-number class weights (labeled; unlabeled before and after an epoch's
  pool predictions) and its weighted labeled and consistency losses.
- tras.json: TRAS's own step arithmetic, executed from its authors' train.py (helpers and the step
  block; ``.cuda()`` removed) on a stand-in network whose teacher and student classifiers look logits
  up by image id. USB's TRAS departs from it (its log-prior has the opposite sign, N_min / N_k; the
  student's targets come from its own weak-view logits, not the teacher's strong-view ones; one strong
  view): the project follows the authors.
- seval.json: SEVAL's own fits, executed from its authors' code: ``OptimizePi`` and ``OptimizeTH``
  (``lib/models/losses/optimizepi.py``, ``optimizeth.py``) and the methods ``optimize_pi`` and
  ``optimize_threshold`` of ``lib/algorithm/seval.py`` bound to a stand-in trainer whose EMA model looks
  validation logits up by image id, over three fits in two settings (the authors' defaults with faster
  averages, and the recall objective with learned alpha, threshold groups and an offset warm-up); then
  the pseudo-label lines of its ``run_step`` (refined softmax, per-class mask) on fixed weak logits.
  pandas, which ``optimizeth.py`` uses only to count rows, is replaced by a stand-in that counts them.
  Before the offsets' warm-up ends, the authors' ``optimize_pi`` raises (its logging reads ``acc_post``,
  which only the fit sets) after changing nothing: the script goes on with ``optimize_threshold``, which
  is what the warm-up means (and what the project does).
- cossl.json: CoSSL's own arithmetic, executed from its authors' code: the classifier warm-up's
  ``weight_imprint``, ``TFE`` and ``classifier_train`` (``utils/tfe_init.py``) on a stand-in network
  whose embeddings are looked up by image id (their random choices and Beta draws recorded), and the
  co-learning step's block of ``train_cifar_fix_cossl.py`` from the pseudo-labels to the teacher loss
  (its ``random.random`` and ``np.random.uniform`` draws recorded). USB 0.3.2's CoSSL is not used: its
  training-time TFE indexes the mixing probability by ``label.argmax()`` of an integer label.
- adsh.json: USB's ADSH adaptive thresholds over four pools (a confident head; a class predicted
  once; no head prediction above tau_1; int(n_k * rho) - 1 = -1 and a class never predicted) and
  the masks before and after the update.
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


def _acr_blocks(source: str) -> tuple[str, str, str]:
    """ACR's adjustment helper, its step block and its epoch-start block, cut from train.py by their
    first and last statements (dedented; ``.cuda()`` removed)."""
    import textwrap

    def cut(first: str, last: str) -> str:
        start = source.index(first)
        start = source.rindex("\n", 0, start) + 1
        end = source.index("\n", source.index(last, start))
        return textwrap.dedent(source[start:end]).replace(".cuda()", "")

    helper = cut("def compute_adjustment_by_py", "return adjustments\n\n\ndef main")
    step = cut("Lx_b = F.cross_entropy(logits_x_b + args.adjustment_l2", "loss = Lx + Lu + Lx_b + Lu_b")
    epoch = cut("if epoch > args.est_epoch:\n            count_KL = count_KL / args.eval_step",
                "args.adjustment_l1 = compute_adjustment_by_py(args.py_con, tau, args)")
    return helper, step, epoch


def acr_fixture() -> None:
    import math
    import os

    import torch.nn as nn
    import torch.nn.functional as F

    source = (Path(os.environ["ACR_REPO"]) / "train.py").read_text()
    helper, step_block, epoch_block = _acr_blocks(source)
    gen = torch.Generator().manual_seed(4)
    k, b, bu, steps_per_epoch = 4, 6, 5, 3
    counts = np.array([12, 6, 3, 1])
    py_con = torch.from_numpy(counts / counts.sum())
    namespace = {"torch": torch, "np": np, "F": F, "nn": nn, "math": math}
    exec(helper, namespace)
    args = types.SimpleNamespace(device="cpu", num_classes=k, T=1.0, threshold=0.6, est_epoch=0,
                                 eval_step=steps_per_epoch,
                                 ema_u=0.9, est_step=0, py_con=py_con, py_uni=torch.ones(k, dtype=torch.float64) / k,
                                 py_rev=torch.flip(py_con, dims=[0]), taumin=0, taumax=2.0,
                                 u_py=torch.ones(k) / k)
    adjust = namespace["compute_adjustment_by_py"]
    args.adjustment_l1, args.adjustment_l12, args.adjustment_l2 = (adjust(py_con, 2.0, args),) * 3
    count_kl = torch.zeros(3)
    steps = []
    for epoch in range(3):
        scope = {**namespace, "args": args, "epoch": epoch, "count_KL": count_kl}
        exec(epoch_block + "\ncount_KL = torch.zeros(3)", scope)
        count_kl = scope["count_KL"]
        tau_used = args.adjustment_l1.clone()
        for _ in range(steps_per_epoch):
            inputs = {"logits_x": torch.randn(b, k, generator=gen), "logits_x_b": torch.randn(b, k, generator=gen),
                      "targets_x": torch.randint(0, k, (b,), generator=gen),
                      "logits_u_w": torch.randn(bu, k, generator=gen) * 3,
                      "logits_u_w_b": torch.randn(bu, k, generator=gen) * 3,
                      "logits_u_s": torch.randn(bu, k, generator=gen), "logits_u_s1": torch.randn(bu, k, generator=gen),
                      "logits_u_s_b": torch.randn(bu, k, generator=gen),
                      "logits_u_s1_b": torch.randn(bu, k, generator=gen)}
            scope = {**namespace, **inputs, "args": args, "epoch": epoch, "count_KL": count_kl,
                     "KL_div": nn.KLDivLoss(reduction="sum"), "u_real": torch.zeros(bu, dtype=torch.long),
                     "mask_l": torch.ones(bu, dtype=torch.bool)}
            scope["Lx"] = F.cross_entropy(inputs["logits_x"], inputs["targets_x"], reduction="mean")
            exec(step_block, scope)
            count_kl = scope["count_KL"]
            steps.append({**{key: lists(value) for key, value in inputs.items()}, "epoch": epoch,
                          "adjustment_l1": lists(tau_used), "loss": float(scope["loss"]),
                          "Lu": float(scope["Lu"]), "Lu_b": float(scope["Lu_b"]), "Lx_b": float(scope["Lx_b"]),
                          "u_py": lists(args.u_py), "count_KL": lists(count_kl)})
    write("acr", {"labeled_counts": counts.tolist(), "threshold": 0.6, "est_epoch": 0, "ema_u": 0.9,
                  "epoch_length": steps_per_epoch, "steps": steps})


class LogitLookup(torch.nn.Module):
    """A stand-in model: its "images" are row numbers into a table of logits."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x.long()]


def daso_darp_estim(*methods: str) -> dict:
    """The DASO framework's ``confusion`` and ``estimate_q_y`` (lib/algorithm/darp_estim.py), and the named
    methods of its ``DARP_ESTIM`` as plain functions, executed without the framework's imports."""
    import ast
    import os

    import numpy.linalg

    tree = ast.parse((Path(os.environ["DASO_REPO"]) / "lib" / "algorithm" / "darp_estim.py").read_text())
    functions = [node for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name in ("confusion", "estimate_q_y")]
    if methods:
        cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "DARP_ESTIM")
        functions += [node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name in methods]
    namespace = {"torch": torch, "np": np, "cond": numpy.linalg.cond, "inv": numpy.linalg.inv,
                 "get_last_n_median": lambda values, n=20: float(np.median(np.asarray(values)[-n:]))}
    exec(compile(ast.Module(body=functions, type_ignores=[]), "darp_estim.py", "exec"), namespace)
    return namespace


def darp_estimate_fixture() -> None:
    namespace = daso_darp_estim()

    gen = torch.Generator().manual_seed(5)
    k = 3
    val_logits = torch.randn(12, k, generator=gen) * 2 + torch.eye(k).repeat(4, 1) * 3
    val_labels = torch.arange(k).repeat(4)
    pool_logits = torch.randn(30, k, generator=gen) * 2

    model = LogitLookup(torch.cat([val_logits, pool_logits]))  # rows 0-11 validation, 12-41 the pool
    val_loader = [(torch.arange(12), val_labels, None)]
    pool_loader = [(torch.arange(12, 42), torch.full((30,), -1), None)]
    estimate, condition = namespace["estimate_q_y"](val_loader, pool_loader, model, k, "cpu")
    write("darp_estimate", {"val_probs": torch.softmax(val_logits, 1), "val_labels": val_labels.tolist(),
                            "pool_probs": torch.softmax(pool_logits, 1), "counts": estimate,
                            "condition": float(condition)})


def darp_estimate_mean_fixture() -> None:
    import collections

    namespace = daso_darp_estim("evaluate")

    gen = torch.Generator().manual_seed(11)
    k, per_class, pool = 3, 4, 30
    val_labels = torch.arange(k).repeat(per_class)
    sharp = torch.eye(k).repeat(per_class, 1)
    evaluations = []
    for kind in ("accepted", "negative", "ill-conditioned", "accepted"):
        scale = {"accepted": 3.0, "negative": 3.0, "ill-conditioned": 0.01}[kind]
        val_logits = torch.randn(k * per_class, k, generator=gen) * (0.002 if kind == "ill-conditioned" else 0.5)
        val_logits += sharp * scale
        pool_logits = torch.randn(pool, k, generator=gen) * 2
        if kind == "negative":  # the whole pool predicted as class 0 more surely than any validation image
            pool_logits[:, 0] += 20.0
        if kind == "ill-conditioned":  # validation rows again, so the counts come out non-negative
            pool_logits = val_logits.repeat(3, 1)[:pool]
        evaluations.append((kind, val_logits, pool_logits))

    trainer = types.SimpleNamespace(
        th_cond=100.0, ul_samples_per_class=None, n_infer=0, final_q=torch.zeros(k), best_acc=0.0,
        num_classes=k, device="cpu", test_loader=None, cfg=types.SimpleNamespace(EVAL_ON_TEST_SET=False),
        eval_history=collections.defaultdict(list), meters=types.SimpleNamespace(put_scalars=lambda metrics: None),
        valid_loader=[(torch.arange(k * per_class), val_labels, None)],
        ul_loader=[(torch.arange(k * per_class, k * per_class + pool), torch.full((pool,), -1), None)])
    trainer.eval_loop = lambda model, loader, prefix="": {"top1": 50.0}
    records = []
    for kind, val_logits, pool_logits in evaluations:
        trainer.model = LogitLookup(torch.cat([val_logits, pool_logits]))
        before = trainer.n_infer
        namespace["evaluate"](trainer, trainer.model)
        records.append({"kind": kind, "val_probs": lists(torch.softmax(val_logits, 1)),
                        "pool_probs": lists(torch.softmax(pool_logits, 1)), "accepted": trainer.n_infer > before})
    write("darp_estimate_mean", {"val_labels": val_labels.tolist(), "max_condition": trainer.th_cond,
                                 "evaluations": records, "n_infer": trainer.n_infer,
                                 "final_q": trainer.final_q / trainer.n_infer})  # DARP_ESTIM.train's last lines


def debiaspl_fixture() -> None:
    from semilearn.core.criterions import consistency_loss
    from semilearn.imb_algorithms.debiaspl.debiaspl import DebiasPL
    from semilearn.imb_algorithms.debiaspl.utils import DebiasPLConsistencyLoss

    gen = torch.Generator().manual_seed(6)
    k, bu, steps = 4, 6, 3
    algo = DebiasPL.__new__(DebiasPL)  # only compute_prob's arithmetic: no network, data or optimizer
    algo.tau, algo.ema_p, algo.ema_m = 0.4, 0.999, 0.999  # USB mixes ema_m and ema_p; equal here
    algo.p_hat = torch.ones(k) / k
    loss_fn = DebiasPLConsistencyLoss(tau=0.4)
    records = []
    for _ in range(steps):
        weak = torch.randn(bu, k, generator=gen) * 3 + torch.tensor([2.0, 1.0, 0.0, -1.0])
        strong = torch.randn(bu, k, generator=gen) * 2
        before = algo.p_hat.clone()
        probs = algo.compute_prob(weak)  # updates p_hat, then the debiased probabilities
        confidence, labels = probs.max(1)
        mask = confidence.ge(0.95).float()  # USB FixMatch's masking hook on these probabilities
        loss_fn.set_param(before)           # USB: the hook set p_hat before this step's update
        loss_usb = loss_fn(strong, labels, "ce", mask=mask)
        loss_fn.set_param(algo.p_hat)
        loss_updated = loss_fn(strong, labels, "ce", mask=mask)
        plain = consistency_loss(strong, labels, "ce", mask=mask)
        records.append({"weak_logits": lists(weak), "strong_logits": lists(strong), "p_hat": lists(algo.p_hat),
                        "probs": lists(probs), "labels": labels.tolist(), "mask": lists(mask),
                        "loss_usb": float(loss_usb), "loss": float(loss_updated), "loss_plain": float(plain)})
    write("debiaspl", {"num_classes": k, "tau": 0.4, "momentum": 0.999, "threshold": 0.95, "steps": records})


def saw_fixture() -> None:
    from semilearn.imb_algorithms.saw.utils import SAWCELoss, SAWConsistencyLoss, SAWWeightsHook

    gen = torch.Generator().manual_seed(7)
    k, n = 4, 40
    counts = torch.tensor([12, 5, 2, 1])
    hook = SAWWeightsHook(y_lb_cnt=counts, num_ulb=n)
    algo = types.SimpleNamespace(gpu="cpu", num_classes=k, print_fn=lambda *a: None)
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **kw: self  # the hook moves its weights to a GPU
    try:
        hook.before_run(algo)
        initial_lb, initial_ulb = algo.x_lb_weights.clone(), algo.x_ulb_weights.clone()
        # class 3 is never predicted: its count is clamped to 1
        pool_logits = torch.randn(n, k, generator=gen) * 2 + torch.tensor([3.0, 1.5, 0.5, -9.0])
        algo.evaluate = lambda name, return_logits: {"eval_ulb/logits": pool_logits.numpy()}
        hook.after_train_epoch(algo)
    finally:
        torch.Tensor.cuda = cuda
    ce, cons = SAWCELoss(), SAWConsistencyLoss()
    ce.set_weights(initial_lb)
    cons.set_weights(algo.x_ulb_weights)
    labeled_logits = torch.randn(6, k, generator=gen)
    labels = torch.tensor([0, 0, 1, 2, 3, 0])
    strong = torch.randn(5, k, generator=gen)
    targets = torch.tensor([0, 1, 0, 2, 3])
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    write("saw", {"labeled_counts": counts.tolist(), "pool_size": n, "labeled_weights": initial_lb,
                  "initial_unlabeled_weights": initial_ulb, "pool_logits": pool_logits,
                  "unlabeled_weights": algo.x_ulb_weights, "labeled_logits": labeled_logits,
                  "labels": labels.tolist(), "labeled_loss": float(ce(labeled_logits, labels)),
                  "strong_logits": strong, "targets": targets.tolist(), "mask": mask,
                  "unlabeled_loss": float(cons(strong, targets, "ce", mask=mask))})


def adsh_fixture() -> None:
    from semilearn.imb_algorithms.adsh.utils import AdaptiveThresholdingHook

    gen = torch.Generator().manual_seed(8)
    k, tau_1 = 4, 0.95
    cases = []
    # 1: a confident head; 2: class 2 predicted once; 3: no head prediction reaches tau_1 (rho stays 1);
    # 4: few confident head predictions, so that int(n_k * rho) - 1 = -1 for classes 1 and 2 (USB then
    # takes their least confident prediction) and class 3 is never predicted (its score stays)
    cases_in = ((6.0, [4.0, 1.0, 0.0, -1.0]), (6.0, [5.0, 2.0, -6.5, 0.0]), (0.5, [0.5, 0.2, 0.0, -0.2]),
                (1.2, [3.0, 1.0, 0.5, 0.0]))
    for scale, bias in cases_in:
        hook = AdaptiveThresholdingHook(k, tau_1)
        probs = torch.softmax(torch.randn(10, k, generator=gen) * 2, dim=1)
        algo = types.SimpleNamespace(num_classes=k, tau_1=tau_1, compute_prob=lambda x: torch.softmax(x, dim=-1))
        mask_before = hook.masking(algo, probs, softmax_x_ulb=False)
        pool_logits = torch.randn(60, k, generator=gen) * scale + torch.tensor(bias)
        algo.evaluate = lambda name, return_logits, logits=pool_logits: {"eval_ulb/logits": logits.numpy()}
        hook.after_train_epoch(algo)
        mask_after = hook.masking(algo, probs, softmax_x_ulb=False)
        cases.append({"pool_logits": lists(pool_logits), "scores": lists(hook.adsh_s), "probs": lists(probs),
                      "mask_before": lists(mask_before), "mask_after": lists(mask_after)})
    write("adsh", {"num_classes": k, "tau_1": tau_1, "cases": cases})


def tras_fixture() -> None:
    """TRAS's step arithmetic executed from its authors' train.py: the helpers (``compute_adjustment``,
    ``balanced_softmax_loss``, ``KL``, ``SemiLoss``) and the step block from the pseudo-labels to the
    TRAS loss, on a stand-in network whose two classifiers look logits up by image id."""
    import ast
    import os
    import re
    import textwrap

    import torch.nn.functional as F

    source = (Path(os.environ["TRAS_REPO"]) / "train.py").read_text()
    wanted = {"compute_adjustment", "balanced_softmax_loss", "KL", "SemiLoss"}
    nodes = [node for node in ast.parse(source).body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted]
    namespace = {"torch": torch, "np": np, "F": F}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), "train.py", "exec"), namespace)
    start = source.rindex("\n", 0, source.index("# Generate the pseudo labels")) + 1
    end = source.index("\n", source.index("Trasloss = loss_x_S + loss_u_S", start))
    block = re.sub(r"\.cuda\([^)]*\)", "", textwrap.dedent(source[start:end]))

    gen = torch.Generator().manual_seed(9)
    k, b = 4, 64  # the step block hard-codes 128 = 2 x 64 rows of strong views
    counts = np.array([24, 12, 6, 3])
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    args = types.SimpleNamespace(device="cpu")
    args.logit_adjustments = namespace["compute_adjustment"]([(None, labels, None)], 1.0, args)
    t_logit = 2 * torch.softmax(-args.logit_adjustments / 1, dim=0) + 2  # A = B = 2, as train.py builds it
    bias = torch.tensor([3.0, 1.0, 0.0, -1.0])
    teacher = torch.randn(4 * b, k, generator=gen) * 3 + bias  # rows: labeled, weak, strong 1, strong 2
    student = torch.randn(4 * b, k, generator=gen) * 3 + bias

    class StandIn:
        def __call__(self, ids):
            return ids

        def classify(self, ids):
            return teacher[ids.long()].double()

        def classify2(self, ids):
            return student[ids.long()].double()

    targets_x = torch.randint(0, k, (b,), generator=gen)
    ids = torch.arange(4 * b).double()
    namespace.update(model=StandIn(), args=args, T_logit=t_logit, num_class=k, batch_size=b, epoch=11,
                     inputs_x=ids[:b], targets_x=targets_x, targets_x2=F.one_hot(targets_x, k).double(),
                     inputs_u=ids[b:2 * b], inputs_u2=ids[2 * b:3 * b], inputs_u3=ids[3 * b:],
                     criterion=namespace["SemiLoss"]())
    exec(compile(block, "train.py", "exec"), namespace)
    write("tras", {"labeled_counts": counts.tolist(), "adjustments": args.logit_adjustments, "t_logit": t_logit,
                   "teacher_logits": teacher, "student_logits": student, "labels": targets_x.tolist(),
                   "teacher_mask": namespace["select_mask"][:b], "student_mask": namespace["select_maskkd"][:b],
                   "loss_x": float(namespace["Lx"]), "loss_u": float(namespace["Lu"]),
                   "loss_x_student": float(namespace["loss_x_S"]), "loss_u_student": float(namespace["loss_u_S"]),
                   "loss": float(namespace["loss"])})


def _millis(x: torch.Tensor) -> torch.Tensor:
    """float32 values with three decimals (written as such; float32(decimal) reads them back exactly)."""
    return (x * 1000).round() / 1000


def _millis_list(x: torch.Tensor) -> list:
    return [[round(v, 3) for v in row] for row in x.double().tolist()]


def _seval_namespace():
    """The authors' OptimizePi / OptimizeTH and the SEVAL class's optimize_pi / optimize_threshold, executed
    from their files (the class's other methods and imports are not needed)."""
    import ast
    import os
    import textwrap

    import scipy.optimize  # noqa: F401  (the authors' files call scipy.optimize.minimize)

    repo = Path(os.environ["SEVAL_REPO"])

    class DataFrame:  # optimizeth.py builds DataFrames only to take their len()
        def __init__(self, columns):
            self.rows = len(next(iter(columns.values())))

        def __len__(self):
            return self.rows

    namespace = {"torch": torch, "np": np, "nn": torch.nn, "Tensor": torch.Tensor, "scipy": sys.modules["scipy"],
                 "math": __import__("math"), "pd": types.SimpleNamespace(DataFrame=DataFrame),
                 "Tuple": tuple, "Union": object, "Meters": object}
    for name in ("optimizepi.py", "optimizeth.py"):
        tree = ast.parse((repo / "lib/models/losses" / name).read_text())
        nodes = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        exec(compile(ast.Module(body=nodes, type_ignores=[]), name, "exec"), namespace)
    source = (repo / "lib/algorithm/seval.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "SEVAL")
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in ("optimize_pi",
                                                                                    "optimize_threshold")]
    exec(compile(ast.Module(body=methods, type_ignores=[]), "seval.py", "exec"), namespace)
    start = source.index("            # seval_pi\n")
    end = source.index("            cons_loss = self.ul_loss(", start)
    namespace["step_block"] = textwrap.dedent(source[start:end])
    return namespace


def seval_fixture() -> None:
    import torch.nn.functional as F

    ns = _seval_namespace()
    k, per_class, iterations = 10, 30, 3000
    labels = torch.arange(k).repeat_interleave(per_class)
    gen = torch.Generator().manual_seed(11)
    bias = torch.linspace(2.0, -2.0, k)  # the model leans toward the head classes

    def validation_logits(fit: int) -> torch.Tensor:
        signal = F.one_hot(labels, k).float() * (1.5 + 0.8 * fit)
        logits = torch.randn(len(labels), k, generator=gen) * 1.2 + bias + signal
        logits[:, k - 1] -= 4.0  # the last class is hardly ever predicted: a rare class
        return _millis(logits)

    class StandIn:  # the EMA model: logits looked up by image id
        def __init__(self, table):
            self.table = table

        def __call__(self, ids, is_train=False):
            return self.table[ids.long()]

        def eval(self):
            return self

        def train(self):
            return self

    settings = {
        "defaults": dict(opt_func="nll", pi_bounds=[1.0, 1.0, 1e-3, 3.0], pi_warmup_ratio=0.0, pi_cls=k, th_cls=k,
                         threshold_start=0.9, threshold_end=0.9, pi_ema_decay=0.5, th_ema_decay=0.5),
        "variant": dict(opt_func="acc", pi_bounds=[0.5, 2.0, 1e-3, 3.0], pi_warmup_ratio=0.4, pi_cls=k, th_cls=5,
                        threshold_start=0.9, threshold_end=0.6, pi_ema_decay=0.7, th_ema_decay=0.8),
    }
    cases = {}
    for name, options in settings.items():
        trainer = types.SimpleNamespace(
            num_classes=k, max_iter=iterations, alpha=torch.ones(k), pi=torch.ones(k), alpha_current=torch.ones(k),
            pi_current=torch.ones(k), conf_thres=[0.95] * k, pi_optimizer="Nelder-Mead", estim_param=False,
            abc=False, device=None, meters=types.SimpleNamespace(put_scalars=lambda *a, **kw: None), **options)
        fits = []
        for fit, iteration in enumerate((499, 1499, 2499)):
            logits = validation_logits(fit)
            model = StandIn(logits)
            ids = torch.arange(len(labels)).double()
            trainer.valid_loader = [(ids[i:i + 128], labels[i:i + 128], None) for i in range(0, len(ids), 128)]
            trainer.iter = iteration
            try:
                ns["optimize_pi"](trainer, model)
            except UnboundLocalError:  # before the warm-up's end its logging reads acc_post, never set:
                assert iteration <= iterations * trainer.pi_warmup_ratio  # nothing was changed yet
            ns["optimize_threshold"](trainer, model)
            fits.append({"iteration": iteration, "logits": _millis_list(logits), "alpha": lists(trainer.alpha),
                         "pi": lists(trainer.pi), "alpha_current": lists(trainer.alpha_current),
                         "pi_current": lists(trainer.pi_current), "thresholds": list(trainer.conf_thres)})
        weak = _millis(torch.randn(64, k, generator=gen) * 3 + bias)
        trainer.with_align = trainer.with_darp = False  # no distribution alignment, no DARP
        step = dict(self=trainer, logits_weak=weak.clone(), torch=torch)
        exec(compile(ns["step_block"], "seval.py", "exec"), step)
        cases[name] = {"options": options, "fits": fits, "weak_logits": _millis_list(weak),
                       "probs": lists(step["p"]), "pseudo_labels": step["pred_class"].tolist(),
                       "mask": lists(step["loss_weight"])}
    write("seval", {"num_classes": k, "labels": labels.tolist(), "iterations": iterations, "cases": cases})


class _Recorder:
    """Wraps a random function and keeps what it returned, call by call."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def __call__(self, *args, **kwargs):
        value = self.function(*args, **kwargs)
        self.calls.append(np.asarray(value).tolist())
        return value


class _Py2Iterator:
    """An iterator with the ``.next()`` of the PyTorch 1.0 loaders the authors' CoSSL code calls."""

    def __init__(self, items):
        self.items = iter(items)

    def next(self):
        return next(self.items)

    __next__ = next

    def __iter__(self):
        return self


def cossl_fixture() -> None:
    import ast
    import os
    import random
    import re
    import textwrap

    import torch.nn.functional as F

    repo = Path(os.environ["COSSL_REPO"])
    source = (repo / "utils/tfe_init.py").read_text()
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
    recorded_choice, recorded_beta = _Recorder(np.random.choice), _Recorder(np.random.beta)
    fake_np = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    fake_np.random = types.SimpleNamespace(choice=recorded_choice, beta=recorded_beta)

    class Bar:  # the progress bar
        def __init__(self, *a, **k):
            self.suffix, self.elapsed_td, self.eta_td = "", 0, 0

        def next(self):
            pass

        def finish(self):
            pass

    class Loader(list):  # DataLoader(dataset, ...) over a list of batches: the dataset itself, in order
        def __init__(self, dataset, **kwargs):
            super().__init__(dataset)

        def __iter__(self):
            return _Py2Iterator(list.__iter__(self))

    namespace = {"torch": torch, "np": fake_np, "F": F, "copy": __import__("copy"), "time": __import__("time"),
                 "optim": torch.optim, "Bar": Bar, "AverageMeter": None,
                 "data": types.SimpleNamespace(DataLoader=Loader, dataset=torch.utils.data)}
    code = re.sub(r"\.cuda\([^)]*\)", "", ast.unparse(ast.Module(body=nodes, type_ignores=[])))
    exec(compile(code, "tfe_init.py", "exec"), namespace)

    gen = torch.Generator().manual_seed(21)
    k, d = 4, 6
    counts = [12, 6, 3, 2]
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    centres = torch.randn(k, d, generator=gen) * 2
    labeled_features = centres[labels] + torch.randn(len(labels), d, generator=gen)
    pool_labels = torch.randint(0, k, (40,), generator=gen)
    pool_features = centres[pool_labels] + torch.randn(40, d, generator=gen)

    class StandIn(torch.nn.Module):  # embeddings looked up by image id; the output layer is the model's
        def __init__(self, table):
            super().__init__()
            self.table = table
            self.output = torch.nn.Linear(d, k)

        def forward(self, ids, return_feature=False):
            features = self.table[ids.long()]
            return (self.output(features), None, features) if return_feature else (self.output(features), None)

    labeled_ids = torch.arange(len(labels))
    labeled_set = [(labeled_ids[i:i + 5], labels[i:i + 5], None) for i in range(0, len(labels), 5)]
    tfe_model = namespace["weight_imprint"](StandIn(labeled_features), labeled_set, k)
    imprinted_labeled = torch.softmax(tfe_model(labeled_ids)[0], dim=1)

    class TwoViews:  # the unlabeled loader's dataset transform has a transform2: FixMatch's views
        transform2 = None

    tfe_model.table = labeled_features
    pool_model = __import__("copy").deepcopy(tfe_model)  # the same imprinted classifier, the pool's embeddings
    pool_model.table = pool_features

    class Switch(torch.nn.Module):  # TFE reads the labeled loader, then the pool's: each from its own table
        def __init__(self):
            super().__init__()
            self.pool = False

        def forward(self, ids, return_feature=False):
            return (pool_model if self.pool else tfe_model)(ids, return_feature)

        def eval(self):
            return self

    switch = Switch()

    class SwitchingLoader(Loader):  # iterating it points the switch at its table
        pool = False

        def __iter__(self):
            switch.pool = self.pool
            return _Py2Iterator(list.__iter__(self))

    class PoolLoader(SwitchingLoader):
        pool = True

    pool_ids = torch.arange(40)
    pool_loader = PoolLoader([((pool_ids[i:i + 8], pool_ids[i:i + 8], None), None, None) for i in range(0, 40, 8)])
    pool_loader.dataset = types.SimpleNamespace(transform=TwoViews())
    imprinted_pool = torch.softmax(pool_model(pool_ids)[0], dim=1)
    np.random.seed(3)
    balanced = namespace["TFE"](SwitchingLoader(labeled_set), pool_loader, switch, k, counts)
    tfe_x, tfe_y = balanced.tensors

    # the warm-up's classifier training on fixed batches from fixed initial weights, 12 steps
    head = StandIn(labeled_features)
    initial = {"weight": torch.randn(k, d, generator=gen) * 0.3, "bias": torch.randn(k, generator=gen) * 0.1}
    head.output.weight.data.copy_(initial["weight"])
    head.output.bias.data.copy_(initial["bias"])
    ema_head = __import__("copy").deepcopy(head)
    for param in ema_head.parameters():
        param.detach_()

    class WeightEMA:  # the authors' utils.WeightEMA with wd=False
        def __init__(self, model, ema_model, alpha):
            self.alpha = alpha
            self.params = list(model.state_dict().values())
            self.ema_params = list(ema_model.state_dict().values())

        def step(self):
            for param, ema_param in zip(self.params, self.ema_params):
                ema_param.mul_(self.alpha)
                ema_param.add_(param.float() * (1.0 - self.alpha))

    class Meter:
        def update(self, *a, **k):
            pass

        avg = 0.0

    namespace["AverageMeter"] = Meter
    batches = [torch.randperm(len(tfe_y), generator=gen)[:8] for _ in range(12)]
    optimizer = torch.optim.Adam([{"params": [head.output.weight], "weight_decay": 5e-4},
                                  {"params": [head.output.bias], "weight_decay": 0}], lr=0.01)
    namespace["classifier_train"](Loader([(tfe_x[rows], tfe_y[rows]) for rows in batches]), head, optimizer, None,
                                  WeightEMA(head, ema_head, 0.9), len(batches), False)

    # the co-learning step's block: pseudo-labels from the teacher on EMA embeddings, TFE, the teacher loss
    train_source = (repo / "train_cifar_fix_cossl.py").read_text()
    start = train_source.rindex("\n", 0, train_source.index("# Generate the pseudo labels")) + 1
    end = train_source.index("\n", train_source.index("teacher_loss = -torch.mean(", start))
    block = re.sub(r"\.cuda\([^)]*\)", "", textwrap.dedent(train_source[start:end]))
    b = 16
    step_table = torch.randn(3 * b, d, generator=gen) * 1.5 + centres[torch.randint(0, k, (3 * b,), generator=gen)]

    class EmaStandIn:
        def __call__(self, ids, return_feature=False):
            return None, None, step_table[ids.long()].unsqueeze(-1)  # squeezed by the block

    teacher = torch.nn.Linear(d, k)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(k, d, generator=gen))
        teacher.bias.copy_(torch.randn(k, generator=gen) * 0.5)
    crt_labels = torch.randint(0, k, (b,), generator=gen)
    recorded_random, recorded_uniform = _Recorder(random.random), _Recorder(np.random.uniform)
    step_np = types.SimpleNamespace(random=types.SimpleNamespace(uniform=recorded_uniform))
    tfe_prob = [(max(counts) - n) / max(counts) for n in counts]
    step = dict(torch=torch, np=step_np, F=F, random=types.SimpleNamespace(random=recorded_random),
                args=types.SimpleNamespace(tau=0.6, max_lam=0.6), ema_model=EmaStandIn(), teacher_head=teacher,
                inputs_u=torch.arange(b).double(), gt_targets_u=torch.zeros(b, dtype=torch.long),
                batch_size=b, num_class=k, used_c=Meter(), mask_prob=Meter(), total_c=Meter(), tfe_prob=tfe_prob,
                crt_input_x=torch.arange(b, 2 * b).double(), crt_input_u=torch.arange(2 * b, 3 * b).double(),
                crt_targets_x=F.one_hot(crt_labels, k).float())
    random.seed(5)
    np.random.seed(5)
    exec(compile(block, "train_cifar_fix_cossl.py", "exec"), step)
    write("cossl", {
        "counts": counts, "labels": labels.tolist(), "labeled_features": labeled_features,
        "pool_features": pool_features, "imprinted_labeled": imprinted_labeled, "imprinted_pool": imprinted_pool,
        "choices": recorded_choice.calls, "lambdas": recorded_beta.calls, "tfe_features": tfe_x,
        "tfe_labels": tfe_y.argmax(1).tolist(), "initial": {n: lists(v) for n, v in initial.items()},
        "batches": [rows.tolist() for rows in batches], "lr": 0.01, "weight_decay": 5e-4, "ema_decay": 0.9,
        "trained": {n: lists(v) for n, v in head.output.state_dict().items()},
        "trained_ema": {n: lists(v) for n, v in ema_head.output.state_dict().items()},
        "step_features": step_table, "teacher": {n: lists(v) for n, v in teacher.state_dict().items()},
        "tau": 0.6, "max_lam": 0.6, "step_labels": crt_labels.tolist(), "mix_prob": tfe_prob,
        "random": recorded_random.calls, "uniform": recorded_uniform.calls,
        "pseudo_labels": step["p_hat"][:b].argmax(1).tolist(), "mask": step["select_mask"][:b],
        "mixed_features": step["new_feat_tensor"], "teacher_loss": float(step["teacher_loss"].detach())})


FIXTURES = {"darp": darp_fixture, "daso": daso_fixture, "abc": abc_fixture, "crest": crest_fixture,
            "acr": acr_fixture, "darp_estimate": darp_estimate_fixture,
            "darp_estimate_mean": darp_estimate_mean_fixture, "debiaspl": debiaspl_fixture,
            "saw": saw_fixture, "adsh": adsh_fixture, "tras": tras_fixture, "seval": seval_fixture,
            "cossl": cossl_fixture}


def main() -> None:
    sys.meta_path.insert(0, _StubFinder())
    torch.set_default_dtype(torch.float32)
    for name in sys.argv[1:] or FIXTURES:
        FIXTURES[name]()


if __name__ == "__main__":
    main()
