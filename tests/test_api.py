"""cissl.api: every command of the command line is a function of the API, which the command calls."""

import inspect
import json
from pathlib import Path

import pytest
from conftest import CONFIGS, run_cli
from helpers import FOUR_STEPS, parser_commands

import cissl.api as api
from cissl.cli import build_parser
from cissl.errors import CisslError

QUICKSTART = str(CONFIGS / "quickstart.yaml")

# command line -> the cissl.api function it calls and the arguments it must get (a Config as a few of its
# values); each command with every option set (no option at its default), train also without --out
EVERY_OPTION = [
    (["train", "--config", QUICKSTART, "--algorithm", "semi", "--out", "r", "--quiet", "optim.lr=0.5"], "train",
     {"config": ("semi", 0.5, "cpu"), "out": Path("r"), "quiet": True}),
    (["train", "--config", QUICKSTART, "train.seed=3"], "train",  # no --out: runs/<setting>-<algorithm>-seed<k>
     {"config": ("fixmatch", 0.03, "cpu"), "out": Path("runs/quickstart-fixmatch-seed3"), "quiet": False}),
    (["train", "--resume", "r", "--quiet"], "resume", {"run_dir": Path("r"), "quiet": True}),
    (["evaluate", "r", "--checkpoint", "c.pt"], "evaluate", {"run_dir": Path("r"), "checkpoint": "c.pt"}),
    (["predict", "r", "--images", "x.png", "--checkpoint", "c.pt"], "load_run", {"run_dir": "r", "checkpoint": "c.pt"}),
    (["split", "--config", QUICKSTART, "--algorithm", "semi", "--save", "s.json", "optim.lr=0.5"], "split",
     {"config": ("semi", 0.5, "cpu"), "save": "s.json"}),
    (["split", "--config", QUICKSTART, "--counts-only", "--algorithm", "semi", "optim.lr=0.5"], "split_counts",
     {"config": ("semi", 0.5, "cpu")}),
    (["sweep", "--configs", QUICKSTART, "q.yaml", "--algorithms", "semi", "acr", "--seeds", "1", "2", "--grid",
      "optim.lr=0.1,0.2", "--jobs", "j.jobs", "--workers", "3", "--deadline", "5", "--by-seed", "--verbose", "--out",
      "o", "optim.momentum=0.5"], "sweep",
     {"configs": [QUICKSTART, "q.yaml"], "out": "o", "algorithms": ["semi", "acr"], "seeds": [1, 2],
      "overrides": ["optim.momentum=0.5"], "grid": ["optim.lr=0.1,0.2"], "jobs_file": Path("j.jobs"), "workers": 3,
      "deadline": 5.0, "by_seed": True, "quiet": False}),
    (["report", "o", "--pair", "semi", "--per-seed"], "report", {"root": Path("o"), "pair": "semi", "per_seed": True}),
    (["report", "o", "p", "--out", "pages", "--tsne"], "report_pages",
     {"roots": ["o", "p"], "out": "pages", "tsne": True}),
    (["estimate-distribution", "r", "--checkpoint", "a.pt", "--checkpoint", "b.pt", "--all-checkpoints",
      "--max-condition", "7"], "estimate_distribution",
     {"run_dir": "r", "checkpoints": ["a.pt", "b.pt"], "max_condition": 7.0, "every_checkpoint": True}),
    (["plot", "r", "--out", "figs"], "plot", {"run_dir": "r", "out": "figs"}),
    (["bench", "throughput", "--config", QUICKSTART, "--algorithm", "semi", "--steps", "2", "--warmup", "0",
      "--rounds", "1", "--device", "cuda", "--synthetic", "optim.lr=0.5"], "throughput",
     {"config": ("semi", 0.5, "cuda"), "steps": 2, "warmup": 0, "rounds": 1, "synthetic": True}),
    (["data", "build-imagenet127", "--source", "s", "--size", "64", "--out", "o", "--partial"], "build_imagenet127",
     {"source": "s", "size": 64, "out": "o", "partial": True}),
    (["list", "--plugins", "a.py", "b.py"], "registered", {"plugins": ["a.py", "b.py"]}),
    (["list", "--algorithm", "semi", "--plugins", "a.py"], "config_keys", {"algorithm": "semi", "plugins": ["a.py"]}),
]


