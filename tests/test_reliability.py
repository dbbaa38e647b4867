"""Bad input ends in one line naming the key or the path, before any expensive work (issue 23, in part)."""

import json
import os

import numpy as np
import pytest
from conftest import CONFIGS, REPO, run_cli
from helpers import ScriptedStop, logged_records, tiny_config, uninterrupted_and_resumed

from cissl.config import load_config
from cissl.engine.run import start_run
from cissl.errors import CisslError, ConfigError
from cissl.rundir import LOCK

TWO_STEPS = ("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2")  # one checkpoint, at step 2


def file_contents(folder):
    """Every file below ``folder`` (the run lock aside) and its bytes."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != LOCK}


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.weight_decay=.inf", "optim.lr=-.inf", "optim.lr=.nan"])
def test_non_finite_numbers_are_refused(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}': must be a finite number"):
        load_config(CONFIGS / "quickstart.yaml", [override])


def test_an_empty_config_file_is_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_config(tmp_path / "empty.yaml")


def test_a_labeled_batch_larger_than_the_labeled_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^config key 'train.batch_size': 100000 labeled images per step, but the "
                                          r"split holds \d+; lower train.batch_size or raise data.labeled_head$"):
        start_run(tiny_config("train.batch_size=100000"), tmp_path / "run", quiet=True)


def test_no_unlabeled_images_is_refused(tmp_path):
    """The whole line: the key, what is wrong and the remedy."""
    with pytest.raises(ConfigError, match=r"^config key 'data.unlabeled_head': the split holds no unlabeled images; "
                                          r"the unlabeled stream needs some, set data.unlabeled_head >= 1$"):
        start_run(tiny_config("data.unlabeled_head=0"), tmp_path / "run", quiet=True)


MISSING_DATA = ["data.dataset=cifar10", "data.root=/nonexistent"]  # would fail at the data load, which comes later


def test_out_at_a_file_or_under_a_file_fails_before_the_data_load(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    for out, message in ((tmp_path / "a_file", f"{tmp_path / 'a_file'} is a file, not a folder; choose a folder"),
                         (tmp_path / "a_file" / "run", f"cannot create the folder {tmp_path / 'a_file' / 'run'}: ")):
        code, _, err = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", *MISSING_DATA, "--out", out], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_out_into_a_folder_of_other_files_is_refused_and_nothing_is_overwritten(tmp_path):
    mine = tmp_path / "my_project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    with pytest.raises(CisslError, match="not a run directory"):
        start_run(load_config(CONFIGS / "quickstart.yaml", MISSING_DATA), mine, quiet=True)
    assert (mine / "config.yaml").read_text() == "my own notes\n"


def test_a_run_directory_may_be_new_empty_or_one_a_run_started_in(tmp_path):
    """What --out accepts: a new path (made with its parents), an empty folder, one holding only the run
    lock, one a run started in (split.json, then a crash before its first checkpoint); the folder of other
    files is refused above."""
    from cissl.engine.run import prepare_run_directory
    from cissl.rundir import RunDir

    prepare_run_directory(RunDir(tmp_path / "new" / "deep"))
    assert (tmp_path / "new" / "deep").is_dir() and not any((tmp_path / "new" / "deep").iterdir())
    started = ("split.json", "config.yaml", "metrics.jsonl")
    for name, files in (("empty", ()), ("locked", (LOCK,)), ("started", started)):
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            (folder / file).write_text("kept\n")
        prepare_run_directory(RunDir(folder))
        assert sorted(p.name for p in folder.iterdir()) == sorted(files), name
        assert all((folder / file).read_text() == "kept\n" for file in files)
    (tmp_path / "lock_and_notes").mkdir()
    (tmp_path / "lock_and_notes" / LOCK).write_text("")
    (tmp_path / "lock_and_notes" / "notes.txt").write_text("mine")
    with pytest.raises(CisslError, match="folder holds files and is not a run directory"):
        prepare_run_directory(RunDir(tmp_path / "lock_and_notes"))


def test_a_start_in_a_run_folder_without_checkpoints_begins_afresh_and_a_finished_one_is_refused(tmp_path):
    """A start that stopped before its first checkpoint leaves split.json and metrics.jsonl: a new start
    there writes metrics of its own only. A finished run whose checkpoints were deleted still holds a run
    (results.json): a start there is refused and the results kept."""
    from cissl.errors import CheckpointError

    config = tiny_config("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2")
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"kind": "train", "iteration": 99}\n')
    start_run(config, run, quiet=True)
    assert [r["iteration"] for r in logged_records(run)] == [2, 2]  # its train and eval records
    for checkpoint in (run / "checkpoints").iterdir():
        checkpoint.unlink()
    results = (run / "results.json").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a run"):
        start_run(config, run, quiet=True)
    assert (run / "results.json").read_bytes() == results


def test_a_resume_before_the_first_checkpoint_trains_from_the_start_and_rewrites_every_metric(tmp_path):
    """`--resume` of a run that stopped before its first checkpoint: it trains from iteration 0, and no
    record of the stopped attempt stays in metrics.jsonl (not even those of its first iterations)."""
    from cissl.engine.run import load_run, resume_run
    from cissl.errors import CheckpointError

    config = tiny_config("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=1")
    start_run(config, tmp_path / "run", quiet=True)
    records = logged_records(tmp_path / "run")
    assert [(r["kind"], r["iteration"]) for r in records] == [("train", 1), ("train", 2), ("eval", 2)]
    for checkpoint in (tmp_path / "run/checkpoints").iterdir():
        checkpoint.unlink()
    (tmp_path / "run/results.json").unlink()
    with pytest.raises(CheckpointError, match=rf"^{tmp_path / 'run'} has no checkpoint to load$"):
        load_run(tmp_path / "run")  # nothing to predict with yet
    resume_run(tmp_path / "run", quiet=True)
    assert [(r["kind"], r["iteration"]) for r in logged_records(tmp_path / "run")] == [
        ("train", 1), ("train", 2), ("eval", 2)]


def test_resume_and_evaluate_take_the_runs_split_file_and_draw_none(tmp_path, monkeypatch):
    """A run's split is split.json's, fixed when it started: a resume, `cissl evaluate` and loading it to
    predict never draw one again (a changed protocol or data order would otherwise move its images)."""
    from cissl.engine import data as engine_data
    from cissl.engine.run import evaluate_run, load_run, resume_run

    start_run(tiny_config("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2"), tmp_path / "run",
              quiet=True)
    (tmp_path / "run/checkpoints/ckpt_00000004.pt").unlink()
    (tmp_path / "run/results.json").unlink()
    monkeypatch.setattr(engine_data, "new_split", lambda *args: pytest.fail("a new split was drawn"))
    resume_run(tmp_path / "run", quiet=True)
    evaluate_run(tmp_path / "run")
    load_run(tmp_path / "run")


def test_a_folder_without_config_yaml_is_not_a_run_to_evaluate_or_resume(tmp_path, capsys):
    (tmp_path / "split.json").write_text("{}")
    for argv in (["evaluate", tmp_path], ["train", "--resume", tmp_path], ["predict", tmp_path, "--images", tmp_path]):
        code, out, err = run_cli(argv, capsys)
        assert (code, out, err) == (2, "", f"cissl: error: {tmp_path} is not a run directory (no config.yaml)\n")


def test_the_default_run_directory_names_setting_algorithm_and_seed():
    from cissl.engine.run import default_run_dir

    config = load_config(CONFIGS / "quickstart.yaml", ["train.seed=3"], "fixmatch")
    assert default_run_dir(config).as_posix() == "runs/quickstart-fixmatch-seed3"
    assert default_run_dir(config.replace({"name": "lt/g100"})).as_posix() == "runs/lt_g100-fixmatch-seed3"
    assert default_run_dir(config.replace({"name": ""})).as_posix() == "runs/digits-fixmatch-seed3"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_into_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(CisslError, match="not writable"):
            start_run(load_config(CONFIGS / "quickstart.yaml", MISSING_DATA), locked / "run", quiet=True)
    finally:
        locked.chmod(0o700)


def test_overrides_after_an_option_flag_are_overrides(capsys):
    code, out, _ = run_cli(["split", "--config", CONFIGS / "quickstart.yaml", "data.labeled_head=30",
                            "data.imbalance_ratio=5", "--counts-only", "data.labeled_head=20"], capsys)
    assert code == 0 and json.loads(out)["labeled"][:2] == [20, 16]  # the later labeled_head wins, the ratio stays
    code, out, _ = run_cli(["split", "--config", CONFIGS / "quickstart.yaml", "--counts-only"], capsys)
    assert json.loads(out)["labeled"][:2] == [40, 30]  # (the config's own: N1 40, ratio 10)
    with pytest.raises(SystemExit):
        run_cli(["split", "--config", CONFIGS / "quickstart.yaml", "--counts-only", "--bogus", "--more"], capsys)
    assert "unrecognized arguments: --bogus --more" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an option's spelling with '=' is no override
        run_cli(["split", "--config", CONFIGS / "quickstart.yaml", "--counts-only", "--bogus=1"], capsys)
    assert capsys.readouterr().err.endswith("cissl: error: unrecognized arguments: --bogus=1\n")


def test_a_split_file_with_an_out_of_range_index_is_one_line(tmp_path, capsys):
    config = tiny_config("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2")
    start_run(config, tmp_path / "run", quiet=True)
    split = json.loads((tmp_path / "run/split.json").read_text())
    split["unlabeled_indices"][3] = 99999
    (tmp_path / "run/split.json").write_text(json.dumps(split))
    code, _, err = run_cli(["evaluate", tmp_path / "run"], capsys)
    assert code == 2 and "split.json: unlabeled index 99999 is out of range" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_whose_data_moved_resumes_and_other_data_is_still_refused(tmp_path):
    """Where the data is read from and how it is held (data.root, data.download, data.stream_images) are not
    what a run is: with config.yaml pointing at the data's new place the run resumes, and ends as the run
    straight through does. Before, the checkpoint 'belonged to another run: data.root ...'. A change of the
    data itself (data.imbalance_ratio) is still refused."""
    from test_training import assert_same_state

    from cissl.config import save_config
    from cissl.engine.checkpoint import load_checkpoint
    from cissl.engine.run import resume_run

    config = tiny_config("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2", "train.report_last=1")
    start_run(config, tmp_path / "whole", quiet=True)
    start_run(config, tmp_path / "moved", quiet=True)
    (tmp_path / "moved/checkpoints/ckpt_00000004.pt").unlink()
    (tmp_path / "moved/results.json").unlink()
    saved = load_config(tmp_path / "moved/config.yaml")
    moved = saved.replace({"data.root": str(tmp_path / "elsewhere"), "data.download": not saved.data.download,
                           "data.stream_images": "never" if saved.data.stream_images != "never" else "auto"})
    save_config(moved, tmp_path / "moved/config.yaml")
    resume_run(tmp_path / "moved", quiet=True)
    whole, again = (load_checkpoint(tmp_path / f"{name}/checkpoints/ckpt_00000004.pt") for name in ("whole", "moved"))
    assert again["config"]["data"]["root"] == str(tmp_path / "elsewhere")  # the rest of the state: as straight through
    whole.pop("config"), again.pop("config")
    assert_same_state(whole, again)
    (tmp_path / "moved/checkpoints/ckpt_00000004.pt").unlink()
    (tmp_path / "moved/results.json").unlink()
    save_config(moved.replace({"data.imbalance_ratio": 5}), tmp_path / "moved/config.yaml")
    with pytest.raises(CisslError, match=rf"^checkpoint {tmp_path / 'moved/checkpoints/ckpt_00000002.pt'} belongs to "
                                         r"another run: data.imbalance_ratio 10(\.0)? \(this run: 5"):
        resume_run(tmp_path / "moved", quiet=True)


def test_what_makes_a_checkpoint_another_runs_and_what_does_not():
    """Compared: every key of data / model / optim / augment / algorithm and the train keys that change what
    a run computes (seed, iterations, batch_size, mu, strong_views, epoch_length, ema_decay). Not compared:
    where the data is, how often a run logs, evaluates or saves, keys a checkpoint predates. The first three
    differences are named, then how many more."""
    from cissl.engine.checkpoint import IDENTITY_SECTIONS as SECTIONS
    from cissl.engine.checkpoint import IDENTITY_TRAIN_KEYS as TRAIN_KEYS
    from cissl.engine.checkpoint import check_checkpoint_belongs, config_differences

    config = tiny_config()

    def recorded(**changes):
        flat = {"data.root": "/elsewhere", "data.download": True, "data.stream_images": "never",
                "train.eval_every": 3, "train.log_every": 1, "train.checkpoint_every": 1, "train.keep_checkpoints": 9,
                "train.device": "cuda", **changes}
        state = {"config": config.replace(flat).to_dict()}
        del state["config"]["data"]["test_fraction"]  # as written before the key existed: not compared
        return state

    assert config_differences(recorded(), config, SECTIONS, TRAIN_KEYS) is None
    check_checkpoint_belongs(recorded(), config, "ckpt.pt")
    assert config_differences(recorded(**{"train.mu": 2}), config, SECTIONS, TRAIN_KEYS) == (
        f"train.mu 2 (this run: {config.train.mu})")
    for key, value in (("train.seed", 7), ("train.iterations", 40), ("train.batch_size", 8),
                       ("train.strong_views", 1), ("train.epoch_length", 7), ("augment.cutout", 3),
                       ("model.widen", 2), ("optim.momentum", 0.5), ("algorithm.threshold", 0.5),
                       ("data.imbalance_ratio", 3), ("train.ema_decay", 0.9)):
        assert config_differences(recorded(**{key: value}), config, SECTIONS, TRAIN_KEYS).startswith(f"{key} "), key
    four = recorded(**{"train.seed": 7, "optim.lr": 0.5, "model.widen": 2, "augment.cutout": 3})
    with pytest.raises(CisslError, match=r"^checkpoint ckpt.pt belongs to another run: \S+ \S+ \(this run: "
                                         r"\S+\), \S+ \S+ \(this run: \S+\), \S+ \S+ \(this run: \S+\) and 1 more$"):
        check_checkpoint_belongs(four, config, "ckpt.pt")


def test_a_checkpoint_of_another_run_is_refused_by_evaluate_and_resume(tmp_path, capsys):
    """Same architecture, other seed and lr: evaluate --checkpoint and --resume refuse it with one line
    naming what differs, and RUN's results.json is left as it was."""
    start_run(tiny_config(*TWO_STEPS), tmp_path / "mine", quiet=True)
    start_run(tiny_config(*TWO_STEPS, "train.seed=1", "optim.lr=0.01"), tmp_path / "other", quiet=True)
    before = (tmp_path / "mine/results.json").read_text()
    foreign = tmp_path / "other/checkpoints/ckpt_00000002.pt"
    code, _, err = run_cli(["evaluate", tmp_path / "mine", "--checkpoint", foreign], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"checkpoint {foreign} belongs to another run: optim.lr 0.01 (this run: 0.03)" in err
    assert "train.seed 1 (this run: 0)" in err
    assert (tmp_path / "mine/results.json").read_text() == before
    (tmp_path / "mine/results.json").unlink()
    (tmp_path / "mine/checkpoints/ckpt_00000002.pt").write_bytes(foreign.read_bytes())
    code, _, err = run_cli(["train", "--resume", tmp_path / "mine"], capsys)
    assert code == 2 and "belongs to another run" in err


def test_an_architecture_mismatch_is_one_short_line(tmp_path, capsys):
    start_run(tiny_config(*TWO_STEPS), tmp_path / "mine", quiet=True)
    start_run(tiny_config(*TWO_STEPS, "model.widen=2"), tmp_path / "wide", quiet=True)
    code, _, err = run_cli(["evaluate", tmp_path / "mine", "--checkpoint",
                            tmp_path / "wide/checkpoints/ckpt_00000002.pt"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.widen 2 (this run: 1)" in err
    # a checkpoint that records no config (as if written before it did): the state-dict error, cut to one line
    import torch

    state = torch.load(tmp_path / "wide/checkpoints/ckpt_00000002.pt", weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "bare.pt")
    code, _, err = run_cli(["evaluate", tmp_path / "mine", "--checkpoint", tmp_path / "bare.pt"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (f"checkpoint {tmp_path / 'bare.pt'} does not match this run's config: Error(s) in loading state_dict "
            "for Classifier: Unexpected key(s) in "
            'state_dict: "backbone.block1.0.shortcut.weight". (+33 more lines)') in err  # the first thing wrong


def test_one_writer_per_run_directory_and_a_killed_writer_does_not_block(tmp_path):
    """While one process holds the run (here a child that took the lock), train, resume and evaluate
    refuse with one line naming its pid; once it is SIGKILLed the kernel drops the lock and a run starts."""
    import signal
    import subprocess
    import sys
    import time

    from cissl.engine.run import evaluate_run, resume_run
    from cissl.rundir import RunDir

    run = tmp_path / "run"
    config = tiny_config("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2")
    start_run(config, run, quiet=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cissl.rundir import RunDir\n"
                               f"with RunDir({str(run)!r}).exclusive():\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for attempt in (lambda: start_run(config, run, quiet=True), lambda: resume_run(run, quiet=True),
                        lambda: evaluate_run(run)):
            with pytest.raises(CisslError, match=f"in use by another cissl process \\(pid {holder.pid}\\)"):
                attempt()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    assert (run / ".lock").exists()  # the stale file stays, and does not block
    evaluate_run(run)
    with RunDir(run).exclusive():  # and the run released it at its end
        pass


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_the_resumed_run_matches(tmp_path, sig):
    """SIGTERM / SIGINT mid-run: the step finishes, a checkpoint of it is written, exit 128 + signal with
    one line; --resume then ends exactly where an uninterrupted run ends (subprocesses, one thread each)."""
    import signal
    import subprocess
    import sys
    import time

    from cissl.engine.checkpoint import latest_checkpoint, load_checkpoint

    args = ["--config", str(CONFIGS / "quickstart.yaml"), "model.depth=10", "model.widen=1", "train.batch_size=8",
            "train.iterations=200", "train.eval_every=100", "train.checkpoint_every=100", "train.log_every=1",
            "train.report_last=1", "train.device=cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "cissl", "train"]
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([*cli, *args, "--out", str(stopped)], env=env, stderr=subprocess.PIPE, text=True)
    metrics = stopped / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 30):
        time.sleep(0.05)
    process.send_signal(getattr(signal, sig))
    err = process.communicate(timeout=120)[1]
    number = getattr(signal, sig).value
    assert process.returncode == 128 + number, err
    assert err.strip().splitlines()[-1].startswith(f"cissl: {sig}: stopped after iteration ")
    checkpoint = latest_checkpoint(stopped / "checkpoints")
    at = load_checkpoint(checkpoint)["iteration"]
    assert 30 <= at < 200 and at != 100 and not (stopped / "results.json").exists()
    if sig == "SIGINT":
        return  # the same path as SIGTERM from here; one comparison with a straight run suffices
    straight = subprocess.run([*cli, *args, "--out", str(tmp_path / "straight")], env=env, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    resumed = subprocess.run([*cli, "--resume", str(stopped), "--quiet"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight/results.json").read_text())
    b = json.loads((stopped / "results.json").read_text())
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["top1"] == b["top1"]


def test_resume_falls_back_to_the_older_checkpoint_when_the_newest_is_unreadable(tmp_path, capsys):
    from cissl.engine.checkpoint import list_checkpoints
    from cissl.engine.run import resume_run

    config = tiny_config("train.iterations=6", "train.eval_every=2", "train.checkpoint_every=2")
    start_run(config, tmp_path / "straight", quiet=True)
    start_run(config, tmp_path / "run", quiet=True)
    (tmp_path / "run/results.json").unlink()
    older, newest = list_checkpoints(tmp_path / "run/checkpoints")[-2:]
    newest.write_bytes(newest.read_bytes()[:1000])  # a damaged disk block, say
    capsys.readouterr()
    results = resume_run(tmp_path / "run")
    out = capsys.readouterr().out
    assert (f"warning: skipped the newer checkpoint {newest} is unreadable: not a whole torch.save archive (a file "
            f"cut short, or another kind of file)") in out and f"from {older.name}" in out
    assert results["top1"] == json.loads((tmp_path / "straight/results.json").read_text())["top1"]
    for path in list_checkpoints(tmp_path / "run/checkpoints"):
        path.write_bytes(b"garbage")
    (tmp_path / "run/results.json").unlink()
    with pytest.raises(CisslError, match=r"no readable checkpoint in .*checkpoints: checkpoint .*ckpt_00000006\.pt is "
                                         r"unreadable: not a whole torch.save archive"):
        resume_run(tmp_path / "run")


def test_a_signal_during_the_last_step_lets_the_run_finish(tmp_path, monkeypatch):
    """A stop requested while the last step runs: nothing is left to resume, so the run ends as usual
    (results.json, exit 0) instead of stopping with a checkpoint to continue from."""
    from cissl.engine import trainer as trainer_module

    steps = []

    # a SIGTERM that arrives during the run's second and last step
    monkeypatch.setattr(trainer_module, "StopSignals", ScriptedStop(lambda: len(steps) == 2))
    original = trainer_module.Trainer.train_step
    monkeypatch.setattr(trainer_module.Trainer, "train_step", lambda self: steps.append(1) or original(self))
    config = tiny_config("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2")
    results = start_run(config, tmp_path / "run", quiet=True)
    assert results["iterations"] == 2 and (tmp_path / "run/results.json").is_file()


def test_a_run_not_a_multiple_of_its_log_and_checkpoint_periods_logs_and_saves_its_last_step(tmp_path):
    """5 steps, logged and saved every 2: the last, partial window is logged and a checkpoint of the
    finished run written. A supervised run records no pseudo-label statistics, and a run without
    train.skip_nonfinite_steps logs no skipped-step count."""
    from cissl.engine.checkpoint import list_checkpoints

    config = tiny_config("train.iterations=5", "train.log_every=2", "train.checkpoint_every=2",
                         "train.eval_every=5", "train.keep_checkpoints=5", algorithm="supervised")
    start_run(config, tmp_path / "run", quiet=True)
    records = logged_records(tmp_path / "run")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4, 5]
    assert not any("skipped_nonfinite_steps" in r for r in train)
    assert [r.get("pseudo_labels") for r in records if r["kind"] == "eval"] == [None]
    assert [p.name for p in list_checkpoints(tmp_path / "run/checkpoints")] == [
        "ckpt_00000002.pt", "ckpt_00000004.pt", "ckpt_00000005.pt"]


def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    """optim.lr=1e6 (which used to run to the end at chance accuracy with exit 0)."""
    from cissl.engine.checkpoint import list_checkpoints, load_checkpoint

    code, _, err = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", "model.depth=10", "model.widen=1",
                            "train.batch_size=8", "train.iterations=60", "train.eval_every=30",
                            "train.checkpoint_every=2", "train.log_every=2", "train.report_last=1", "optim.lr=1e6",
                            "--out", tmp_path / "run", "--quiet"], capsys)
    assert code == 2 and "training diverged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run/results.json").exists()
    for path in list_checkpoints(tmp_path / "run/checkpoints"):
        state = load_checkpoint(path)["model"]
        assert all(bool(v.float().isfinite().all()) for v in state.values())


def test_skip_nonfinite_steps_skips_the_update_and_counts_it(tmp_path):
    """A NaN loss at step 3: with the option, the weights and the EMA stay as they were and the count
    (checkpointed, logged) is 1; without it, the run stops at the next log."""
    import dataclasses
    import io

    import torch

    from cissl.engine.data import prepare_data
    from cissl.engine.logging import RunLogger
    from cissl.engine.trainer import Trainer, TrainingDiverged
    from cissl.rundir import RunDir

    def poisoned(config, run_dir, nan_steps=(3,)):
        run = RunDir(run_dir)
        run.path.mkdir()
        logger = RunLogger(run, config.train.iterations, False, io.StringIO(), True, "plain")
        trainer = Trainer.from_config(config, prepare_data(config, "cpu"), run, logger, torch.device("cpu"))
        step = trainer.algorithm.step

        def nan_at(model, batch, t):
            out = step(model, batch, t)
            return dataclasses.replace(out, loss=out.loss * float("nan")) if t in nan_steps else out
        trainer.algorithm.step = nan_at
        return trainer

    base = ("train.iterations=6", "train.log_every=2", "train.eval_every=6", "train.checkpoint_every=6")
    trainer = poisoned(tiny_config(*base, "train.skip_nonfinite_steps=true"), tmp_path / "a")
    for _ in range(3):
        trainer.train_step()
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    ema = {k: v.clone() for k, v in trainer.ema.model.state_dict().items()}
    trainer.train_step()  # t = 3: NaN
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(v, trainer.ema.model.state_dict()[k]) for k, v in ema.items())
    assert trainer.skipped_steps == 1 and trainer.iteration == 4
    trainer.fit()
    assert trainer.state_dict()["skipped_steps"] == 1
    resumed = poisoned(tiny_config(*base, "train.skip_nonfinite_steps=true"), tmp_path / "c")
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.skipped_steps == 1  # the count goes on across a resume
    logged = logged_records(tmp_path / "a")
    assert [r["skipped_nonfinite_steps"] for r in logged if r["kind"] == "train"][-1] == 1
    diverged = (r"^training diverged: loss = nan in the steps logged at iteration 4; the newest checkpoint before "
                r"them is the last good one \(lower optim.lr, or check the data\)$")
    with pytest.raises(TrainingDiverged, match=diverged):
        poisoned(tiny_config(*base), tmp_path / "b").fit()
    # every step of the window logged at iteration 4 skipped: nothing logged there, the run goes on
    both = poisoned(tiny_config(*base, "train.skip_nonfinite_steps=true"), tmp_path / "d", nan_steps=(2, 3))
    both.fit()
    logged = [r for r in logged_records(tmp_path / "d") if r["kind"] == "train"]
    assert [(r["iteration"], r["skipped_nonfinite_steps"]) for r in logged] == [(2, 0), (6, 2)]


def test_a_class_without_labeled_images_is_refused():
    with pytest.raises(ConfigError, match="'data.imbalance_ratio': N1 / gamma = 40 / 100 leaves the last class"):
        load_config(CONFIGS / "quickstart.yaml", ["data.imbalance_ratio=100"])
    assert load_config(CONFIGS / "quickstart.yaml", ["data.imbalance_ratio=40"]).data.imbalance_ratio == 40


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """The write of the checkpoint at iteration 4 fails with ENOSPC, as torch reports it (a RuntimeError
    over the OSError): the command ends with one line naming the file, the one of iteration 2 is intact."""
    import errno

    import torch

    from cissl.engine import checkpoint as checkpoint_module
    from cissl.engine.checkpoint import list_checkpoints, load_checkpoint

    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        if obj.get("iteration") == 4:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from exc
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    code, _, err = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", "model.depth=10", "model.widen=1",
                            "train.batch_size=8", "train.iterations=6", "train.eval_every=2",
                            "train.checkpoint_every=2", "train.report_last=1", "--out", tmp_path / "run", "--quiet"],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "ckpt_00000004.pt: No space left on device" in err
    (only,) = list_checkpoints(tmp_path / "run/checkpoints")
    assert load_checkpoint(only)["iteration"] == 2 and not list((tmp_path / "run/checkpoints").glob(".*tmp*"))


class Payload:
    """An arbitrary object: unpickling it would run code; weights_only loading refuses it."""


def test_a_checkpoint_that_is_a_folder_or_missing_is_one_line(tmp_path, capsys):
    start_run(tiny_config(*TWO_STEPS), tmp_path / "run", quiet=True)
    for given, message in ((tmp_path / "run/checkpoints", f"checkpoint {tmp_path / 'run/checkpoints'} is a folder; "
                                                          f"name a checkpoint file (ckpt_<iteration>.pt)"),
                           (tmp_path / "nope.pt", f"checkpoint not found: {tmp_path / 'nope.pt'}")):
        code, _, err = run_cli(["evaluate", tmp_path / "run", "--checkpoint", given], capsys)
        assert code == 2 and err.strip() == f"cissl: error: {message}"


def test_a_pickled_object_in_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    import torch

    start_run(tiny_config(*TWO_STEPS), tmp_path / "run", quiet=True)
    torch.save({"iteration": 2, "model": {}, "extra": Payload()}, tmp_path / "evil.pt")
    code, _, err = run_cli(["evaluate", tmp_path / "run", "--checkpoint", tmp_path / "evil.pt"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "evil.pt is unreadable" in err
    assert "weights_only=False" not in err and "trust" not in err  # torch's advice to unpickle it is not passed on
    assert err.strip().endswith("evil.pt is unreadable: it holds an object other than tensors and plain values "
                                "(Unsupported global: GLOBAL test_reliability.Payload was not an allowed global "
                                "by default); cissl loads checkpoints without running code")


def test_out_into_a_read_only_folder_is_refused_even_as_root(tmp_path, monkeypatch):
    """The same check where the tests run as root (who may write anywhere): the permission answer is simulated,
    once for a folder without write permission and once for one that cannot be entered (no execute bit)."""
    from cissl.engine import run as run_module

    for denied in (os.W_OK, os.X_OK):
        monkeypatch.setattr(run_module.os, "access", lambda path, mode, denied=denied: not mode & denied)
        with pytest.raises(CisslError, match=f"^--out {tmp_path / 'run'}: the folder is not writable$"):
            start_run(load_config(CONFIGS / "quickstart.yaml", MISSING_DATA), tmp_path / "run", quiet=True)


def test_save_config_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    from cissl import rundir, yamlio
    from cissl.config import save_config

    path = tmp_path / "config.yaml"
    save_config(load_config(CONFIGS / "quickstart.yaml"), path)
    before = path.read_text()

    def broken(data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(yamlio, "dumps", lambda data: "x" * 10)
    monkeypatch.setattr(rundir.os, "fsync", lambda fd: broken(None))
    with pytest.raises(CisslError, match="config.yaml: No space left on device"):
        save_config(load_config(CONFIGS / "quickstart.yaml"), path)
    assert path.read_text() == before and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.update(version=1), "checkpoint format version 1 is not this cissl's (2); resume it with the "
                                            "cissl release that wrote it"),
    (lambda state: state.pop("batches"), "checkpoint does not match this run's config: 'batches'"),
])
def test_a_checkpoint_resume_cannot_use_is_one_line_and_the_run_keeps_its_files(tmp_path, capsys, damage, message):
    """A checkpoint of another format version, or one without a part the run restores (the config it
    records matches, so the identity check lets it through): one line naming what is wrong; the run's
    checkpoint, metrics and split stay as they were."""
    import torch

    run = tmp_path / "run"
    start_run(tiny_config(*TWO_STEPS), run, quiet=True)
    (run / "results.json").unlink()  # as if stopped after its checkpoint
    checkpoint = run / "checkpoints/ckpt_00000002.pt"
    state = torch.load(checkpoint, weights_only=True)
    damage(state)
    torch.save(state, checkpoint)
    before = file_contents(run)
    code, _, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    assert code == 2 and err.strip().splitlines() == [f"cissl: error: {message}"]
    assert file_contents(run) == before


def test_evaluate_names_a_missing_or_foreign_checkpoint(tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    start_run(tiny_config(*TWO_STEPS), run, quiet=True)
    code, _, err = run_cli(["evaluate", run, "--checkpoint", tmp_path / "nope.pt"], capsys)
    assert code == 2 and f"checkpoint not found: {tmp_path / 'nope.pt'}" in err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    code, _, err = run_cli(["evaluate", run, "--checkpoint", tmp_path / "other.pt"], capsys)
    assert code == 2 and "other.pt is not a cissl checkpoint (no model / iteration)" in err
    state = torch.load(run / "checkpoints/ckpt_00000002.pt", weights_only=True)
    del state["history"]
    torch.save(state, tmp_path / "no_history.pt")
    code, _, err = run_cli(["evaluate", run, "--checkpoint", tmp_path / "no_history.pt"], capsys)
    assert code == 2 and "no_history.pt does not match this run's config: 'history'" in err
    (run / "checkpoints/ckpt_00000002.pt").unlink()
    code, _, err = run_cli(["evaluate", run], capsys)
    assert code == 2 and f"{run} has no checkpoint to evaluate" in err


def test_a_checkpoint_written_on_a_gpu_is_evaluated_on_a_cpu_machine(tmp_path, capsys, monkeypatch):
    """A run trained on a GPU machine, evaluated on a laptop: its checkpoint's tensors are tagged cuda:0
    (written here by giving torch.save that tag for every storage), and loading maps them to the CPU.
    Without the map torch refuses: 'Attempting to deserialize object on a CUDA device'."""
    import torch
    import torch.serialization

    run = tmp_path / "run"
    start_run(tiny_config(*TWO_STEPS), run, quiet=True)
    checkpoint = run / "checkpoints/ckpt_00000002.pt"
    code, out, err = run_cli(["evaluate", run], capsys)
    assert code == 0, err
    state = torch.load(checkpoint, weights_only=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, checkpoint)
    assert b"cuda:0" in checkpoint.read_bytes()
    assert run_cli(["evaluate", run], capsys) == (0, out, err)


def test_load_checkpoint_names_a_foreign_archive_and_a_state_without_model_or_iteration(tmp_path):
    import zipfile

    import torch

    from cissl.engine.checkpoint import load_checkpoint

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:  # a whole zip archive, not torch.save's
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CisslError, match=rf"^checkpoint {tmp_path / 'other.zip'} is unreadable \(RuntimeError: .*"
                                         r"not in a subdirectory: notes\.txt\)$"):
        load_checkpoint(tmp_path / "other.zip")
    for name, state in (("list", [1, 2]), ("no_model", {"iteration": 2}), ("no_iteration", {"model": {}})):
        torch.save(state, tmp_path / f"{name}.pt")
        with pytest.raises(CisslError, match=rf"^checkpoint {tmp_path / name}\.pt is not a cissl checkpoint "
                                             r"\(no model / iteration\)$"):
            load_checkpoint(tmp_path / f"{name}.pt")


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code, _, err = run_cli(["train", "--config", CONFIGS / "quickstart.yaml", "--out", tmp_path / "taken"], capsys)
    assert code == 2 and f"{tmp_path / 'taken'} is a file, not a folder; choose a folder" in err
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("argv, message", [
    (["train", "--resume", "runs/x", "optim.lr=0.1"], "--resume continues a run with its saved config.yaml; drop "
                                                       "--config / --algorithm / overrides"),
    (["train", "--resume", "runs/x", "--algorithm", "semi"], "--resume continues a run with its saved config.yaml; "
                                                             "drop --config / --algorithm / overrides"),
    (["train"], "train needs --config FILE (or --resume RUN_DIR)"),
    (["predict", "runs/x", "--images", "x.png", "--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["split", "--config", "examples/own_data.yaml", "--counts-only"],
     "data.dataset=folder: the counts come from the data; drop --counts-only (in Python: cissl.api.split(config))"),
    (["sweep", "--out", "x"], "sweep needs --configs FILE ... or --jobs FILE"),
    (["split", "--config", "Q", "--counts-only", "data.unlabeled_head=null"],
     "'data.unlabeled_head': required unless data.unlabeled_distribution is 'unknown'"),
    (["split", "--config", "Q", "--counts-only", "data.unlabeled_distribution=uniform",
      "data.unlabeled_imbalance_ratio=10"], "'data.unlabeled_imbalance_ratio': must be null or 1 when "
                                           "data.unlabeled_distribution is 'uniform'"),
    (["split", "--config", "Q", "--counts-only", "optim..lr=1"], "override 'optim..lr=1': malformed key"),
    (["split", "--config", "Q", "--counts-only", "algorithm.refiner=5", "--algorithm", "fixmatch"],
     "config key 'algorithm.refiner': expected a name or a mapping, got 5"),
    (["split", "--config", "Q", "--counts-only", "--algorithm", "fixmatch_darp",
      "algorithm.refiner.target_distribution=0.5"],
     "'algorithm.refiner.target_distribution': expected a list, got 0.5"),
])
def test_each_command_line_mistake_is_one_line(tmp_path, capsys, argv, message):
    argv = [str(CONFIGS / "quickstart.yaml") if a == "Q" else str(REPO / a) if a.endswith(".yaml") else a
            for a in argv]
    code, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("cissl: error: ") and message in err


@pytest.mark.parametrize("text, message", [
    ("- data\n- model\n", "expected a mapping of sections"),
    ("data:\n  dataset: digits\nmethods: [semi]\n", "config key 'methods': expected a mapping of algorithm names"),
])
def test_a_config_file_of_the_wrong_shape_is_one_line(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml")


def test_a_resumed_runs_wall_time_adds_the_time_trained_before(tmp_path):
    """results.json's wall_time_s of a resumed run counts the checkpoint's elapsed seconds (set here to
    1000) and the time since the resume."""
    import torch

    from cissl.engine.checkpoint import load_checkpoint
    from cissl.engine.run import evaluate_run, resume_run

    start_run(tiny_config("train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2"), tmp_path / "run",
              quiet=True)
    (tmp_path / "run/checkpoints/ckpt_00000004.pt").unlink()
    (tmp_path / "run/results.json").unlink()
    state = load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000002.pt")
    torch.save({**state, "elapsed": 1000.0}, tmp_path / "run/checkpoints/ckpt_00000002.pt")
    results = resume_run(tmp_path / "run", quiet=True)
    assert 1000.0 < results["wall_time_s"] < 1000.0 + 600
    assert load_checkpoint(tmp_path / "run/checkpoints/ckpt_00000004.pt")["elapsed"] == results["wall_time_s"]
    assert evaluate_run(tmp_path / "run")["wall_time_s"] == results["wall_time_s"]  # from the checkpoint it reads


def test_a_run_resumed_between_two_logs_logs_what_an_uninterrupted_one_does(tmp_path):
    """The metric window (steps since the last log) is in the checkpoint: cut at step 2 of a 4-step log
    window, the resumed run logs at step 4 the mean over steps 1-4, as the run straight through does."""
    config = tiny_config("train.iterations=4", "train.log_every=4", "train.eval_every=4", "train.checkpoint_every=2",
                         algorithm="fixmatch")
    uninterrupted_and_resumed(config, tmp_path, 4)

    def logged(run):
        records = logged_records(tmp_path / run)
        return [{k: v for k, v in r.items() if k.startswith("loss") or k in ("iteration", "mask_rate")}
                for r in records if r["kind"] == "train"]
    whole = logged("whole")
    assert len(whole) == 1 and whole[0]["iteration"] == 4 and "loss" in whole[0]
    assert logged("cut") == whole


def test_an_out_that_is_a_file_or_under_one_is_one_line_for_every_command(tmp_path, capsys):
    """plot, report and sweep write into folders, predict into a file: a file where the folder belongs (or on
    the way to it) is one line with exit status 2, before any work, and the file is left alone. Before, plot,
    report and predict ended in a traceback, and the sweep failed each job and then its table."""
    from PIL import Image

    start_run(tiny_config(*TWO_STEPS, "train.report_last=1"), tmp_path / "run", quiet=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "images/a.png")
    a_file = f"{notes} is a file, not a folder; choose a folder"
    sweep = ["sweep", "--configs", CONFIGS / "quickstart.yaml", "--algorithms", "supervised", "--seeds", "0"]
    predict = ["predict", tmp_path / "run", "--images", tmp_path / "images"]
    for command, out, message in (
            (["plot", tmp_path / "run"], notes, a_file),
            (["plot", tmp_path / "run"], notes / "x", f"cannot create the folder {notes / 'x'}: Not a directory"),
            (["report", tmp_path / "run"], notes, a_file),
            (sweep, notes, a_file),
            (predict, notes / "p.csv", f"cannot write {notes / 'p.csv'}: Not a directory"),
            (predict, tmp_path / "images", f"cannot write {tmp_path / 'images'}: Is a directory")):
        after = [*TWO_STEPS, "train.report_last=1"] if command is sweep else []
        code, _, err = run_cli([*command, "--out", out, *after], capsys)
        assert code == 2 and err.strip() == f"cissl: error: {message}", command
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["images", "notes.txt", "run"]
