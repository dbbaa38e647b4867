import io

import pytest
from conftest import run_cli
from helpers import tiny_config

from cissl.engine.logging import RunLogger
from cissl.engine.run import start_run
from cissl.errors import ConfigError


def test_plot_writes_every_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    config = tiny_config("train.iterations=4", "train.eval_every=2", "algorithm.threshold=0.1", algorithm="fixmatch")
    start_run(config, tmp_path / "run", quiet=True)
    code, out, _ = run_cli(["plot", tmp_path / "run"], capsys)
    names = sorted(p.name for p in (tmp_path / "run" / "plots").iterdir())
    assert code == 0 and names == ["confusion_matrix.png", "curves.png", "per_class_accuracy.png",
                                   "pseudo_labels.png"]
    assert all((tmp_path / "run" / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_plot_of_a_non_run_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(["plot", tmp_path], capsys)
    assert code == 2 and "metrics.jsonl" in err


def test_progress_lines_and_rich_bar(tmp_path):
    stream = io.StringIO()
    logger = RunLogger(tmp_path, 100, stream=stream)
    logger.log_train(50, {"loss": 1.5, "mask_rate": 0.25})
    logger.close()
    line = stream.getvalue()
    assert "it 50/100 (50%)" in line and "loss 1.5" in line and "it/s" in line and "ETA" in line
    pytest.importorskip("rich")
    rich_logger = RunLogger(tmp_path, 100, progress="rich")
    rich_logger.log_train(10, {"loss": 1.0})
    rich_logger.close()
    assert (tmp_path / "metrics.jsonl").read_text().count('"kind": "train"') == 2


def test_tensorboard_without_package_names_the_key(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="train.tensorboard"):
        RunLogger(tmp_path, 10, tensorboard=True)