@pytest.mark.parametrize("argv, function, expected", EVERY_OPTION,
                         ids=[" ".join(argv[:2]) for argv, *_ in EVERY_OPTION])
def test_every_option_of_a_command_reaches_its_api_function(argv, function, expected, monkeypatch, capsys):
    """An option the command parses but does not pass on (`cissl plot --out` drawing into the default folder,
    `cissl sweep --deadline` never stopping) would otherwise pass every test that leaves it at its default."""
    got = {}
    signature = inspect.signature(getattr(api, function))

    def called(*args, **kwargs):
        got.update(signature.bind(*args, **kwargs).arguments)
        raise CisslError(f"called {function}")

    monkeypatch.setattr(api, function, called)
    code, _, err = run_cli(argv, capsys)
    assert (code, err) == (2, f"cissl: error: called {function}\n")
    if "config" in got:
        config = got["config"]
        got["config"] = (config.algorithm.name, config.optim.lr, config.train.device)
    assert got == expected


def test_every_command_has_its_api_function():
    covered = {" ".join(argv[:2]) if argv[0] in ("bench", "data") else argv[0] for argv, *_ in EVERY_OPTION}
    assert set(parser_commands(build_parser())) == covered
    assert {function for _, function, _ in EVERY_OPTION} <= set(api.__all__)


def test_a_sweep_and_its_report_from_python(tmp_path):
    """The module docstring's sweep and report: the rows a script gets are the tables the files hold."""
    rows = api.sweep([QUICKSTART], tmp_path, algorithms=["supervised", "fixmatch"], seeds=[0, 1], overrides=FOUR_STEPS)
    assert [(row["algorithm"], row["seeds"]) for row in rows] == [("fixmatch", [0, 1]), ("supervised", [0, 1])]
    again = api.report(tmp_path, pair="fixmatch", per_seed=True)
    assert again == rows
    assert all((tmp_path / name).is_file() for name in ("results.md", "results.csv", "paired.md", "per_seed.md"))
    assert "fixmatch minus each, by seed, in points" in (tmp_path / "per_seed.md").read_text()  # paired there too
    (tmp_path / "empty").mkdir()
    with pytest.raises(CisslError, match=r"^no results.json below .*empty$"):
        api.report(tmp_path / "empty")
    with pytest.raises(CisslError, match=r"^sweep needs --configs FILE \.\.\. or --jobs FILE$"):
        api.sweep([], tmp_path)


def test_a_sweeps_grid_jobs_file_and_deadline_from_python(tmp_path):
    """sweep() hands its grid, jobs file and deadline on: two grid points and a job run; a deadline of 0 stops
    the one run it starts."""
    (tmp_path / "extra.jobs").write_text(f"extra {QUICKSTART} supervised\n")
    rows = api.sweep(QUICKSTART, tmp_path / "grid", algorithms="supervised", grid="optim.lr=0.01,0.02",
                     jobs_file=tmp_path / "extra.jobs", overrides=FOUR_STEPS)
    assert sorted(row["setting"] for row in rows) == ["quickstart", "quickstart [optim.lr=0.01]",
                                                       "quickstart [optim.lr=0.02]"]
    with pytest.raises(CisslError, match=r"^1 of 1 runs did not finish: .*seed0 \(their logs"):
        api.sweep(QUICKSTART, tmp_path / "late", algorithms="supervised", overrides=FOUR_STEPS, deadline=0)


