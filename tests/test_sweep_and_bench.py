import contextlib
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from conftest import CONFIGS, REPO, run_cli
from helpers import TIMED, tiny_config

from cissl.bench.throughput import format_table, measure
from cissl.config import load_config
from cissl.errors import CisslError, ConfigError
from cissl.evaluation.report import (
    COLUMNS,
    aggregate,
    collect_results,
    duplicate_seeds,
    method_label,
    paired_differences,
    paired_markdown,
    to_csv,
    to_markdown,
    write_report,
)
from cissl.sweep import plan, run_sweep, threads_per_job

TINY = ["model.depth=10", "model.widen=1", "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.batch_size=8", "train.eval_batch_size=500", "train.report_last=1"]


def test_plan_keeps_own_hyperparameters_and_switches_others(tmp_path):
    jobs = plan([str(CONFIGS / "fashion_lt/consistent_n1500_m3000_g100.yaml")], ["semi", "fixmatch"], [0, 1],
                tmp_path)
    assert len(jobs) == 4
    semi_config, semi_dir = jobs[0]
    assert semi_config.algorithm.name == "semi" and semi_config.algorithm.bank.decay_step == 100
    assert semi_dir == tmp_path / "fashion_lt/consistent_n1500_m3000_g100/semi/seed0"
    fixmatch_config, _ = jobs[2]
    assert fixmatch_config.algorithm.threshold == 0.95 and fixmatch_config.train.seed == 0
    assert jobs[3][0].train.seed == 1


def test_sweep_runs_skips_and_resumes(tmp_path, capsys):
    config = str(CONFIGS / "quickstart.yaml")
    rows = run_sweep([config], ["supervised", "fixmatch"], [0, 1], tmp_path, TINY)
    assert [(r["algorithm"], r["seeds"]) for r in rows] == [("fixmatch", [0, 1]), ("supervised", [0, 1])]
    started = [line.split("quickstart/")[1] for line in capsys.readouterr().out.splitlines() if "starting" in line]
    assert started == ["supervised/seed0: starting", "supervised/seed1: starting", "fixmatch/seed0: starting",
                       "fixmatch/seed1: starting"]  # algorithm by algorithm, seed by seed (not --by-seed)
    first = json.loads((tmp_path / "quickstart/fixmatch/seed1/results.json").read_text())
    # an interrupted run (checkpoint at 2, no results) is resumed; finished ones are skipped
    run_dir = tmp_path / "quickstart/fixmatch/seed1"
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoints/ckpt_00000004.pt").unlink()
    capsys.readouterr()
    rows = run_sweep([config], ["supervised", "fixmatch"], [0, 1], tmp_path, TINY)
    log = capsys.readouterr().out
    assert log.count("finished, skipped") == 3 and f"[4/4] {run_dir}: resuming\n" in log
    assert "[cissl]" not in log  # the resumed run is as quiet as the sweep's started ones (its progress lines)
    again = json.loads((run_dir / "results.json").read_text())
    assert again["top1"] == first["top1"]  # resumed bit-for-bit
    done = next(line for line in log.splitlines() if line.startswith(f"[4/4] {run_dir}: top-1"))
    assert re.fullmatch(rf"\[4/4\] {re.escape(str(run_dir))}: top-1 {100 * again['top1']:.2f} %, balanced "
                        rf"{100 * again['balanced_accuracy']:.2f} % \((\d+) s\)", done)  # the resumed run's line
    assert int(re.search(r"\((\d+) s\)$", done).group(1)) < 300  # its own duration, not a clock reading
    table = (tmp_path / "results.md").read_text()
    assert "| quickstart | fixmatch | 0 1 |" in table
    # the table agrees with the runs' results.json
    runs = [json.loads((tmp_path / f"quickstart/supervised/seed{s}/results.json").read_text()) for s in (0, 1)]
    row = next(r for r in rows if r["algorithm"] == "supervised")
    assert row["top1"][0] == pytest.approx(sum(r["top1"] for r in runs) / 2)
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert float(parsed[1]["top1_mean"]) == pytest.approx(row["top1"][0])
    code, out, _ = run_cli(["report", tmp_path, "--pair", "fixmatch"], capsys)
    assert code == 0 and "supervised" in out
    fixmatch = [json.loads((tmp_path / f"quickstart/fixmatch/seed{s}/results.json").read_text()) for s in (0, 1)]
    gap = sum(f["balanced_accuracy"] - r["balanced_accuracy"] for f, r in zip(fixmatch, runs)) / 2
    assert f"| quickstart | supervised | 0 1 | {100 * gap:.2f} ± " in (tmp_path / "paired.md").read_text()
    # --by-seed reaches the plan: both algorithms' seed 0, then seed 1 (all finished: skipped, nothing re-run)
    code, out, _ = run_cli(["sweep", "--configs", config, "--algorithms", "supervised", "fixmatch", "--seeds", "0",
                            "1", "--by-seed", "--out", tmp_path, *TINY], capsys)
    order = [line.split("quickstart/")[1].split(":")[0] for line in out.splitlines() if "finished, skipped" in line]
    assert code == 0 and order == ["supervised/seed0", "fixmatch/seed0", "supervised/seed1", "fixmatch/seed1"]


def _result(algorithm, seed, value, wall_time_s=60.0, **fields):
    """A run's results.json in setting s: every metric of the tables at ``value``."""
    return {"setting": "s", "algorithm": algorithm, "seed": seed, "wall_time_s": wall_time_s,
            **{key: value for key, _ in COLUMNS}, **fields}


def test_aggregate_mean_and_sample_std():
    runs = [_result("a", i, v) for i, v in enumerate([0.5, 0.7])]
    (row,) = aggregate(runs)
    assert row["top1"][0] == pytest.approx(0.6) and row["top1"][1] == pytest.approx(0.1414213, rel=1e-5)
    assert "60.00 ± 14.14" in to_markdown([row])
    parsed = next(csv.DictReader(io.StringIO(to_csv([row]))))
    assert float(parsed["top1_mean"]) == pytest.approx(0.6) and float(parsed["top1_std"]) == pytest.approx(0.1414213)
    assert parsed["seeds"] == "0 1" and parsed["reported_head"] == "main" and parsed["wall_time_s"] == "60.0"


def test_single_seed_row_has_no_spread():
    run = _result("a", 0, 0.5, reported_head="balanced")
    (row,) = aggregate([run])
    assert row["top1"] == (0.5, None) and row["reported_head"] == "balanced"
    table = to_markdown([row])
    assert "| 50.00 |" in table and "±" not in table
    parsed = next(csv.DictReader(io.StringIO(to_csv([row]))))
    assert float(parsed["top1_mean"]) == 0.5 and parsed["top1_std"] == ""


def test_results_md_line_by_line():
    """Header, rule and a row of two seeds: every metric as mean ± sample std in %, minutes per run."""
    runs = [_result("a", seed, v, wall_time_s=t) for seed, v, t in ((0, 0.5, 300.0), (1, 0.7, 360.0))]
    spread = "60.00 ± 14.14"
    assert to_markdown(aggregate(runs)).split("\n") == [
        "| setting | algorithm | seeds | top-1 | balanced acc. | many | medium | few | mean of last k top-1 | "
        "min / run |", "|---|---|---|---|---|---|---|---|---|---|",
        f"| s | a | 0 1 | {spread} | {spread} | {spread} | {spread} | {spread} | {spread} | 5.5 |", ""]


def test_results_csv_names_every_column_and_leaves_a_metric_not_recorded_empty():
    """The header, column by column, and a row whose runs recorded no thirds (results from before them):
    empty mean and std cells there, not a number (results.md: n/a)."""
    runs = [{"setting": "s", "algorithm": "a", "seed": 0, "top1": 0.5, "balanced_accuracy": 0.4,
             "mean_last_top1": 0.45, "wall_time_s": 30.0}]
    (parsed,) = list(csv.reader(io.StringIO(to_csv(aggregate(runs)))))[1:]
    header = next(csv.reader(io.StringIO(to_csv([]))))
    assert header == ["setting", "algorithm", "seeds", "reported_head", "top1_mean", "top1_std",
                      "balanced_accuracy_mean", "balanced_accuracy_std", "many_accuracy_mean", "many_accuracy_std",
                      "medium_accuracy_mean", "medium_accuracy_std", "few_accuracy_mean", "few_accuracy_std",
                      "mean_last_top1_mean", "mean_last_top1_std", "wall_time_s"]
    assert parsed == ["s", "a", "0", "main", "0.5", "", "0.4", "", "", "", "", "", "", "", "0.45", "", "30.0"]
    assert "| s | a | 0 | 50.00 | 40.00 | n/a | n/a | n/a | 45.00 |" in to_markdown(aggregate(runs))  # results.md


