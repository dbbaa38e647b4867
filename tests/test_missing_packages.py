"""An optional package a training run needs (TensorBoard, rich, a method's scipy, its data reader's scikit-learn or
Pillow) is named in one line before
the run reads its data or writes anything: ``cissl.engine.run.check_installed``, called by ``train``,
``--resume`` and ``cissl sweep`` (before its output folder is made)."""

import sys

import pytest
from conftest import REPO, run_cli
from helpers import CONFIGS, tiny_config

import cissl.engine.run as run_module
from cissl.config import load_config
from cissl.engine.run import check_installed, resume_run, start_run
from cissl.errors import ConfigError, DataError
from cissl.sweep import run_sweep

TENSORBOARD = r"^config key 'train.tensorboard': needs the tensorboard package; pip install 'cissl\[tensorboard\]'$"
RICH = r"^config key 'train.progress': 'rich' needs the rich package; pip install 'cissl\[progress\]'$"
SKLEARN = r"^digits: the digits data set comes with scikit-learn; install it with `pip install 'cissl\[digits\]'`$"
PILLOW = r"^data.dataset=folder reads images with Pillow: pip install 'cissl\[images\]'$"
SCIPY = r"^algorithm fixmatch_seval fits its offsets and thresholds with scipy's optimizers"


@pytest.fixture
def without(monkeypatch):
    """Make modules unimportable (``import x`` of a ``None`` entry of sys.modules raises ImportError)."""
    def hide(*names):
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return hide


@pytest.fixture
def no_data(monkeypatch):
    """A run that got as far as reading its data fails the test."""
    def read(*args, **kwargs):
        raise AssertionError("the data was read before the missing package was named")
    monkeypatch.setattr(run_module, "prepare_rank_data", read)


@pytest.mark.parametrize("overrides, hidden, message", [
    (["train.tensorboard=true"], "torch.utils.tensorboard", TENSORBOARD),
    (["train.progress=rich"], "rich.progress", RICH),
])
def test_a_new_run_names_a_missing_logging_package_before_anything(tmp_path, without, no_data, overrides, hidden,
                                                                   message):
    without(hidden)
    with pytest.raises(ConfigError, match=message):
        start_run(tiny_config(*overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_quiet_run_has_no_bar_so_it_needs_no_rich(tmp_path, without, no_data):
    without("rich.progress")
    check_installed(tiny_config("train.progress=rich"), quiet=True)
    with pytest.raises(ConfigError, match=RICH):
        check_installed(tiny_config("train.progress=rich"), quiet=False)
    with pytest.raises(AssertionError, match="the data was read"):  # a quiet start gets past the check
        start_run(tiny_config("train.progress=rich"), tmp_path / "run", quiet=True)


def test_a_method_names_its_package_before_the_data_is_read(tmp_path, without, no_data):
    without("scipy.optimize")
    with pytest.raises(ConfigError, match=SCIPY):
        start_run(tiny_config("data.val_per_class=5", algorithm="fixmatch_seval"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, hidden, message", [
    (CONFIGS / "quickstart.yaml", "sklearn.datasets", SKLEARN),
    (REPO / "examples" / "own_data.yaml", "PIL", PILLOW),
])
def test_a_data_reader_names_its_package_before_the_run_folder_is_claimed(tmp_path, without, no_data, config,
                                                                           hidden, message):
    """Without the check the reader named the package after the run folder was claimed (it held a lock file)."""
    without(hidden)
    with pytest.raises(DataError, match=message):
        start_run(load_config(config, [f"data.root={tmp_path}", "train.device=cpu"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_only_the_rank_that_logs_needs_the_logging_packages(without, monkeypatch):
    """Under torchrun rank 0 alone writes the logs; another rank (another node) need not have TensorBoard.
    Every rank runs the method, so every rank needs its package."""
    without("torch.utils.tensorboard", "scipy.optimize")
    config = tiny_config("train.tensorboard=true")
    for key, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    check_installed(config, quiet=False)
    with pytest.raises(ConfigError, match=SCIPY):
        check_installed(tiny_config("data.val_per_class=5", algorithm="fixmatch_seval"), quiet=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=TENSORBOARD):
        check_installed(config, quiet=False)


def test_a_resume_names_the_missing_package_before_it_loads_anything(tmp_path, without, monkeypatch):
    config = tiny_config("train.progress=rich", "train.iterations=4", "train.eval_every=2",
                         "train.checkpoint_every=2")
    start_run(config, tmp_path / "run", quiet=True)  # quiet: no bar
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    without("rich.progress")
    monkeypatch.setattr(run_module, "load_newest_readable",
                        lambda *a: pytest.fail("the checkpoint was read before the missing package was named"))
    with pytest.raises(ConfigError, match=RICH):
        resume_run(tmp_path / "run", quiet=False)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before


def test_a_quiet_resume_has_no_bar_so_it_needs_no_rich(tmp_path, without):
    config = tiny_config("train.progress=rich", "train.iterations=4", "train.eval_every=2",
                         "train.checkpoint_every=2", "train.report_last=1")
    start_run(config, tmp_path / "run", quiet=True)
    (tmp_path / "run/checkpoints/ckpt_00000004.pt").unlink()
    without("rich.progress")
    assert resume_run(tmp_path / "run", quiet=True)["iterations"] == 4


def test_a_sweep_names_the_missing_package_before_it_makes_its_folder(tmp_path, without, capsys):
    without("rich.progress")
    code, out, err = run_cli(["sweep", "--configs", CONFIGS / "quickstart.yaml", "--algorithms", "fixmatch",
                              "--seeds", "0", "--workers", "2", "--out", tmp_path / "sweep", "train.progress=rich",
                              "train.iterations=10", "train.report_last=1"], capsys)
    assert code == 2 and out == "" and err.startswith("cissl: error: config key 'train.progress': 'rich' needs")
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_checks_only_the_runs_it_will_run(tmp_path, without, monkeypatch):
    """A finished run is skipped, so a package only it needed is not asked for; a run of the sweep's own
    process is quiet by default (no bar), while a worker's is not."""
    overrides = ["model.depth=10", "model.widen=1", "train.iterations=2", "train.eval_every=2",
                 "train.report_last=1", "train.batch_size=8", "train.progress=rich"]
    finished = tmp_path / "sweep" / "quickstart" / "fixmatch" / "seed0"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")
    without("rich.progress")
    monkeypatch.setattr("cissl.sweep.write_report", lambda out: [])
    monkeypatch.setattr("cissl.sweep.check_same_run", lambda job: None)
    run_sweep([CONFIGS / "quickstart.yaml"], ["fixmatch"], [0], tmp_path / "sweep", overrides, workers=2)
    started = []
    monkeypatch.setattr("cissl.sweep._run_job", lambda job, quiet: started.append(job) or {})
    monkeypatch.setattr("cissl.sweep._summary", lambda results, seconds: "done")
    run_sweep([CONFIGS / "quickstart.yaml"], ["fixmatch"], [1], tmp_path / "sweep", overrides)
    assert len(started) == 1
    with pytest.raises(ConfigError, match=RICH):
        run_sweep([CONFIGS / "quickstart.yaml"], ["fixmatch"], [1], tmp_path / "sweep", overrides, quiet=False)
    with pytest.raises(ConfigError, match=RICH):
        run_sweep([CONFIGS / "quickstart.yaml"], ["fixmatch"], [1], tmp_path / "sweep", overrides, deadline=60)