def test_one_config_algorithm_seed_or_folder_may_be_given_alone(tmp_path):
    """A string is one config / algorithm / folder, not a list of its letters; a number is one seed."""
    rows = api.sweep(QUICKSTART, tmp_path / "one", algorithms="supervised", seeds=1, overrides=FOUR_STEPS)
    assert [(row["algorithm"], row["seeds"]) for row in rows] == [("supervised", [1])]
    pytest.importorskip("matplotlib")
    written = api.report_pages(tmp_path / "one", tmp_path / "pages")
    assert written[:2] == [tmp_path / "pages/report.md", tmp_path / "pages/report.html"]


def test_split_and_split_counts_give_what_the_command_prints(tmp_path, capsys):
    """quickstart: N1 = 40, M1 = 80, gamma 10: floor(N1 r^k) with r = (1/10)^(1/9), N_9 = N1 / 10."""
    config = api.load_config(QUICKSTART)
    code, out, _ = run_cli(["split", "--config", QUICKSTART, "--counts-only"], capsys)
    assert code == 0 and json.loads(out) == api.split_counts(config) == {
        "labeled": [40, 30, 23, 18, 14, 11, 8, 6, 5, 4], "unlabeled": [80, 61, 47, 37, 28, 22, 17, 13, 10, 8]}
    summary = api.split(config, save=tmp_path / "split.json")
    assert summary == {"classes": [str(k) for k in range(10)], **api.split_counts(config), "labeled_total": 159,
                       "unlabeled_total": 323, "val_total": 0, "seed": 0, "saved": str(tmp_path / "split.json")}
    assert json.loads((tmp_path / "split.json").read_text())["seed"] == summary["seed"] == 0
    assert api.split(api.load_config(QUICKSTART, ["data.val_per_class=2"]))["val_total"] == 20
    order = [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # run class 0 (the head) is digit 9, and the split records it
    reordered = api.split(api.load_config(QUICKSTART, [f"data.class_order={order}"]), save=tmp_path / "order.json")
    assert reordered["classes"] == [str(k) for k in order]
    assert json.loads((tmp_path / "order.json").read_text())["class_order"] == order
    own = api.load_config(str(CONFIGS.parent / "examples/own_data.yaml"), [f"data.root={tmp_path}"])
    with pytest.raises(CisslError, match=r"^data.dataset=folder: the counts come from the data; drop --counts-only "
                                         r"\(in Python: cissl.api.split\(config\)\)$"):
        api.split_counts(own)
    with pytest.raises(CisslError, match=r"^split_counts needs a Config \(cissl.api.load_config"):
        api.split_counts(QUICKSTART)
    with pytest.raises(CisslError, match=r"^split needs a Config \(cissl.api.load_config\(path, overrides\)\), got"):
        api.split(QUICKSTART)


def test_list_prints_each_registry_under_its_title_then_the_config_keys(capsys):
    code, out, _ = run_cli(["list"], capsys)
    titles = [line for line in out.splitlines() if not line.startswith(" ")]
    assert code == 0 and titles == [
        "algorithms:", "pseudo-label refiners (algorithm.refiner):", "auxiliary heads (algorithm.aux_head):",
        "backbones (model.name):", "data sets (data.dataset):", "", "config keys (key, default, meaning):"]


def test_what_list_prints_comes_from_registered_and_config_keys(capsys):
    code, out, _ = run_cli(["list", "--algorithm", "semi"], capsys)
    kinds = api.registered()
    assert code == 0 and set(kinds) == {"algorithms", "refiners", "aux_heads", "backbones", "datasets"}
    assert list(kinds["datasets"]) == ["cifar10", "cifar100", "stl10", "fashion_mnist", "digits", "imagenet127",
                                       "folder", "arrays"]
    assert kinds["datasets"]["fashion_mnist"] == "Fashion-MNIST (IDX files); 10 classes, 28x28 grey"
    assert kinds["backbones"] == {"wrn": "Wide ResNet (model.depth, widen, leaky_slope, bn_momentum): WRN-28-2 in the "
                                         "CIFAR / STL-10 settings.",
                                  "resnet50": "ResNet-50 with the CIFAR stem (model.bn_momentum): Small-ImageNet-127."}
    assert "backbones (model.name):\n  wrn       Wide ResNet" in out
    assert {"semi", "fixmatch", "acr"} <= set(kinds["algorithms"]) and {"darp", "daso"} <= set(kinds["refiners"])
    assert f"  semi{' ' * (max(map(len, kinds['algorithms'])) - 4)}  {kinds['algorithms']['semi']}\n" in out
    general, semi = api.config_keys(), api.config_keys("semi")
    assert ("algorithm.name" in [key for key, _, _ in general]
            and not any(key.startswith("algorithm.") and key != "algorithm.name" for key, _, _ in general))
    assert ("algorithm.threshold", "0.7", semi[[k for k, _, _ in semi].index("algorithm.threshold")][2]) in semi
    for key, default, text in general + semi:
        assert f"  {key:<38} {default:<16} {text}\n" in out
    with pytest.raises(CisslError, match=r"^config key 'algorithm.name': unknown algorithm 'nope'; allowed: acr, "):
        api.config_keys("nope")
    preset = {key: default for key, default, _ in api.config_keys("fixmatch_la_daso")}  # a table row's preset
    assert (preset["algorithm.name"], preset["algorithm.logit_adjust"], preset["algorithm.refiner.name"]) == (
        "fixmatch_la_daso", "true", "daso")  # its own values, not FixMatch's (fixmatch, false, none)


# command line -> the API function it calls, and each of the command's options that the function takes as
# (argparse destination, the function's parameter)
OPTIONS = [
    (["sweep", "--out", "o"], "sweep", [("algorithms", "algorithms"), ("seeds", "seeds"), ("grid", "grid"),
                                        ("jobs", "jobs_file"), ("workers", "workers"), ("deadline", "deadline"),
                                        ("by_seed", "by_seed")]),
    (["report", "o"], "report", [("pair", "pair"), ("per_seed", "per_seed")]),
    (["report", "o"], "report_pages", [("tsne", "tsne")]),
    (["estimate-distribution", "r"], "estimate_distribution", [("checkpoint", "checkpoints"),
                                                               ("max_condition", "max_condition"),
                                                               ("all_checkpoints", "every_checkpoint")]),
    (["evaluate", "r"], "evaluate", [("checkpoint", "checkpoint")]),
    (["plot", "r"], "plot", [("out", "out")]),
    (["bench", "throughput", "--config", QUICKSTART], "throughput", [("steps", "steps"), ("warmup", "warmup"),
                                                                     ("rounds", "rounds"), ("synthetic", "synthetic")]),
    (["data", "build-imagenet127", "--source", "s", "--size", "32", "--out", "o"], "build_imagenet127",
     [("partial", "partial")]),
]


@pytest.mark.parametrize("argv, function, options", OPTIONS, ids=[name for _, name, _ in OPTIONS])
def test_each_functions_defaults_are_the_commands(argv, function, options):
    """A script that leaves an option out gets what the command gives without it (cissl.api.throughput
    timed 10 steps, `cissl bench throughput` 9). A list default of the command may be a tuple here."""
    given = build_parser().parse_args(argv)
    parameters = inspect.signature(getattr(api, function)).parameters
    for dest, parameter in options:
        default = parameters[parameter].default
        assert (list(default) if isinstance(default, tuple) else default) == getattr(given, dest), (dest, parameter)


def test_train_resume_and_sweep_print_nothing_unless_asked(tmp_path, capsys):
    """From Python a run is quiet by default (no progress lines); quiet=False prints them."""
    config = api.load_config(QUICKSTART, FOUR_STEPS)
    api.train(config, tmp_path / "run")
    (tmp_path / "run/results.json").unlink()
    api.resume(tmp_path / "run")
    api.sweep(QUICKSTART, tmp_path / "sweep", algorithms="supervised", overrides=FOUR_STEPS)
    out, err = capsys.readouterr()
    assert "[cissl]" not in out + err
    api.train(config, tmp_path / "loud", quiet=False)
    assert "[cissl] quickstart: fixmatch" in capsys.readouterr().out


def test_bare_calls_do_what_the_bare_commands_do(monkeypatch, tmp_path):
    """The defaults reach the work below (test_each_functions_defaults_are_the_commands reads the signatures):
    a sweep one run at a time, config by config, quietly, with the overrides given; a report without the
    per-seed page; report pages without t-SNE; an estimate from the newest checkpoint at condition limit 100;
    an evaluation of the newest checkpoint; a whole ImageNet-127 build."""
    import cissl.data.sources.imagenet127 as imagenet127
    import cissl.evaluation.per_seed as per_seed
    import cissl.evaluation.report as report
    import cissl.evaluation.report_pages as pages
    import cissl.sweep

    calls = []
    monkeypatch.setattr(cissl.sweep, "run_sweep", lambda *args, **options: calls.append((args, options)) or [])
    api.sweep(QUICKSTART, tmp_path, overrides=["train.iterations=3"])
    assert calls == [(([QUICKSTART], None, [0], tmp_path, ["train.iterations=3"]),
                      {"quiet": True, "grid": None, "jobs_file": None, "workers": 1, "deadline": None,
                       "by_seed": False})]
    monkeypatch.setattr(report, "write_report", lambda root, pair: [{"algorithm": "a"}])
    monkeypatch.setattr(per_seed, "write_per_seed", lambda root, pair: pytest.fail("a per-seed page unasked"))
    assert api.report(tmp_path) == [{"algorithm": "a"}]
    monkeypatch.setattr(pages, "write_report_pages", lambda roots, out, features_on_test_set: features_on_test_set)
    assert api.report_pages(tmp_path, tmp_path / "pages") is None  # no t-SNE: no test features to compute
    monkeypatch.setattr(api, "estimate_run_distribution", lambda *args: args)
    assert api.estimate_distribution("run") == (Path("run"), None, 100.0, False)  # the newest checkpoint alone
    monkeypatch.setattr(api, "evaluate_run", lambda *args: args)
    assert api.evaluate("run") == (Path("run"), None)
    monkeypatch.setattr(imagenet127, "build_imagenet127", lambda *args, **options: (args, options))
    assert api.build_imagenet127("src", 32, "out") == ((Path("src"), 32, Path("out")), {"partial": False})


def test_plot_and_throughput_hand_their_arguments_on(monkeypatch, tmp_path):
    """plot() and throughput() pass what they are given to the work below them (the work itself is tested
    where it is done): the folder to write, the step counts, synthetic data, the run's device."""
    import torch

    import cissl.bench.throughput as bench
    import cissl.evaluation.plots as plots

    calls = []
    monkeypatch.setattr(plots, "plot_run", lambda run_dir, out: calls.append((run_dir, out)) or [])
    api.plot("run", tmp_path / "figures")
    api.plot("run")
    assert calls == [(Path("run"), tmp_path / "figures"), (Path("run"), None)]
    monkeypatch.setattr(bench, "measure", lambda config, **options: options)
    options = api.throughput(api.load_config(QUICKSTART, ["train.device=cpu"]), steps=4, warmup=1, rounds=2,
                             synthetic=True)
    assert options == {"steps": 4, "warmup": 1, "rounds": 2, "synthetic": True, "device": torch.device("cpu")}
    options = api.throughput(api.load_config(QUICKSTART, ["train.device=cpu"]))  # what a bare call times
    assert options == {"steps": 9, "warmup": 3, "rounds": 3, "synthetic": False, "device": torch.device("cpu")}
    with pytest.raises(CisslError, match=r"^throughput needs a Config \(cissl.api.load_config"):
        api.throughput(QUICKSTART)