def test_a_seed_in_several_folders_of_one_row_names_each_folder():
    runs = [{"setting": "s", "algorithm": "semi", "seed": 0, "run_dir": "r1"},
            {"setting": "s", "algorithm": "semi", "seed": 0, "run_dir": "r2"},
            {"setting": "s", "algorithm": "semi", "seed": 0},  # a run handed in from Python, without a folder
            {"setting": "s", "algorithm": "semi", "seed": 1, "run_dir": "r3"}]
    assert duplicate_seeds(runs) == ["s / semi: seed 0 in r1, r2, ?"]


def test_paired_md_line_by_line_and_a_reference_among_no_rows():
    runs = [{"setting": "s", "algorithm": algorithm, "seed": seed, "balanced_accuracy": value}
            for algorithm, seed, value in (("semi", 0, 0.8), ("semi", 1, 0.86), ("fixmatch", 0, 0.7),
                                           ("fixmatch", 1, 0.8))]
    assert paired_markdown(paired_differences(runs, "semi"), "semi").split("\n") == [
        "| setting | semi minus | seeds | balanced_accuracy difference (points) |", "|---|---|---|---|",
        "| s | fixmatch | 0 1 | 8.00 ± 2.83 |", ""]
    with pytest.raises(CisslError, match=r"^--pair semi: no run of that algorithm with balanced_accuracy; the rows "
                                         r"are none$"):
        paired_differences([], "semi")


def _write_result(path, algorithm, seed, balanced):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(_result(algorithm, seed, balanced)))


def test_method_label_is_the_folder_of_a_variant_and_the_algorithm_otherwise(tmp_path):
    variant = tmp_path / "s" / "fixmatch_darp_estimated" / "seed3"
    assert method_label("fixmatch_darp", variant) == "fixmatch_darp_estimated"
    assert method_label("fixmatch_darp", tmp_path / "s" / "fixmatch_darp" / "seed3") == "fixmatch_darp"
    assert method_label("semi", tmp_path / "s" / "semi" / "algorithm.tau2=0.5" / "seed0") == "semi"  # a grid point
    assert method_label("semi", tmp_path / "runs" / "quickstart-semi-seed0") == "semi"  # cissl train's default


def test_report_keeps_a_variant_of_an_algorithm_in_its_own_row_and_pairs_it(tmp_path, capsys):
    """A jobs file's variant (fixmatch_darp with another target, in its own folder) is neither averaged with
    the plain runs nor paired under their name."""
    for seed, (plain, variant, base) in enumerate([(0.80, 0.90, 0.85), (0.70, 0.95, 0.75)]):
        _write_result(tmp_path / "s" / "fixmatch_darp" / f"seed{seed}", "fixmatch_darp", seed, plain)
        _write_result(tmp_path / "s" / "fixmatch_darp_estimated" / f"seed{seed}", "fixmatch_darp", seed, variant)
        _write_result(tmp_path / "s" / "fixmatch" / f"seed{seed}", "fixmatch", seed, base)
    rows = {row["algorithm"]: row for row in write_report(tmp_path, pair_with="fixmatch")}
    assert rows["fixmatch_darp"]["seeds"] == [0, 1] and rows["fixmatch_darp_estimated"]["seeds"] == [0, 1]
    assert rows["fixmatch_darp"]["balanced_accuracy"][0] == pytest.approx(0.75)
    assert rows["fixmatch_darp_estimated"]["balanced_accuracy"][0] == pytest.approx(0.925)
    paired = (tmp_path / "paired.md").read_text()
    assert "| s | fixmatch_darp | 0 1 | 5.00 ± 0.00 |" in paired           # 0.85 - 0.80, 0.75 - 0.70
    assert "| s | fixmatch_darp_estimated | 0 1 | -12.50 ± 10.61 |" in paired  # -0.05, -0.20
    assert "two runs of the same seed" not in capsys.readouterr().err


def test_report_names_two_runs_of_one_seed_in_one_row(tmp_path, capsys):
    _write_result(tmp_path / "a" / "semi" / "seed0", "semi", 0, 0.8)
    _write_result(tmp_path / "b" / "semi" / "seed0", "semi", 0, 0.6)
    write_report(tmp_path)
    err = capsys.readouterr().err
    assert "one row holds two runs of the same seed: s / semi: seed 0 in " in err
    assert str(tmp_path / "a" / "semi" / "seed0") in err and str(tmp_path / "b" / "semi" / "seed0") in err
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("Mean ± sample std over seeds")
    assert table.split("\n")[2:6] == [
        "Rows that hold two runs of the same seed (they average runs that are not repeats; give each variant its own "
        "folder):", f"- s / semi: seed 0 in {tmp_path / 'a' / 'semi' / 'seed0'}, {tmp_path / 'b' / 'semi' / 'seed0'}",
        "", to_markdown([]).split("\n")[0]]


@pytest.mark.parametrize("algorithm", ["fixmatch", "semi"])
def test_bench_throughput_reports_every_field(algorithm):
    config = tiny_config(algorithm=algorithm)
    result = measure(config, steps=2, warmup=1, rounds=2)
    for key in ("floor_s", "augment_s", "step_s", "ratio", "images_per_s", "device"):
        assert key in result
    assert result["images_per_step"] == 16 + 16 * 3
    assert result["ratio"] == pytest.approx(result["step_s"] / result["floor_s"])
    assert "ratio step / floor" in format_table(result)


def _script_the_timer(monkeypatch) -> list:
    """_Timer.time returns, for each timed function, the next of its scripted seconds (floor 1, 10, 2;
    augmentation 0.9, 0.1, 0.3; step 4, 60, 5) instead of timing; returns the (function, n) calls it gets."""
    from cissl.bench import throughput

    calls = []
    scripted = {"floor_step": [1.0, 10.0, 2.0], "augment_step": [0.9, 0.1, 0.3], "train_step": [4.0, 60.0, 5.0]}

    def time(timer, fn, n):
        calls.append((fn.__name__, n))
        return scripted[fn.__name__][sum(name == fn.__name__ for name, _ in calls) - 1]

    monkeypatch.setattr(throughput._Timer, "time", time)
    return calls


def test_bench_reports_the_median_of_interleaved_rounds_and_what_follows_from_it(monkeypatch):
    """With the timer scripted: floor, augmentation and step are timed in turn each round, steps // rounds
    steps each; the medians give the ratio, the augmentation's share, images/s and it/s."""
    calls = _script_the_timer(monkeypatch)
    result = measure(tiny_config(algorithm="fixmatch"), steps=7, warmup=1, rounds=3)
    assert calls == [("floor_step", 2), ("augment_step", 2), ("train_step", 2)] * 3
    assert (result["floor_s"], result["augment_s"], result["step_s"], result["steps_timed"]) == (2.0, 0.3, 5.0, 6)
    assert (result["rounds"], result["steps_per_round"]) == (3, 2)
    assert result["ratio"] == 2.5 and result["augment_fraction"] == pytest.approx(0.06)
    assert result["it_per_s"] == 0.2 and result["images_per_s"] == result["images_per_step"] / 5.0 == 64 / 5.0
    assert (result["algorithm"], result["model"], result["image_shape"]) == ("fixmatch", "WRN-10-1", [1, 8, 8])
    assert result["ddp_ranks"] is None and result["cuda_graphs"] is False and result["synthetic_data"] is False
    example = tiny_config(f"plugins=[{REPO / 'examples/my_methods.py'}]", "model.name=example_cnn",
                          algorithm="fixmatch")
    calls.clear()  # the script again
    assert measure(example, steps=7, warmup=1, rounds=3)["model"] == "example_cnn"  # a plugin's backbone: its name


