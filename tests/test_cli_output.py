"""What the command line prints and exits with, checked on fixed inputs: the results table of
train / evaluate, the lines of estimate-distribution, the exit status of each way a command can end,
and that only rank 0 of a torchrun launch prints results.

The commands' work is replaced by fakes returning known values (the work itself is tested where it
is done), so each expected line below is written out by hand from those values.
"""

from __future__ import annotations

import io
import signal
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import TIMED

from cissl import cli
from cissl.engine.stop import TrainingStopped
from cissl.errors import CisslError, PrintedByAnotherRank


def results(**changes) -> dict:
    base = {"algorithm": "semi", "setting": "cifar10_lt_g100", "reported_head": "balanced", "iterations": 20,
            "top1": 0.5, "balanced_accuracy": 0.41234, "many_accuracy": 0.9, "medium_accuracy": None,
            "few_accuracy": 0.125, "geometric_mean": 0.0, "last_k": 7, "median_last_top1": 0.4921,
            "mean_last_top1": 0.0625,
            "heads": {"balanced": {"top1": 0.5, "balanced_accuracy": 0.41234},
                      "main": {"top1": 0.375, "balanced_accuracy": 0.2}}}
    return {**base, **changes}


def test_the_results_table_shows_each_metric_as_a_percentage_and_every_other_head(tmp_path):
    stream = io.StringIO()
    cli.print_results(results(), tmp_path / "run", stream)
    assert stream.getvalue() == (
        "\nsemi on cifar10_lt_g100 (EMA model, head 'balanced', test set, after 20 iterations)\n"
        "  top-1                         50.00 %\n"
        "  balanced accuracy             41.23 %\n"
        "  many / medium / few           90.00 % / n/a / 12.50 %\n"
        "  geometric mean recall         0.00 %\n"
        "  median of last 7 top-1        49.21 %\n"
        "  mean of last 7 top-1          6.25 %\n"
        "  head 'main' top-1 / balanced  37.50 % / 20.00 %\n"
        f"results: {tmp_path / 'run' / 'results.json'}\n")


def test_a_run_without_a_named_setting_and_with_one_head_has_no_head_rows(tmp_path):
    stream = io.StringIO()
    cli.print_results(results(setting=None, reported_head="main", heads={"main": {"top1": 0.5}}), tmp_path, stream)
    lines = stream.getvalue().splitlines()
    assert lines[1] == "semi on the configured data (EMA model, head 'main', test set, after 20 iterations)"
    assert len(lines) == 9 and not any("head '" in line for line in lines[2:])
    assert lines[2] == "  top-1                   50.00 %"  # the widest name, 'median of last 7 top-1', sets the width


# ------------------------------------------------------------------------------------- estimate-distribution
def estimate(name: str, counts: list[float], condition: float, accepted: bool) -> dict:
    return {"checkpoint": f"/runs/r/checkpoints/{name}", "counts": counts, "condition_number": condition,
            "accepted": accepted}


@pytest.fixture
def estimated(monkeypatch):
    """estimate-distribution with the estimate replaced: ``estimated.result`` is what it returns, ``.calls``
    the arguments it got."""
    class Fake:
        calls: list = []
        result: dict = {}

        def __call__(self, run_dir, checkpoints, max_condition, every_checkpoint):
            self.calls.append((run_dir, checkpoints, max_condition, every_checkpoint))
            return self.result

    fake = Fake()
    monkeypatch.setattr("cissl.api.estimate_run_distribution", fake)
    return fake


def test_estimate_distribution_prints_each_checkpoints_verdict_the_mean_and_darps_overrides(estimated, capsys):
    estimated.result = {
        "pool_size": 323, "head": "main", "max_condition": 100.0, "accepted": True, "accepted_estimates": 2,
        "counts": [11.5, 2.0, 1.6349],
        "estimates": [estimate("ckpt_00000010.pt", [10.0, -2.26, 5.04], 3.14159, False),
                      estimate("ckpt_00000020.pt", [12.0, 3.5, 1.26], 12.0, True),
                      estimate("ckpt_00000030.pt", [11.0, 0.5, 2.0], 2.0, True)]}
    code, out, err = run_cli(["estimate-distribution", "/runs/r", "--checkpoint", "a.pt", "--checkpoint", "b.pt",
                              "--max-condition", "250"], capsys)
    assert code == 0 and err == ""
    assert estimated.calls == [(Path("/runs/r"), [Path("a.pt"), Path("b.pt")], 250.0, False)]
    assert out.splitlines() == [
        "estimated class counts of the 323 unlabeled images (main head), condition number limit 100:",
        "  ckpt_00000010.pt: [10.0, -2.3, 5.0], condition number 3.1: rejected (a negative count or an "
        "ill-conditioned confusion matrix)",
        "  ckpt_00000020.pt: [12.0, 3.5, 1.3], condition number 12.0: accepted",
        "  ckpt_00000030.pt: [11.0, 0.5, 2.0], condition number 2.0: accepted",
        "mean of the 2 accepted estimates: [11.5, 2.0, 1.6]",
        "DARP toward it: algorithm.refiner.target=given algorithm.refiner.target_distribution=[11.5,2,1.635]"]


