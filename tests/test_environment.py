"""A run records the code and machine it trained on, and the report says when a table mixes them."""

import io
import json
import platform
import shutil
import subprocess

import pytest
import torch
from conftest import run_cli
from helpers import tiny_config

import cissl.engine.trainer
from cissl.engine.checkpoint import load_checkpoint
from cissl.engine.run import resume_run, start_run
from cissl.environment import changes, code_of, describe_environment, machine_of, processor_name, source_commit
from cissl.evaluation.report import NOT_RECORDED, mixed_environments, write_report

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 167
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 1
cache size\t: 491520 KB

processor\t: 1
model name\t: Some Other Core
model\t\t: 85
"""


def test_processor_name_is_the_first_cores_model_with_family_model_stepping_and_cache():
    assert processor_name(CPUINFO) == ("Intel(R) Xeon(R) Processor (cpu family 6, model 167, stepping 1, "
                                       "cache size 491520 KB)")
    assert processor_name("model name\t: Bare\n") == "Bare"
    assert processor_name("model name\t: Odd: Core\ncache size\t: 1 KB\n") == "Odd: Core (cache size 1 KB)"


def test_processor_name_reads_proc_cpuinfo_and_falls_back_to_platform(monkeypatch):
    """Without an argument: this machine's /proc/cpuinfo where there is one; where it cannot be read, the
    platform's processor name, else its machine type, else 'unknown processor'."""
    from pathlib import Path

    if Path("/proc/cpuinfo").is_file():
        assert processor_name() == processor_name(Path("/proc/cpuinfo").read_text(encoding="utf-8"))

    def unreadable(self, *args, **kwargs):
        raise PermissionError(str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)
    monkeypatch.setattr(platform, "processor", lambda: "proc-name")
    monkeypatch.setattr(platform, "machine", lambda: "machine-type")
    assert processor_name() == "proc-name"
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert processor_name() == "machine-type"
    monkeypatch.setattr(platform, "machine", lambda: "")
    assert processor_name() == "unknown processor"