def test_bench_draws_or_reads_its_data_and_compiles_the_floor_as_the_run(monkeypatch):
    """With the timer scripted: fewer steps than rounds time one step a round; --synthetic draws the data,
    else the setting's is read; train.compile compiles the floor's network as the run's, in the configured
    mode (recorded, not compiled)."""
    from cissl.bench import throughput
    from cissl.models.classifier import Classifier

    calls = _script_the_timer(monkeypatch)
    read, compiled = [], []
    prepare, synthetic = throughput.prepare_rank_data, throughput.synthetic_data
    monkeypatch.setattr(throughput, "prepare_rank_data", lambda *args: read.append("setting") or prepare(*args))
    monkeypatch.setattr(throughput, "synthetic_data", lambda *args: read.append("synthetic") or synthetic(*args))
    monkeypatch.setattr(Classifier, "compile_backbone", lambda self, **kwargs: compiled.append(kwargs))
    result = measure(tiny_config("train.compile=true", "train.compile_mode=reduce-overhead", algorithm="fixmatch"),
                     steps=2, warmup=0, rounds=3, synthetic=True)
    assert calls == [("floor_step", 1), ("augment_step", 1), ("train_step", 1)] * 3 and result["steps_timed"] == 3
    assert (result["compile"], result["compile_mode"], result["synthetic_data"]) == (True, "reduce-overhead", True)
    assert compiled == [{"mode": "reduce-overhead"}] * 2 and read == ["synthetic"]
    calls.clear()
    assert measure(tiny_config(algorithm="fixmatch"), steps=3, warmup=0, rounds=3)["compile_mode"] is None
    assert read == ["synthetic", "setting"] and len(compiled) == 2


def test_the_bench_names_the_network_and_times_with_the_clock(monkeypatch):
    """The table's network name; _Timer: the clock's seconds over n calls of fn, after waiting for the GPU's
    queue on a CUDA device (a CPU one has none to wait for)."""
    from types import SimpleNamespace

    from cissl.bench import throughput

    networks = ((), ("model.depth=28", "model.widen=2"), ("model.name=resnet50",))
    assert [throughput.model_label(tiny_config(*n).model) for n in networks] == ["WRN-10-1", "WRN-28-2", "ResNet-50"]
    ticks, called, synced = iter([10.0, 16.0]), [], []
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: synced.append(device))
    assert throughput._Timer(torch.device("cpu")).time(lambda: called.append(1), 3) == 2.0 and called == [1] * 3
    assert synced == []
    throughput._Timer(torch.device("cuda:1")).sync()
    assert synced == [torch.device("cuda:1")]


def test_bench_table_says_what_was_measured():
    result = TIMED
    assert format_table(result).splitlines() == [
        "semi on the configured data: WRN-28-2, 3x32x32, fp32, channels_last=True, compile=False, cuda_graphs=False, "
        "fused_sgd=False",
        "device: cpu; median of 3 interleaved rounds of 3 steps each (9 steps of each timed); the step of one of 2 DDP "
        "ranks",
        "  floor: network fwd+bwd+SGD on 320 images  0.5000 s/step",
        "  augmentation of one step's batch          0.0500 s/step (9.1 % of the step)",
        "  full semi training step                   0.5500 s/step",
        "  ratio step / floor                        1.100",
        "  throughput                                581.8 images/s, 1.82 it/s"]
    one_process = format_table({**result, "ddp_ranks": None}).splitlines()[1]
    assert one_process == "device: cpu; median of 3 interleaved rounds of 3 steps each (9 steps of each timed)"


def test_synthetic_data_has_the_settings_split_sizes():
    from cissl.bench.throughput import synthetic_data

    data = synthetic_data(tiny_config("data.val_per_class=2"), torch.device("cpu"))
    counts = [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]  # N1 = 40, gamma 10 over digits' 10 classes
    assert torch.bincount(data.labeled.labels).tolist() == counts and data.split.labeled_counts == counts
    assert len(data.unlabeled) == 80 + 61 + 47 + 37 + 28 + 22 + 17 + 13 + 10 + 8 and len(data.val) == 20
    assert (data.channels, data.image_size, data.num_classes) == (1, 8, 10)
    with_labeled = synthetic_data(tiny_config("data.unlabeled_includes_labeled=true"), torch.device("cpu"))
    assert len(with_labeled.unlabeled) == len(data.unlabeled) + sum(counts) and with_labeled.val is None
    assert len(synthetic_data(tiny_config(), torch.device("cpu"), max_pool=100).unlabeled) == 100
    with pytest.raises(ConfigError, match=r"^--synthetic needs a benchmark data set's shape; data.dataset=folder "
                                          r"gets its shape from the data: drop --synthetic$"):
        synthetic_data(load_config(None, ["data.dataset=folder", "data.root=/nowhere"]), torch.device("cpu"))


def test_synthetic_images_are_seeded_bytes_with_labels_where_a_run_has_them():
    """The same uint8 images on every call; labels for the labeled rows, the validation split, the test
    images and the pool where the setting gives its class counts (so the timed step records pseudo-label
    statistics as a run does); STL-10's unlabeled split (no counts) has none and max_pool images; a
    labeled fraction (Small-ImageNet-127) takes ILSVRC's 1300 images per class."""
    from cissl.bench.throughput import synthetic_data

    cpu = torch.device("cpu")
    data, again = (synthetic_data(tiny_config("data.val_per_class=2"), cpu) for _ in range(2))
    for name in ("labeled", "unlabeled", "test", "val"):
        pool, same = getattr(data, name), getattr(again, name)
        assert pool.images.dtype == torch.uint8 and torch.equal(pool.images, same.images), name
        assert torch.equal(pool.labels, same.labels) and set(pool.labels.tolist()) == set(range(10)), name
    assert len(data.unlabeled.labels) == len(data.unlabeled) and len(data.test) == 256
    assert data.val.labels.tolist() == [k for k in range(10) for _ in range(2)]
    stl = synthetic_data(load_config(CONFIGS / "stl10_lt/n150_g10.yaml"), cpu, max_pool=50)
    assert len(stl.unlabeled) == 50 and stl.unlabeled.labels is None and stl.unlabeled.images.shape[1:] == (3, 32, 32)
    imagenet = synthetic_data(load_config(CONFIGS / "imagenet127/32px.yaml"), cpu, max_pool=50)
    assert imagenet.split.labeled_counts == [130] * 127 and len(imagenet.labeled) == 130 * 127