def test_estimate_distribution_of_one_checkpoint_prints_no_mean(estimated, capsys):
    estimated.result = {"pool_size": 40, "head": "balanced", "max_condition": 1e12, "accepted": True,
                        "accepted_estimates": 1, "counts": [30.0, 10.0],
                        "estimates": [estimate("ckpt_00000005.pt", [30.0, 10.0], 1.5, True)]}
    code, out, _ = run_cli(["estimate-distribution", "r", "--all-checkpoints"], capsys)
    assert code == 0 and estimated.calls == [(Path("r"), None, 100.0, True)]
    assert out.splitlines() == [
        "estimated class counts of the 40 unlabeled images (balanced head), condition number limit 1e+12:",
        "  ckpt_00000005.pt: [30.0, 10.0], condition number 1.5: accepted",
        "DARP toward it: algorithm.refiner.target=given algorithm.refiner.target_distribution=[30,10]"]


def test_estimate_distribution_with_one_of_two_accepted_prints_no_mean_and_keeps_counts_below_one(estimated,
                                                                                                   capsys):
    """No 'mean of the 1 accepted estimates' line; a tail class estimated at 0.4 images is proposed as 0.4."""
    estimated.result = {"pool_size": 40, "head": "main", "max_condition": 100.0, "accepted": True,
                        "accepted_estimates": 1, "counts": [39.6, 0.4],
                        "estimates": [estimate("ckpt_00000005.pt", [41.0, -1.0], 3.0, False),
                                      estimate("ckpt_00000010.pt", [39.6, 0.4], 2.0, True)]}
    code, out, _ = run_cli(["estimate-distribution", "r", "--all-checkpoints"], capsys)
    assert code == 0 and out.splitlines()[2:] == [
        "  ckpt_00000010.pt: [39.6, 0.4], condition number 2.0: accepted",
        "DARP toward it: algorithm.refiner.target=given algorithm.refiner.target_distribution=[39.6,0.4]"]


def test_estimate_distribution_without_an_accepted_estimate_exits_1_and_proposes_nothing(estimated, capsys):
    estimated.result = {"pool_size": 40, "head": "main", "max_condition": 100.0, "accepted": False,
                        "accepted_estimates": 0, "counts": None,
                        "estimates": [estimate("ckpt_00000005.pt", [41.0, -1.0], 250.0, False)]}
    code, out, _ = run_cli(["estimate-distribution", "r"], capsys)
    assert code == 1
    assert out.splitlines()[1:] == [
        "  ckpt_00000005.pt: [41.0, -1.0], condition number 250.0: rejected (a negative count or an "
        "ill-conditioned confusion matrix)",
        "no estimate accepted"]


