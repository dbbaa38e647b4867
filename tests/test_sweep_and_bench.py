import csv
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import CONFIGS, run_cli
from helpers import tiny_config

from cissl.bench.throughput import format_table, measure
from cissl.evaluation.report import aggregate, to_csv, to_markdown
from cissl.sweep import plan, run_sweep

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
    first = json.loads((tmp_path / "quickstart/fixmatch/seed1/results.json").read_text())
    # an interrupted run (checkpoint at 2, no results) is resumed; finished ones are skipped
    run_dir = tmp_path / "quickstart/fixmatch/seed1"
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoints/ckpt_00000004.pt").unlink()
    capsys.readouterr()
    rows = run_sweep([config], ["supervised", "fixmatch"], [0, 1], tmp_path, TINY)
    log = capsys.readouterr().out
    assert log.count("finished, skipped") == 3 and "resuming" in log
    again = json.loads((run_dir / "results.json").read_text())
    assert again["top1"] == first["top1"]  # resumed bit-for-bit
    table = (tmp_path / "results.md").read_text()
    assert "| quickstart | fixmatch | 0 1 |" in table
    # the table agrees with the runs' results.json
    runs = [json.loads((tmp_path / f"quickstart/supervised/seed{s}/results.json").read_text()) for s in (0, 1)]
    row = next(r for r in rows if r["algorithm"] == "supervised")
    assert row["top1"][0] == pytest.approx(sum(r["top1"] for r in runs) / 2)
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert float(parsed[1]["top1_mean"]) == pytest.approx(row["top1"][0])
    code, out, _ = run_cli(["report", tmp_path], capsys)
    assert code == 0 and "supervised" in out


def test_aggregate_mean_and_sample_std():
    runs = [{"setting": "s", "algorithm": "a", "seed": i, "top1": v, "balanced_accuracy": v,
             "many_accuracy": v, "medium_accuracy": v, "few_accuracy": v, "mean_last_top1": v,
             "wall_time_s": 60.0} for i, v in enumerate([0.5, 0.7])]
    (row,) = aggregate(runs)
    assert row["top1"][0] == pytest.approx(0.6) and row["top1"][1] == pytest.approx(0.1414213, rel=1e-5)
    assert "60.00 ± 14.14" in __import__("cissl.evaluation.report", fromlist=["to_markdown"]).to_markdown([row])
    assert "0.6" in to_csv([row])


def test_single_seed_row_has_no_spread():
    run = {"setting": "s", "algorithm": "a", "seed": 0, "top1": 0.5, "balanced_accuracy": 0.5, "many_accuracy": 0.5,
           "medium_accuracy": 0.5, "few_accuracy": 0.5, "mean_last_top1": 0.5, "wall_time_s": 60.0}
    (row,) = aggregate([run])
    assert row["top1"] == (0.5, None)
    table = to_markdown([row])
    assert "| 50.00 |" in table and "±" not in table
    parsed = next(csv.DictReader(io.StringIO(to_csv([row]))))
    assert float(parsed["top1_mean"]) == 0.5 and parsed["top1_std"] == ""


@pytest.mark.parametrize("algorithm", ["fixmatch", "semi"])
def test_bench_throughput_reports_every_field(algorithm):
    config = tiny_config(algorithm=algorithm)
    result = measure(config, steps=2, warmup=1, rounds=2)
    for key in ("floor_s", "augment_s", "step_s", "ratio", "images_per_s", "device"):
        assert key in result
    assert result["images_per_step"] == 16 + 16 * 3
    assert result["ratio"] == pytest.approx(result["step_s"] / result["floor_s"])
    assert "ratio step / floor" in format_table(result)


def test_bench_cli_json_with_synthetic_paper_shape(capsys):
    code, out, _ = run_cli(["bench", "throughput", "--config", CONFIGS / "cifar10_lt/consistent_n500_m4000_g100.yaml",
                            "--synthetic", "--steps", "1", "--warmup", "1", "--rounds", "1", "--json",
                            "--device", "cpu", "model.depth=10", "model.widen=1", "train.batch_size=4"], capsys)
    result = json.loads(out)
    assert code == 0 and result["image_shape"] == [3, 32, 32] and result["synthetic_data"]


def test_parallel_runner_summarises_finished_failed_and_stopped_runs(tmp_path):
    """benchmarks/parallel_runs.py: one line per job in summary.jsonl, whatever happened to it."""
    root = CONFIGS.parent
    quick = CONFIGS / "quickstart.yaml"
    tiny = " ".join(TINY)
    jobs = tmp_path / "grid.jobs"
    jobs.write_text(
        "# a comment line\n"
        f"done {quick} supervised {tiny}\n"
        f"bad {quick} supervised train.nonsense=1\n"
        f"long {quick} supervised {tiny} train.iterations=100000 train.eval_every=2\n")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    result = subprocess.run([sys.executable, str(root / "benchmarks/parallel_runs.py"), str(jobs), "train.device=cpu",
                             "--out", str(tmp_path / "out"), "--workers", "3", "--deadline", "25"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in map(json.loads, (tmp_path / "out/summary.jsonl").read_text().splitlines())}
    assert set(records) == {"done", "bad", "long"}
    finished = json.loads((tmp_path / "out/runs/done/results.json").read_text())
    assert records["done"]["top1"] == finished["top1"] and records["done"]["iterations"] == 4
    assert [it for it, _ in records["done"]["curve"]] == [2, 4]
    assert records["bad"]["failed"] == "exit 2" and "train.nonsense" in records["bad"]["log_tail"][0]
    assert records["long"]["failed"] == "stopped at the deadline"
    assert records["long"]["curves"]["main"][0][0] == 2  # the evaluations it reached are kept