def test_pool_pass_benchmark_prints_what_it_measured():
    """benchmarks/pool_pass_time.py on a tiny CIFAR-shaped setting: the pool size of the split, the
    pass, the step and the share are printed."""
    from conftest import REPO

    script = REPO / "benchmarks" / "pool_pass_time.py"
    setting = CONFIGS / "cifar10_lt/consistent_n500_m4000_g100.yaml"
    out = subprocess.run([sys.executable, str(script), "--config", str(setting), "--steps", "1", "model.depth=10",
                          "model.widen=1", "train.batch_size=4", "train.device=cpu", "train.epoch_length=100"],
                         capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[-1]
    assert "fixmatch_saw: pool " in line and " s; step " in line and "; 100 steps " in line
    pool = int(line.split("pool ")[1].split(" images")[0])
    assert pool > 1000 and line.rstrip().endswith("% to them")


def test_pass_benchmark_times_sevals_validation_fit():
    """The same script for SEVAL: the validation split of the setting (10 classes x val_per_class), the
    pass and the fit, against the fit_every steps between two fits."""
    from conftest import REPO

    script = REPO / "benchmarks" / "pool_pass_time.py"
    setting = CONFIGS / "cifar10_lt/consistent_n500_m4000_g100.yaml"
    out = subprocess.run([sys.executable, str(script), "--config", str(setting), "--algorithm", "fixmatch_seval",
                          "--steps", "1", "model.depth=10", "model.widen=1", "train.batch_size=4", "train.device=cpu",
                          "data.val_per_class=20", "algorithm.fit_every=50"],
                         capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[-1]
    assert "fixmatch_seval: validation split 200 images, pass + fit " in line and "(fit " in line
    assert "; 50 steps " in line and line.rstrip().endswith("% to them")


def test_bench_cli_json_with_synthetic_paper_shape(capsys):
    code, out, _ = run_cli(["bench", "throughput", "--config", CONFIGS / "cifar10_lt/consistent_n500_m4000_g100.yaml",
                            "--synthetic", "--steps", "1", "--warmup", "1", "--rounds", "1", "--json",
                            "--device", "cpu", "model.depth=10", "model.widen=1", "train.batch_size=4"], capsys)
    result = json.loads(out)
    assert code == 0 and result["image_shape"] == [3, 32, 32] and result["synthetic_data"]


@pytest.mark.parametrize("flag, value, least", [("--steps", "0", 1), ("--rounds", "0", 1), ("--warmup", "-1", 0)])
def test_bench_counts_out_of_range_are_one_line(flag, value, least, capsys, monkeypatch):
    """--rounds 0 divided by zero, --steps 0 timed a step per round anyway: refused before the data load."""
    import cissl.bench.throughput as throughput

    monkeypatch.setattr(throughput, "prepare_rank_data", lambda *args: pytest.fail("the data was loaded"))
    code, _, err = run_cli(["bench", "throughput", "--config", CONFIGS / "quickstart.yaml", flag, value], capsys)
    assert code == 2 and err.strip() == f"cissl: error: {flag} must be at least {least}, got {value}"


def test_jobs_file_runs_side_by_side_and_reports_a_failed_run(tmp_path, capsys):
    """`cissl sweep --jobs`: a run that fails inside its worker (its data folder is missing) is reported
    with its log's last line (its log keeps an earlier attempt's lines: the worker appends); the other
    finishes; the third job starts only once one of the two workers is free; the sweep then exits 2 with
    one line."""
    quick = CONFIGS / "quickstart.yaml"
    tiny = " ".join(TINY)
    jobs = tmp_path / "grid.jobs"
    jobs.write_text("# a comment line\n"
                    f"done {quick} supervised {tiny}\n"
                    f"missing {quick} supervised {tiny} data.dataset=cifar10 data.root={tmp_path / 'nowhere'}\n"
                    f"absent {quick} supervised {tiny} data.dataset=cifar10 data.root={tmp_path / 'nowhere'}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/missing.log").write_text("an earlier attempt's last line\n")
    code, out, err = run_cli(["sweep", "--jobs", jobs, "--workers", "2", "--out", tmp_path / "out", "train.device=cpu"],
                             capsys)
    assert code == 2 and err == (f"cissl: error: 2 of 3 runs did not finish: {tmp_path / 'out/missing'}, "
                                 f"{tmp_path / 'out/absent'} (their logs: <run dir>.log; run the same sweep again to "
                                 f"resume them)\n")
    assert (tmp_path / "out/done/results.json").is_file()
    failed = next(line for line in out.splitlines() if "/out/missing: FAILED" in line)
    assert "/out/missing: FAILED (exit 2) cissl: error: cifar10: missing file" in failed and "nowhere" in failed
    assert (tmp_path / "out/missing.log").read_text().startswith("an earlier attempt's last line\n")
    lines = out.splitlines()
    third = next(i for i, line in enumerate(lines) if line.startswith("[3/3]") and ": started (log " in line)
    first_end = next(i for i, line in enumerate(lines) if " FAILED " in line or ": top-1 " in line)
    assert sum(": started (log " in line for line in lines[:first_end]) == 2 and third > first_end


def test_each_line_a_sweep_prints_is_flushed_as_it_is_written(tmp_path, monkeypatch):
    """A sweep's lines reach a log file or a pipe as they happen (a long sweep under nohup), each flushed as it
    is printed: a finished run skipped, a run starting and its summary, a run that failed on its input."""
    class Flushes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.at_flush = []

        def flush(self):
            self.at_flush.append(self.getvalue())

    (tmp_path / "sweep/quickstart/fixmatch/seed0").mkdir(parents=True)
    (tmp_path / "sweep/quickstart/fixmatch/seed0/results.json").write_text("{}")
    monkeypatch.setattr("cissl.sweep.write_report", lambda out: [])
    monkeypatch.setattr("cissl.sweep.check_same_run", lambda job: None)

    def run_job(job, quiet):
        if job.config.train.seed == 2:
            raise CisslError("bad data")
        return {"top1": 0.5, "balanced_accuracy": 0.25}

    monkeypatch.setattr("cissl.sweep._run_job", run_job)
    stream = Flushes()
    with pytest.raises(CisslError, match="^1 of 2 runs did not finish"):
        run_sweep([str(CONFIGS / "quickstart.yaml")], ["fixmatch"], [0, 1, 2], tmp_path / "sweep", TINY, stream=stream)
    lines = stream.getvalue().splitlines(keepends=True)
    assert [line.split(": ", 1)[1] for line in lines] == ["finished, skipped\n", "starting\n",
                                                         "top-1 50.00 %, balanced 25.00 % (0 s)\n", "starting\n",
                                                         "FAILED: bad data\n"]
    assert stream.at_flush == ["".join(lines[:i]) for i in range(1, len(lines) + 1)]


# ----------------------------------------------------------------------------- grids, jobs files, workers
def test_plan_keeps_the_files_own_options_where_they_differ_from_the_methods_defaults(tmp_path):
    """CIFAR-10-LT at N1 = 500 warms SeMi up for 20 epochs (the default is 2): its own algorithm keeps them."""
    jobs = plan([str(CONFIGS / "cifar10_lt/consistent_n500_m4000_g100.yaml")], ["semi", "fixmatch"], [0], tmp_path)
    assert [job.config.algorithm.name for job in jobs] == ["semi", "fixmatch"]
    assert jobs[0].config.algorithm.warmup_epochs == 20


def test_plan_reads_each_file_with_the_overrides_and_names_a_nameless_setting_by_its_file(tmp_path):
    """A file that is valid only with the command line's overrides (its last-k window needs more
    evaluations than it sets) plans with them; without a `name` its setting is the file's stem."""
    text = (CONFIGS / "quickstart.yaml").read_text().replace("name: quickstart\n", "")
    text = text.replace("  eval_every: 100\n", "  eval_every: 1000\n")
    (tmp_path / "mine.yaml").write_text(text)
    with pytest.raises(ConfigError, match="train.report_last"):
        plan([str(tmp_path / "mine.yaml")], None, [0], tmp_path / "out")
    (job,) = plan([str(tmp_path / "mine.yaml")], None, [0], tmp_path / "out", ["train.eval_every=100"])
    assert job.config.algorithm.name == "fixmatch" and job.config.train.eval_every == 100
    assert job.run_dir == tmp_path / "out/mine/fixmatch/seed0"


def test_plan_by_seed_runs_whole_seeds_first_in_the_same_order(tmp_path):
    """Seeds 2 then 0 (the order given) of two configs x two algorithms: every seed-2 job before any seed-0 job,
    and within a seed the default order (config, then algorithm); the run directories are the default's."""
    configs = [str(CONFIGS / "quickstart.yaml"), str(CONFIGS / "fashion_lt/consistent_n100_m1000_g10.yaml")]
    default = plan(configs, ["semi", "fixmatch"], [2, 0], tmp_path)
    by_seed = plan(configs, ["semi", "fixmatch"], [2, 0], tmp_path, by_seed=True)
    assert [job.config.train.seed for job in by_seed] == [2, 2, 2, 2, 0, 0, 0, 0]
    assert [job.run_dir for job in by_seed] == [job.run_dir for job in default if job.config.train.seed == 2] + [
        job.run_dir for job in default if job.config.train.seed == 0]
    assert by_seed[0].run_dir == tmp_path / "quickstart/semi/seed2" and by_seed[1].run_dir.parts[-2:] == (
        "fixmatch", "seed2")


def test_grid_points_are_every_combination():
    from cissl.sweep import grid_points

    assert grid_points(["algorithm.tau2=0.5,1", "optim.lr=0.01,0.03"]) == [
        ["algorithm.tau2=0.5", "optim.lr=0.01"], ["algorithm.tau2=0.5", "optim.lr=0.03"],
        ["algorithm.tau2=1", "optim.lr=0.01"], ["algorithm.tau2=1", "optim.lr=0.03"]]
    assert grid_points(None) == [[]]  # no grid: one point without overrides
    assert grid_points(["data.root=/d/x=1,/d/y"]) == [["data.root=/d/x=1"], ["data.root=/d/y"]]  # key: up to the 1st =
    for bad in ("algorithm.tau2", "=1,2", "algorithm.tau2=1,,2"):
        with pytest.raises(ConfigError, match="--grid"):
            grid_points([bad])


def test_plan_with_a_grid_names_each_value(tmp_path):
    jobs = plan([str(CONFIGS / "quickstart.yaml")], ["semi"], [3], tmp_path, grid=["algorithm.balanced.tau2=0.5,2"])
    assert [job.config.algorithm.balanced.tau2 for job in jobs] == [0.5, 2.0]
    assert jobs[0].run_dir == tmp_path / "quickstart/semi/algorithm.balanced.tau2=0.5/seed3"
    assert jobs[1].config.name == "quickstart [algorithm.balanced.tau2=2]" and jobs[1].config.train.seed == 3
    two = plan([str(CONFIGS / "quickstart.yaml")], ["semi"], [0], tmp_path, grid=["optim.lr=0.1", "train.mu=2"])
    assert two[0].run_dir == tmp_path / "quickstart/semi/optim.lr=0.1,train.mu=2/seed0"
    assert two[0].config.name == "quickstart [optim.lr=0.1,train.mu=2]"


def test_jobs_file(tmp_path):
    from cissl.sweep import read_jobs_file

    path = tmp_path / "jobs"
    path.write_text(f"# name config algorithm overrides\nsmall {CONFIGS / 'quickstart.yaml'} semi optim.lr=0.01\n\n")
    (job,) = read_jobs_file(path, tmp_path / "out", ["train.iterations=1000"])
    assert job.run_dir == tmp_path / "out/small" and job.config.algorithm.name == "semi"
    assert job.config.optim.lr == 0.01 and job.config.train.iterations == 1000
    path.write_text(f"a {CONFIGS / 'quickstart.yaml'} semi\na {CONFIGS / 'quickstart.yaml'} fixmatch\n")
    with pytest.raises(CisslError, match="jobs:2: job name 'a' is used twice"):
        read_jobs_file(path, tmp_path)
    path.write_text("a config-only\n")
    with pytest.raises(CisslError, match="jobs:1: expected 'name config algorithm"):
        read_jobs_file(path, tmp_path)


def test_a_jobs_file_takes_quoted_words_and_names_an_unreadable_file(tmp_path):
    from cissl.sweep import read_jobs_file

    path = tmp_path / "jobs"
    path.write_text(f"'my run' {CONFIGS / 'quickstart.yaml'} semi 'name=a b'  # a note\n")
    (job,) = read_jobs_file(path, tmp_path / "out")
    assert job.run_dir == tmp_path / "out/my run" and job.config.name == "a b"
    with pytest.raises(CisslError, match=f"^cannot read jobs file {re.escape(str(tmp_path / 'none'))}: No such file"):
        read_jobs_file(tmp_path / "none", tmp_path)


def test_a_planned_run_is_compared_with_the_saved_one_key_by_key(tmp_path):
    """Only a saved config that differs stops the sweep; it names the first three differing keys (a key on one
    side only too) and counts the rest."""
    from cissl.config import flat_keys, save_config
    from cissl.rundir import RunDir
    from cissl.sweep import Job, check_same_run

    config = tiny_config()
    check_same_run(Job(config, tmp_path / "nothing_there"))
    (tmp_path / "run").mkdir()
    save_config(config, RunDir(tmp_path / "run").config)
    check_same_run(Job(config, tmp_path / "run"))
    check_same_run(Job(config.replace({"data.root": "/moved/data"}), tmp_path / "run"))  # where, not which data
    other = config.replace({"optim.lr": 0.5, "train.seed": 7})
    with pytest.raises(CisslError, match=re.escape(f"{tmp_path / 'run'} holds a run with other settings: optim.lr "
                                                   f"(0.03 there, 0.5 planned), train.seed (0 there, 7 planned); "
                                                   f"choose another --out or remove that run")):
        check_same_run(Job(other, tmp_path / "run"))
    switched = tiny_config("optim.lr=0.5", "train.seed=7", algorithm="supervised")
    saved, planned = flat_keys(config.to_dict()), flat_keys(switched.to_dict())
    differ = sum(saved.get(key) != planned.get(key) for key in saved.keys() | planned.keys())
    first_three = (r"algorithm.aux_head.name \('none' there, None planned\), algorithm.name \('fixmatch' there, "
                   r"'supervised' planned\), algorithm.refiner.name \('none' there, None planned\)")
    with pytest.raises(CisslError, match=rf"holds a run with other settings: {first_three} and {differ - 3} more; "):
        check_same_run(Job(switched, tmp_path / "run"))


def test_a_run_planned_twice_runs_once_and_two_configs_of_one_name_are_refused(tmp_path, capsys):
    """A seed or an algorithm given twice plans the same run directory again: it runs once (before, it ran,
    then 'resumed' its finished copy; side by side the copy would fail on the run's lock). Two config files
    with the same name but other settings planned into one directory are refused before anything runs: the
    second used to resume the first's run and report it as its own."""
    from cissl.sweep import Job, unique_jobs

    a, b = tiny_config(), tiny_config("optim.lr=0.5")
    jobs = [Job(a, tmp_path / "x"), Job(b, tmp_path / "y"), Job(a, tmp_path / "x")]
    assert unique_jobs(jobs) == jobs[:2]
    with pytest.raises(ConfigError, match=re.escape(f"two jobs of this sweep would share the run directory "
                                                    f"{tmp_path / 'x'} with other settings: optim.lr (0.03 first, "
                                                    f"0.5 then); give the configs different names")):
        unique_jobs([*jobs, Job(b, tmp_path / "x")])
    quick = CONFIGS / "quickstart.yaml"
    rows = run_sweep([str(quick)], ["supervised", "supervised"], [0, 0], tmp_path / "runs", TINY)
    out = capsys.readouterr().out
    assert len(rows) == 1 and out.count("seed0: starting") == 1 and "[1/1]" in out and "resuming" not in out
    (tmp_path / "other.yaml").write_text(quick.read_text().replace("cutout: 4", "cutout: 2"))
    with pytest.raises(ConfigError, match=r"share the run directory .*quickstart/supervised/seed1 with other settings: "
                                          r"augment.cutout \(4 first, 2 then\)"):
        run_sweep([str(quick), str(tmp_path / "other.yaml")], ["supervised"], [1], tmp_path / "runs", TINY)
    assert not (tmp_path / "runs/quickstart/supervised/seed1").exists()


def test_workers_run_side_by_side_and_a_deadline_leaves_runs_to_resume(tmp_path, capsys):
    """Two runs in two worker processes: both finish with their logs beside them, each at its share of
    the threads. A deadline of 0 stops the two runs it started, says so, starts none of the third (its run
    folder is never made), names all three in one line; the same sweep without it then finishes them."""
    config = str(CONFIGS / "quickstart.yaml")
    stream = io.StringIO()
    rows = run_sweep([config], ["supervised"], [0, 1], tmp_path / "a", TINY, workers=2, stream=stream)
    threads = threads_per_job(2)
    threads = "1 thread" if threads == 1 else f"{threads} threads"  # "1 thread" on 2 cores
    assert rows[0]["seeds"] == [0, 1] and stream.getvalue().startswith(f"2 runs, 2 at a time, {threads} each\n")
    assert (tmp_path / "a/quickstart/supervised/seed1.log").is_file()
    sequential = run_sweep([config], ["supervised"], [0], tmp_path / "b", TINY)
    first = json.loads((tmp_path / "a/quickstart/supervised/seed0/results.json").read_text())
    assert first["top1"] == sequential[0]["top1"][0]  # the same run in a worker process
    assert first["environments"][0]["threads"] == threads_per_job(2)  # its share of the cores, not all of them
    stream = io.StringIO()
    with pytest.raises(CisslError, match="3 of 3 runs did not finish"):  # the CLI: exit 2, one line
        run_sweep([config], ["fixmatch"], [0, 1, 2], tmp_path / "c", TINY, workers=2, deadline=0, stream=stream)
    printed = stream.getvalue()
    assert printed.count(": stopped at the deadline\n") == 2 and "[3/3]" not in printed.split(": stopped at")[0]
    assert printed.endswith(f"[3/3] {tmp_path / 'c/quickstart/fixmatch/seed2'}: not started (deadline)\n")
    assert not (tmp_path / "c/quickstart/fixmatch/seed2").exists()
    rows = run_sweep([config], ["fixmatch"], [0, 1, 2], tmp_path / "c", TINY, workers=2)
    assert rows[0]["seeds"] == [0, 1, 2]


def test_a_sweep_runs_its_grid_and_its_jobs_file_together_quietly_into_its_stream(tmp_path, capsys):
    """The grid's runs and the jobs file's run in one sweep, the overrides applied to both; every line on
    the given stream (none on stdout) and no run's progress lines (quiet); run again, both are skipped."""
    config = str(CONFIGS / "quickstart.yaml")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"extra {config} supervised train.seed=3\n")
    stream = io.StringIO()
    run_sweep([config], ["supervised"], [0], tmp_path / "out", TINY, stream=stream, grid=["optim.lr=0.01,0.02"],
              jobs_file=jobs)
    for name in ("quickstart/supervised/optim.lr=0.01/seed0", "quickstart/supervised/optim.lr=0.02/seed0", "extra"):
        assert json.loads((tmp_path / "out" / name / "results.json").read_text())["iterations"] == 4  # TINY's
    printed = stream.getvalue()
    assert capsys.readouterr().out == "" and "[cissl]" not in printed
    lines = printed.splitlines()  # each run: its start, then its result
    assert len(lines) == 6 and all(line.endswith(": starting") for line in lines[::2])
    assert all(": top-1 " in line for line in lines[1::2])
    stream = io.StringIO()
    run_sweep([config], ["supervised"], [0], tmp_path / "out", TINY, stream=stream, grid=["optim.lr=0.01,0.02"],
              jobs_file=jobs)
    assert stream.getvalue().count(": finished, skipped\n") == 3 and capsys.readouterr().out == ""


def test_workers_below_one_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^--workers must be at least 1, got 0$"):
        run_sweep([str(CONFIGS / "quickstart.yaml")], ["fixmatch"], [0], tmp_path / "w", TINY, workers=0)
    assert not (tmp_path / "w").exists()


def test_a_deadline_already_past_is_refused_before_any_run_starts(tmp_path):
    """A negative --deadline (a clock time already past: `date -d 01:50` taken before midnight is today's)
    would start every run only to stop it at once: refused with one line, before anything is written."""
    config = str(CONFIGS / "quickstart.yaml")
    with pytest.raises(ConfigError, match=r"--deadline must be 0 or more seconds, got -5 "):
        run_sweep([config], ["fixmatch"], [0], tmp_path / "d", TINY, workers=2, deadline=-5)
    assert not (tmp_path / "d").exists()


def test_each_jobs_threads_are_omp_num_threads_or_the_cores_shared_and_a_bad_value_is_one_line(tmp_path,
                                                                                               monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [threads_per_job(w) for w in (1, 3, 8, 16)] == [8, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_job(2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_job(2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert threads_per_job(4) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # the count unknown: one thread each
    assert threads_per_job(1) == 1
    config = str(CONFIGS / "quickstart.yaml")
    for bad in ("abc", "0", "-2", "1.5"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ConfigError, match=rf"^OMP_NUM_THREADS '{re.escape(bad)}' is not a whole number of "
                                              r"threads above 0; set it to one or unset it to give each job the "
                                              r"cores / --workers$"):
            run_sweep([config], ["fixmatch"], [0], tmp_path / "d", TINY, workers=2)
        assert not (tmp_path / "d").exists()


def test_runs_evaluated_on_validation_never_see_the_test_set(tmp_path):
    from cissl.engine.data import prepare_data

    config = tiny_config("data.val_per_class=5", "train.evaluate_on=val")
    data = prepare_data(config, "cpu")
    assert data.test is data.val and len(data.test) == 50
    rows = run_sweep([str(CONFIGS / "quickstart.yaml")], ["supervised"], [0], tmp_path,
                     [*TINY, "data.val_per_class=5", "train.evaluate_on=val"])
    result = json.loads((tmp_path / "quickstart/supervised/seed0/results.json").read_text())
    assert result["evaluated_on"] == "val" and sum(map(sum, result["confusion_matrix"])) == 50
    assert result["best_on_test_top1"]["note"] == "selected on the validation split"
    assert rows[0]["setting"] == "quickstart (validation)"
    with pytest.raises(ConfigError, match="train.evaluate_on.*data.val_per_class"):
        tiny_config("train.evaluate_on=val")


def test_paired_differences_by_seed():
    """semi - fixmatch per seed: seed 0: 0.80 - 0.70, seed 1: 0.90 - 0.76 -> 0.10 and 0.14: mean 0.12, std
    0.0283; seed 2 ran only for semi and is left out; validation runs pair only with validation runs."""
    from cissl.evaluation.report import paired_differences, paired_markdown

    def run(algorithm, seed, value, evaluated_on="test"):
        return {"setting": "s", "algorithm": algorithm, "seed": seed, "balanced_accuracy": value,
                "evaluated_on": evaluated_on}

    runs = [run("semi", 0, 0.80), run("semi", 1, 0.90), run("semi", 2, 0.5), run("fixmatch", 0, 0.70),
            run("fixmatch", 1, 0.76), run("fixmatch", 0, 0.1, "val")]
    (row,) = paired_differences(runs, "semi")
    assert row["seeds"] == [0, 1] and row["algorithm"] == "fixmatch"
    assert row["difference"][0] == pytest.approx(0.12) and row["difference"][1] == pytest.approx(0.0282843, rel=1e-5)
    assert "| s | fixmatch | 0 1 | 12.00 ± 2.83 |" in paired_markdown([row], "semi")


def test_one_row_pairs_with_every_setting_that_shares_its_split(tmp_path, capsys):
    """SETTING:ALGORITHM: s/semi minus the ablations' rows (other settings) and s/fixmatch, by seed:
    wo_ea 0.80 - 0.78, 0.90 - 0.86 -> 3.00 ± 1.41 points; wo_bc 0.80 - 0.70 (seed 0 only); the row itself is
    left out; an unknown row is one line naming the rows."""
    for setting, algorithm, values in [("s", "semi", (0.80, 0.90)), ("s", "fixmatch", (0.75, 0.95)),
                                       ("s/wo_ea", "semi", (0.78, 0.86)), ("s/wo_bc", "semi", (0.70,))]:
        for seed, value in enumerate(values):
            path = tmp_path / setting / algorithm / f"seed{seed}"
            path.mkdir(parents=True)
            (path / "results.json").write_text(json.dumps({"setting": setting, "algorithm": algorithm, "seed": seed,
                                                           "balanced_accuracy": value}))
    code, out, _ = run_cli(["report", tmp_path, "--pair", "s:semi"], capsys)
    assert code == 0
    paired = (tmp_path / "paired.md").read_text()
    assert "| s | fixmatch | 0 1 | 0.00 ± 7.07 |" in paired
    assert "| s/wo_ea | semi | 0 1 | 3.00 ± 1.41 |" in paired and "| s/wo_bc | semi | 0 | 10.00 |" in paired
    assert "| s | semi |" not in paired
    code, _, err = run_cli(["report", tmp_path, "--pair", "t:semi"], capsys)
    assert code == 2 and "--pair t:semi: no such row with balanced_accuracy; the rows are s:fixmatch, s:semi" in err


def test_a_sweep_refuses_a_finished_run_of_other_settings(tmp_path):
    """Restarting a sweep with another override must not count the old runs as the new ones."""
    config = str(CONFIGS / "quickstart.yaml")
    run_sweep([config], ["supervised"], [0], tmp_path, TINY)
    with pytest.raises(CisslError, match=r"seed0 holds a run with other settings: optim.lr \(0.03 there, 0.01 planned"):
        run_sweep([config], ["supervised"], [0], tmp_path, [*TINY, "optim.lr=0.01"])


def test_report_names_unreadable_results_and_refuses_a_missing_folder(tmp_path, capsys):
    config = str(CONFIGS / "quickstart.yaml")
    run_sweep([config], ["supervised"], [0, 1], tmp_path, TINY)
    (tmp_path / "quickstart/supervised/seed1/results.json").write_text("{truncated")
    code, out, err = run_cli(["report", tmp_path], capsys)
    assert code == 0 and "| quickstart | supervised | 0 |" in out
    assert "left out of the tables, unreadable" in err and "seed1/results.json" in err
    table = (tmp_path / "results.md").read_text()
    assert "seed1/results.json" in table and table.startswith("Mean ± sample std over seeds")  # the note stays
    code, _, err = run_cli(["report", tmp_path / "nothing_here"], capsys)
    assert code == 2 and "no such folder" in err and len(err.strip().splitlines()) == 1


def test_report_mistakes_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in ((["report", tmp_path / "empty"], f"no results.json below {tmp_path / 'empty'}"),
                          (["report", tmp_path, "--per-seed", "--out", tmp_path / "r"],
                           "--per-seed writes DIR/per_seed.md of one folder: leave out --out"),
                          (["report", tmp_path, tmp_path / "empty"],
                           "several folders or --tsne: give --out OUT for report.md / report.html"),
                          (["report", tmp_path / "empty", "--tsne"],
                           "several folders or --tsne: give --out OUT for report.md / report.html")):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and out == "" and err == f"cissl: error: {message}\n", argv


def test_results_files_of_another_shape_are_named_not_read(tmp_path):
    """A results.json that is JSON but not a cissl result (a list; a dict without algorithm and seed) is
    left out and named, as a truncated one is."""
    for name, content in (("good", {"algorithm": "semi", "seed": 0}),  # the two keys it needs, nothing else
                          ("a_list", [1, 2]), ("other_tool", {"accuracy": 0.9})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(content))
    unreadable = []
    runs = collect_results(tmp_path, unreadable)
    assert runs == [{"algorithm": "semi", "seed": 0, "run_dir": str(tmp_path / "good"), "method": "semi"}]
    assert unreadable == [f"{tmp_path / name / 'results.json'} (not a cissl results file)"
                          for name in ("a_list", "other_tool")]


def test_a_run_that_fails_does_not_stop_the_sweep(tmp_path, capsys):
    """Seed 0's only checkpoint is damaged: the sequential sweep reports it and still runs seed 1."""
    config = str(CONFIGS / "quickstart.yaml")
    run_sweep([config], ["supervised"], [0], tmp_path, TINY)
    run_dir = tmp_path / "quickstart/supervised/seed0"
    (run_dir / "results.json").unlink()
    for path in (run_dir / "checkpoints").glob("ckpt_*.pt"):
        path.write_bytes(b"garbage")
    stream, _ = io.StringIO(), capsys.readouterr()
    with pytest.raises(CisslError, match=rf"^1 of 2 runs did not finish: {re.escape(str(run_dir))} \(the lines "
                                         r"above; run the same sweep again to resume them\)$"):
        run_sweep([config], ["supervised"], [0, 1], tmp_path, TINY, stream=stream)
    assert f"[1/2] {run_dir}: FAILED: no readable checkpoint" in stream.getvalue() and capsys.readouterr().out == ""
    assert (tmp_path / "quickstart/supervised/seed1/results.json").is_file()


@pytest.mark.parametrize("inherited, to_group, number, finish", [
    (signal.SIG_DFL, True, signal.SIGINT, True), (signal.SIG_IGN, True, signal.SIGINT, False),
    (signal.SIG_DFL, False, signal.SIGTERM, False), (signal.SIG_DFL, False, signal.SIGHUP, False)],
    ids=["terminal", "started_ignoring_sigint", "sigterm_to_the_sweep_alone", "hangup"])
def test_ctrl_c_on_a_sweep_with_workers_checkpoints_every_running_run(tmp_path, inherited, to_group, number, finish):
    """SIGINT to the sweep's process group (a terminal's Ctrl-C, or kill -INT of a sweep started in the
    background, which inherits SIGINT ignored), SIGTERM to the sweep's process alone (a scheduler; before,
    its workers never heard of it and ran on) or SIGHUP (a closed terminal; the workers get SIGTERM): each
    worker gets a signal once, writes a checkpoint of its last step and stops, the sweep waits for them and
    exits 128 + the signal; the same sweep then finishes both runs (checked once, after the terminal's Ctrl-C:
    how a sweep stopped does not change how it resumes, and each finish takes ~30 s of the suite)."""
    import time

    from cissl.engine.checkpoint import latest_checkpoint, load_checkpoint

    # long enough (about 20 s a run here) that neither run can finish before the other has started, even
    # on a loaded machine (with 400 iterations one run once finished first and the check below failed)
    long = ["train.iterations=2000", "train.eval_every=1000", "train.checkpoint_every=1000", "train.log_every=1",
            "model.depth=10", "model.widen=1", "train.batch_size=8", "train.report_last=1", "train.device=cpu"]
    command = [sys.executable, "-m", "cissl", "sweep", "--configs", str(CONFIGS / "quickstart.yaml"), "--algorithms",
               "supervised", "--seeds", "0", "1", "--workers", "2", "--out", str(tmp_path), *long]
    # a terminal's sweep starts with SIGINT's default; a shell's background job starts with SIGINT ignored
    # (and so would this sweep, whatever pytest itself inherited): the sweep must stop on it either way
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: (signal.signal(signal.SIGINT, inherited),
                                                   signal.signal(signal.SIGHUP, signal.SIG_DFL)))  # not nohup's
    runs = [tmp_path / f"quickstart/supervised/seed{s}" for s in (0, 1)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(
            (r / "metrics.jsonl").is_file() and (r / "metrics.jsonl").read_text().count("\n") >= 20 for r in runs):
        time.sleep(0.05)
    (os.killpg if to_group else os.kill)(process.pid, number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + number, err
    assert "waiting for 2 running runs to checkpoint and stop" in out
    for run in runs:
        assert 20 <= load_checkpoint(latest_checkpoint(run / "checkpoints"))["iteration"] < 2000
        passed_on = signal.Signals(signal.SIGTERM if number == signal.SIGHUP else number).name
        assert f"{passed_on}: stopped after iteration" in run.with_name(run.name + ".log").read_text()
    if not finish:
        return
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr
    assert all((run / "results.json").is_file() for run in runs)


class _FakeWorker:
    """A worker process as ``_side_by_side_loop`` sees it, with no process behind it: ``on_start`` and
    ``on_join`` may raise a signal in this (the sweep's) process at that moment; a signal sent to it stops it;
    ``killed`` says whether it was killed."""

    sent: list = []

    def __init__(self, target, args, daemon, on_start=None, on_join=None):
        self.pid, self.alive, self.exitcode, self.killed = 10 ** 7, False, None, False  # os.kill is replaced
        self.on_start, self.on_join = on_start, on_join

    def start(self):
        self.alive = True
        if self.on_start:
            signal.raise_signal(self.on_start)

    def is_alive(self):
        return self.alive

    def join(self, timeout=None):
        if self.on_join and self.alive:
            number, self.on_join = self.on_join, None
            signal.raise_signal(number)
        self.alive = self.alive and not any(pid == self.pid for pid, _ in self.sent)

    def kill(self):
        self.alive, self.killed = False, True


def _fake_workers(monkeypatch, worker=_FakeWorker, **events):
    import multiprocessing

    import cissl.sweep as sweep

    sent = []
    monkeypatch.setattr(_FakeWorker, "sent", sent)
    monkeypatch.setattr(sweep.os, "kill", lambda pid, number: sent.append((pid, number)))

    class Context:
        @staticmethod
        def Process(target, args, daemon):
            return worker(target, args, daemon, **events)

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: Context)
    return sent


def test_unfinished_runs_are_named_in_the_sweeps_order_whatever_order_they_end(tmp_path, monkeypatch):
    """Two workers fail, the one started second first: the sweep's one line names them in the sweep's
    order (jobs file order), and each FAILED line carries its own log's last line."""
    import time

    class Failing(_FakeWorker):  # writes its log and exits 2 on its own: the first started after 0.6 s
        started = 0

        def __init__(self, target, args, daemon):
            super().__init__(target, args, daemon)
            _, log_path, _ = args
            log_path.write_text(f"training\ncissl: error: {log_path.stem} failed\n")
            Failing.started += 1
            self.end, self.exitcode = time.monotonic() + (0.6 if Failing.started == 1 else 0.0), 2

        def is_alive(self):
            return time.monotonic() < self.end

    _fake_workers(monkeypatch, worker=Failing)
    quick = CONFIGS / "quickstart.yaml"
    (tmp_path / "grid.jobs").write_text(f"first {quick} supervised\nsecond {quick} supervised\n")
    stream = io.StringIO()
    with pytest.raises(CisslError, match=rf"^2 of 2 runs did not finish: {re.escape(str(tmp_path / 'out/first'))}, "
                                         rf"{re.escape(str(tmp_path / 'out/second'))} \(their logs"):
        run_sweep([], [], [0], tmp_path / "out", TINY, jobs_file=tmp_path / "grid.jobs", workers=2, stream=stream)
    ended = [line.split(": FAILED (exit 2) ")[1] for line in stream.getvalue().splitlines() if "FAILED" in line]
    assert ended == ["cissl: error: second failed", "cissl: error: first failed"]


def test_a_signal_as_a_worker_starts_still_reaches_that_worker(tmp_path, monkeypatch):
    """SIGTERM arrives while the sweep's worker is starting, before it is in the list of running ones: it
    waits until the worker is listed, so the worker gets it and the sweep stops with 128 + 15 (before, the
    sweep stopped and left that worker to run on alone)."""
    from cissl.engine.stop import TrainingStopped
    from cissl.sweep import Job, _run_side_by_side

    sent = _fake_workers(monkeypatch, on_start=signal.SIGTERM)
    job = Job(None, tmp_path / "setting/algorithm/seed0")
    with pytest.raises(TrainingStopped) as stopped:
        _run_side_by_side([("[1/1] seed0", job)], 2, 1, None, io.StringIO())
    assert stopped.value.signal_number == signal.SIGTERM
    assert sent == [(10 ** 7, signal.SIGTERM)]


def test_a_ctrl_c_during_the_deadlines_grace_is_not_a_second_signal_to_the_workers(tmp_path, monkeypatch):
    """The deadline has sent SIGTERM and the sweep waits for the worker's checkpoint when Ctrl-C comes: the
    worker must not get SIGINT too (a second signal stops a run at once, without the checkpoint of its
    step); the sweep waits for it and stops with 128 + 2."""
    from cissl.engine.stop import TrainingStopped
    from cissl.sweep import Job, _run_side_by_side

    sent = _fake_workers(monkeypatch, on_join=signal.SIGINT)
    job = Job(None, tmp_path / "setting/algorithm/seed0")
    with pytest.raises(TrainingStopped) as stopped:
        _run_side_by_side([("[1/1] seed0", job)], 2, 1, 0, io.StringIO())
    assert stopped.value.signal_number == signal.SIGINT
    assert sent == [(10 ** 7, signal.SIGTERM)]


STOPPED_BETWEEN_CHECKPOINTS = ("cissl: {}: stopped between checkpoints; the same sweep command resumes it from its "
                               "last one (or starts it again)\n")


def test_the_sweep_catches_every_stop_signal_but_a_hangup_it_was_started_ignoring():
    """While workers run, SIGINT and SIGTERM raise in the sweep even where it inherited them ignored (a
    shell's background job ignores SIGINT), and so does SIGHUP (a closed terminal) unless the sweep was
    started ignoring it (nohup: the README's promise that such a sweep goes on); the handlers it found are
    put back afterwards."""
    from cissl.sweep import _Signalled, _stop_signals_raise

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for hangup in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, hangup)
            with _stop_signals_raise():
                for number in (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hangup is signal.SIG_DFL else ()):
                    with pytest.raises(_Signalled) as caught:
                        signal.raise_signal(number)
                    assert caught.value.number == number
                assert (signal.getsignal(signal.SIGHUP) is signal.SIG_IGN) == (hangup is signal.SIG_IGN)
                if hangup is signal.SIG_IGN:
                    signal.raise_signal(signal.SIGHUP)  # ignored: nothing happens
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGHUP) is hangup
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_worker_that_outlasts_the_grace_is_killed_and_none_is_signalled_twice(monkeypatch):
    """_stop_workers: each worker not yet signalled gets the signal once (one already sent it, e.g. by the
    deadline, gets no second one, which would stop it without its checkpoint); a worker still alive when the
    grace is over is killed, so the sweep never waits for ever."""
    from cissl.sweep import _stop_workers

    class Stubborn(_FakeWorker):  # a signal does not stop it
        def join(self, timeout=None):
            pass

    sent = _fake_workers(monkeypatch)
    obeys, stubborn, earlier = _FakeWorker(None, (), True), Stubborn(None, (), True), _FakeWorker(None, (), True)
    for pid, worker in enumerate((obeys, stubborn, earlier), start=1):
        worker.pid = pid
    obeys.start()
    stubborn.start()
    signalled = {earlier}  # signalled by the deadline, and ended since
    _stop_workers([obeys, stubborn, earlier], signal.SIGTERM, 0.0, signalled)
    assert [pid for pid, _ in sent] == [1, 2] and signalled == {obeys, stubborn, earlier}
    assert not obeys.killed and stubborn.killed and not stubborn.is_alive() and not earlier.killed


@contextlib.contextmanager
def _sigint_not_ignored():
    """Workers started as from a terminal, whatever launched the tests: a shell without job control starts a
    background command (``pytest &``) with SIGINT ignored, which its spawned workers would inherit, and an
    inherited SIG_IGN is, on purpose, left alone (the SIGHUP-under-nohup case below)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_that_reaches_a_worker_as_it_starts_stops_it_with_one_line(tmp_path):
    """A worker started under the held signals, as the sweep starts them, is sent SIGINT at once, while it
    may still be importing (as a terminal's Ctrl-C reaches it before it has its own process group): the
    signal waits until the worker can take it, then stops it before its run began: exit 130, one line in its
    log, no traceback (before, a KeyboardInterrupt traceback on the sweep's terminal)."""
    import multiprocessing

    from cissl.sweep import Job, _child, _signals_held

    log = tmp_path / "seed0.log"
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(Job(None, tmp_path / "seed0"), log, 1), daemon=True)
    with _sigint_not_ignored(), _signals_held():
        process.start()
        os.kill(process.pid, signal.SIGINT)
    process.join(timeout=120)
    assert process.exitcode == 128 + signal.SIGINT
    assert log.read_text() == STOPPED_BETWEEN_CHECKPOINTS.format("SIGINT")


def _child_signalled_in_its_job(job, log, number, ignored):
    """A sweep worker whose job, while it loads (before the training loop's own handlers), is sent ``number``."""
    import time

    import cissl.sweep as sweep

    def job_sent_a_signal(job, quiet):
        os.kill(os.getpid(), number)
        time.sleep(2.0)  # the signal is handled long before this ends

    sweep._run_job = job_sent_a_signal
    if ignored:  # as SIGHUP under nohup
        signal.signal(number, signal.SIG_IGN)
    sweep._child(job, log, 1)


@pytest.mark.parametrize("name, ignored, status, line", [
    ("SIGINT", False, 128 + signal.SIGINT, STOPPED_BETWEEN_CHECKPOINTS.format("SIGINT")),
    ("SIGTERM", False, 128 + signal.SIGTERM, STOPPED_BETWEEN_CHECKPOINTS.format("SIGTERM")),
    ("SIGHUP", True, 0, ""),
])
def test_a_signal_while_a_worker_loads_its_run_stops_it_with_one_line(tmp_path, name, ignored, status, line):
    """After its start-up, while its job loads data and builds its model (before the training loop's own
    handling, which checkpoints the step), a worker sent SIGINT or SIGTERM stops with one line and exit
    128 + n (before, a KeyboardInterrupt traceback, exit 1, or a silent kill); a signal it inherited as
    ignored stays ignored and the job ends as usual."""
    import multiprocessing

    from cissl.sweep import Job

    log = tmp_path / "seed0.log"
    number = getattr(signal, name)
    process = multiprocessing.get_context("spawn").Process(
        target=_child_signalled_in_its_job, args=(Job(None, tmp_path / "seed0"), log, number, ignored), daemon=True)
    with _sigint_not_ignored():
        process.start()
    process.join(timeout=120)
    assert process.exitcode == status
    assert log.read_text() == line


def test_pass_benchmark_times_cossls_stage():
    """The same script for CoSSL: its one stage (the EMA network on the labeled images and the pool, then
    the teacher's warm-up), against the whole run."""
    from conftest import REPO

    script = REPO / "benchmarks" / "pool_pass_time.py"
    setting = CONFIGS / "cifar10_lt/consistent_n500_m4000_g100.yaml"
    out = subprocess.run([sys.executable, str(script), "--config", str(setting), "--algorithm", "fixmatch_cossl",
                          "--steps", "1", "model.depth=10", "model.widen=1", "train.batch_size=4", "train.device=cpu",
                          "data.labeled_head=100", "data.unlabeled_head=100", "algorithm.warmup_epochs=1",
                          "train.epoch_length=20"],
                         capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[-1]
    assert "fixmatch_cossl: stage (labeled + pool pass, classifier warm-up) " in line and " s, once; step " in line
    assert "; 250000 steps " in line and line.rstrip().endswith("% to them")