def test_environment_names_this_process():
    here = describe_environment(torch.device("cpu"))
    assert here["torch"] == torch.__version__ and here["threads"] == torch.get_num_threads()
    assert here["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and here["gpu"] is None
    assert here["processor"] == processor_name() and here["cissl"] == cissl.__version__
    assert f"threads {here['threads']}" in machine_of(here) and "gpu" not in machine_of(here)
    assert set(here) == {"cissl", "code", "python", "torch", "processor", "cpu_capability", "threads", "gpu"}
    assert here["code"] == source_commit() and here["python"] == platform.python_version()
    assert machine_of({"torch": "2.13", "processor": "P", "cpu_capability": "AVX2", "threads": 2, "gpu": None,
                       "code": "abc"}) == "torch 2.13; processor P; cpu_capability AVX2; threads 2"
    assert code_of({"code": None, "cissl": "0.1.0"}) == "cissl 0.1.0" and code_of({"code": "abc"}) == "abc"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_of_a_checkout_is_its_head_and_says_when_the_package_differs(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("venv/\n")
    assert source_commit(package) is None  # not a repository
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "--short=12", "HEAD")
    assert source_commit(package) == head
    (tmp_path / "notes.md").write_text("outside the package\n")
    assert source_commit(package) == head
    git("add", "notes.md")
    git("commit", "-q", "-m", "docs only")
    assert source_commit(package) == head != git("rev-parse", "--short=12", "HEAD")  # the package's last change
    (package / "new.py").write_text("y = 2\n")
    assert source_commit(package) == f"{head}+dirty"
    (package / "new.py").unlink()
    (package / "__init__.py").write_text("x = 2\n")
    assert source_commit(package) == f"{head}+dirty"
    git("commit", "-q", "-am", "two")  # the package's newest change, one commit
    second = git("rev-parse", "--short=12", "HEAD")
    assert source_commit(package) == second != head
    git("config", "status.showUntrackedFiles", "no")  # a user's setting that hides new files from git status
    (package / "new.py").write_text("y = 2\n")
    assert source_commit(package) == f"{second}+dirty"
    (package / "new.py").unlink()
    installed = tmp_path / "venv" / "pkg"  # an install inside a project's repository is not its checkout
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 1\n")
    assert source_commit(installed) is None


def test_results_name_where_the_run_trained_and_a_resume_elsewhere_adds_the_machine(tmp_path, monkeypatch, capsys):
    config = tiny_config("train.iterations=4", "train.checkpoint_every=2", "train.eval_every=2",
                         algorithm="supervised")
    here = describe_environment(torch.device("cpu"))
    start_run(config, tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run/results.json").read_text())["environments"] == [here]

    def as_if_stopped_after_iteration_2():
        (tmp_path / "run/checkpoints/ckpt_00000004.pt").unlink()
        (tmp_path / "run/results.json").unlink()

    as_if_stopped_after_iteration_2()
    resume_run(tmp_path / "run", quiet=True)  # where it trained: still one entry
    assert json.loads((tmp_path / "run/results.json").read_text())["environments"] == [here]
    as_if_stopped_after_iteration_2()
    elsewhere = {**here, "processor": "another processor"}
    monkeypatch.setattr(cissl.engine.trainer, "describe_environment", lambda device, plugins=None: elsewhere)
    resume_run(tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run/results.json").read_text())["environments"] == [here, elsewhere]
    assert load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt")["environments"] == [here, elsewhere]

    code, _, _ = run_cli(["evaluate", tmp_path / "run"], capsys)  # re-evaluation keeps where it trained
    assert code == 0
    evaluated = json.loads((tmp_path / "run/results.json").read_text())
    assert evaluated["environments"] == [here, elsewhere] and evaluated["device"] == "cpu"
    assert evaluated["iterations"] == 4


def _result(path, seed, environments):
    path.mkdir(parents=True)
    result = {"setting": "s", "algorithm": path.parent.name, "seed": seed, "balanced_accuracy": 0.8,
              "per_class_accuracy": [0.7, 0.9], "confusion_matrix": [[7, 3], [1, 9]]}
    if environments is not None:
        result["environments"] = environments
    (path / "results.json").write_text(json.dumps(result))


A = {"cissl": "0.1.0", "code": "aaa", "torch": "2.13.0+cpu", "processor": "Xeon (model 167)",
     "cpu_capability": "AVX512", "threads": 1, "gpu": None}


def test_report_says_when_runs_come_from_other_machines_or_code(tmp_path, capsys):
    _result(tmp_path / "one" / "semi" / "seed0", 0, [A])
    _result(tmp_path / "one" / "fixmatch" / "seed0", 0, [A])
    write_report(tmp_path / "one", pair_with="semi")
    assert "more than one" not in capsys.readouterr().err + (tmp_path / "one/results.md").read_text()

    other_machine, other_code = {**A, "processor": "Xeon (model 85)"}, {**A, "code": "bbb+dirty"}
    _result(tmp_path / "two" / "semi" / "seed0", 0, [A])
    _result(tmp_path / "two" / "semi" / "seed1", 1, [A, other_machine])  # resumed on another machine
    _result(tmp_path / "two" / "fixmatch" / "seed0", 0, [other_code])
    _result(tmp_path / "two" / "fixmatch" / "seed1", 1, None)
    write_report(tmp_path / "two", pair_with="semi")
    err = capsys.readouterr().err
    assert f"the runs come from more than one machine: {machine_of(other_machine)}: 1 run\n" in err
    assert f"more than one machine: {machine_of(A)}: 3 runs\n" in err
    assert f"more than one machine: {NOT_RECORDED}: 1 run\n" in err
    assert "more than one code: aaa: 2 runs\n" in err and "more than one code: bbb+dirty: 1 run\n" in err
    for name in ("results.md", "paired.md"):
        assert "- code: bbb+dirty: 1 run\n" in (tmp_path / "two" / name).read_text()


def test_results_md_opens_with_its_caption_then_what_was_left_out_then_the_mixed_runs(tmp_path, capsys):
    """results.md's notes line by line, each block closed by one blank line, before the table."""
    from cissl.evaluation.report import MIXED_TITLE, to_markdown

    _result(tmp_path / "semi" / "seed0", 0, [A])
    _result(tmp_path / "semi" / "seed1", 1, [{**A, "code": "bbb"}])
    for name in ("broken", "broken2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text("{truncated")
    write_report(tmp_path)
    capsys.readouterr()
    lines = (tmp_path / "results.md").read_text().split("\n")
    assert lines[:11] == [
        "Mean ± sample std over seeds (no ± where one seed ran), in %; final EMA model on the test set, the "
        "algorithm's reported head (SeMi: balanced); settings marked (validation) were evaluated on the held-out "
        "validation split instead (train.evaluate_on: val). 'mean of last k' averages the last k evaluations of "
        "a run.",
        "",
        "Left out, unreadable:",
        lines[3], lines[4],  # checked below: json's own words for what is wrong vary with the Python version
        "",
        MIXED_TITLE,
        "- code: aaa: 1 run",
        "- code: bbb: 1 run",
        "",
        to_markdown([]).split("\n")[0]]  # then the table, header first
    for line, name in zip(lines[3:5], ("broken", "broken2")):
        assert line.startswith(f"- {tmp_path / name / 'results.json'} (") and line.endswith(")")
    _result(tmp_path / "alike" / "semi" / "seed0", 0, [A])  # nothing left out, one machine and code: no notes
    write_report(tmp_path / "alike")
    assert (tmp_path / "alike" / "results.md").read_text().split("\n")[1:3] == ["", lines[10]]


def test_changes_names_what_decides_the_last_bits_and_differs():
    assert changes(A, dict(A)) == []
    assert changes(A, {**A, "threads": 2}) == ["threads 1 -> 2"]
    assert changes(A, {**A, "code": "bbb", "processor": "EPYC", "python": "3.12"}) == [  # python: same arithmetic
        "processor Xeon (model 167) -> EPYC", "code aaa -> bbb"]
    assert changes(A, {**A, "code": None}) == ["code aaa -> cissl 0.1.0"]  # an installed release
    assert changes({k: v for k, v in A.items() if k != "cpu_capability"}, {**A, "cpu_capability": "AVX2"}) == []
    gpu = {**A, "gpu": "NVIDIA H100"}
    assert changes(gpu, {**gpu, "threads": 8}) == []  # the CPU's threads do not compute a GPU run
    assert changes(gpu, {**gpu, "gpu": "NVIDIA H200", "threads": 8}) == ["gpu NVIDIA H100 -> NVIDIA H200"]
    assert changes(A, {**gpu, "threads": 8}) == ["threads 1 -> 8", "gpu None -> NVIDIA H100"]


def test_a_run_resumed_at_another_thread_count_says_so(tmp_path, monkeypatch):
    """The same run resumed three times: where it trained but under another Python (the same arithmetic: no
    note), at another thread count (one line naming the change and the setting that resumes at the run's
    count) and on another processor (the line without that hint)."""
    config = tiny_config("train.iterations=4", "train.checkpoint_every=2", "train.eval_every=2",
                         algorithm="supervised")
    here = describe_environment(torch.device("cpu"))
    start_run(config, tmp_path / "run", quiet=True)
    for name in ("checkpoints/ckpt_00000004.pt", "results.json"):  # as if stopped after iteration 2
        (tmp_path / "run" / name).unlink()
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere")
    monkeypatch.setattr(cissl.engine.trainer, "describe_environment",
                        lambda device, plugins=None: {**here, "python": "3.99"})
    printed = io.StringIO()
    resume_run(tmp_path / "run", stream=printed)
    assert "[cissl] resumed " in printed.getvalue() and "note:" not in printed.getvalue()

    more = {**here, "threads": here["threads"] + 1}
    monkeypatch.setattr(cissl.engine.trainer, "describe_environment", lambda device, plugins=None: more)
    printed = io.StringIO()
    resume_run(tmp_path / "again", stream=printed)
    assert (f"[cissl] note: the run goes on with threads {here['threads']} -> {more['threads']}: its steps from "
            f"here will not repeat an uninterrupted run's last bits; OMP_NUM_THREADS={here['threads']} resumes at "
            f"the run's thread count\n") in printed.getvalue()

    other = {**here, "processor": "another processor"}  # no thread hint where the threads stayed
    monkeypatch.setattr(cissl.engine.trainer, "describe_environment", lambda device, plugins=None: other)
    printed = io.StringIO()
    resume_run(tmp_path / "elsewhere", stream=printed)
    assert (f"[cissl] note: the run goes on with processor {here['processor']} -> another processor: its steps "
            f"from here will not repeat an uninterrupted run's last bits\n") in printed.getvalue()


def test_runs_recorded_nowhere_or_all_alike_raise_nothing():
    assert mixed_environments([{"seed": 0}, {"seed": 1}]) == []
    assert mixed_environments([{"environments": [A]}, {"environments": [dict(A)]}]) == []
    assert mixed_environments([{"environments": [A]}, {"environments": [{**A, "threads": 2}]}]) == [
        f"machine: {machine_of(A)}: 1 run", f"machine: {machine_of({**A, 'threads': 2})}: 1 run"]



def test_report_pages_say_so_too(tmp_path):
    pytest.importorskip("matplotlib")
    from cissl.evaluation.report import MIXED_TITLE
    from cissl.evaluation.report_pages import write_report_pages

    _result(tmp_path / "semi" / "seed0", 0, [A])
    _result(tmp_path / "semi" / "seed1", 1, [{**A, "code": "bbb"}])
    write_report_pages([tmp_path], tmp_path / "pages")
    md, page = (tmp_path / "pages/report.md").read_text(), (tmp_path / "pages/report.html").read_text()
    assert f"{MIXED_TITLE}\n- code: aaa: 1 run\n- code: bbb: 1 run\n" in md
    assert "<li>code: bbb: 1 run</li>" in page


def test_the_report_reads_environments_without_loading_pytorch():
    import sys

    code = "import sys, cissl.evaluation.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