def test_bench_sweep_plot_and_report_pages_print_what_their_api_function_returned(monkeypatch, capsys):
    """`bench throughput`: the table, or with --json the one JSON object; `sweep`: the markdown table of its
    rows and where the tables are; `plot`: each file written, one per line; `report --out`: its two pages and
    how many figures where. Each exits 0."""
    import json

    from cissl.bench.throughput import format_table
    from cissl.evaluation.report import COLUMNS, to_markdown

    monkeypatch.setattr("cissl.api.throughput", lambda *args, **kwargs: TIMED)
    bench = ["bench", "throughput", "--config", "configs/quickstart.yaml"]
    assert run_cli(bench, capsys) == (0, format_table(TIMED) + "\n", "")
    code, out, _ = run_cli([*bench, "--json"], capsys)
    assert code == 0 and json.loads(out) == TIMED and out.count("\n") == 1

    rows = [{"setting": "s", "algorithm": "semi", "seeds": [0, 1], "reported_head": "balanced", "wall_time_s": 90.0,
             **{key: (0.5, 0.01) for key, _ in COLUMNS}}]
    monkeypatch.setattr("cissl.api.sweep", lambda *args, **kwargs: rows)
    assert run_cli(["sweep", "--configs", "c.yaml", "--out", "o"], capsys) == (
        0, f"{to_markdown(rows)}\ntables: {Path('o/results.md')}, {Path('o/results.csv')}\n", "")

    monkeypatch.setattr("cissl.api.plot", lambda *args, **kwargs: [Path("r/plots/a.png"), Path("r/plots/b.png")])
    assert run_cli(["plot", "r"], capsys) == (0, "r/plots/a.png\nr/plots/b.png\n", "")

    pages = [Path("p/report.md"), Path("p/report.html"), *[Path(f"p/figures/{k}.png") for k in range(3)]]
    monkeypatch.setattr("cissl.api.report_pages", lambda *args, **kwargs: pages)
    assert run_cli(["report", "runs", "--out", "p"], capsys) == (
        0, f"{pages[0]}\n{pages[1]}\n3 figures in {Path('p/figures')}\n", "")
    monkeypatch.setattr("cissl.api.report_pages", lambda *args, **kwargs: pages[:3])
    assert run_cli(["report", "runs", "--out", "p"], capsys)[1].endswith("\n1 figure in p/figures\n")


# ------------------------------------------------------------------------------------------------ exit status
@pytest.mark.parametrize("raised, code, message", [
    (CisslError("data.root: no such folder"), 2, "cissl: error: data.root: no such folder\n"),
    (PrintedByAnotherRank("rank 0 prints this one"), 2, ""),  # another rank's copy: rank 0 prints it, once
    (TrainingStopped(signal.SIGTERM, "stopped at iteration 7; resume with ..."), 128 + signal.SIGTERM,
     "cissl: stopped at iteration 7; resume with ...\n"),
    (TrainingStopped(signal.SIGINT, "stopped at iteration 7; ...", printed_by_this_rank=False), 128 + signal.SIGINT,
     ""),  # a DDP rank other than 0: the same exit status, rank 0 prints the line
    (KeyboardInterrupt(), 130, "cissl: interrupted; a run continues from its last checkpoint with "
                               "`cissl train --resume RUN_DIR`\n"),
])
def test_each_way_a_command_ends_has_its_exit_status_and_one_line(monkeypatch, capsys, raised, code, message):
    def command(args):
        raise raised

    monkeypatch.setattr(cli, "cmd_list", command)
    assert run_cli(["list"], capsys) == (code, "", message)


def test_an_unexpected_error_is_not_swallowed(monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_list", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_cli(["list"], capsys)


@pytest.mark.parametrize("rank, printed", [(None, True), ("0", True), ("1", False)])
def test_only_rank_zero_prints_the_results(monkeypatch, capsys, tmp_path, rank, printed):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr("cissl.api.evaluate", lambda run_dir, checkpoint: results())
    code, out, _ = run_cli(["evaluate", tmp_path], capsys)
    assert code == 0 and ("balanced accuracy             41.23 %" in out) == printed and (out == "") != printed


def test_version_names_the_release_and_the_checkouts_code(capsys, monkeypatch):
    import cissl
    import cissl.environment

    for commit, line in (("0123456789ab", f"cissl {cissl.__version__} (code 0123456789ab)\n"),
                         (None, f"cissl {cissl.__version__}\n")):  # an installed release: no checkout
        monkeypatch.setattr(cissl.environment, "source_commit", lambda commit=commit: commit)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--version"])
        assert exit_.value.code == 0 and capsys.readouterr().out == line


def test_output_read_by_a_reader_that_went_away_ends_quietly():
    """`cissl list | head -1`: the reader closes the pipe; the command stops with the SIGPIPE status and
    prints no traceback (nor Python's 'Exception ignored' at exit)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "cissl", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)
    process.stdout.close()  # before the command writes its first line
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141 and err == b""


def test_counts_are_worded_in_the_singular_for_one_only():
    """``counted``, which words every count of sweep, predict and report: the plural for any number but 1."""
    from cissl.wording import counted

    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert counted(1, "running run") == "1 running run" and counted(3, "class", "classes") == "3 classes"
    assert counted(1, "class", "classes") == "1 class"
