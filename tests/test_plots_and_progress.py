import io
import json

import pytest
from conftest import run_cli
from helpers import record_axes_calls, saved_figures, tiny_config

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


def test_each_figure_draws_the_runs_numbers(tmp_path, monkeypatch):
    """What `cissl plot` draws, read off the axes calls: the curves are 100 x top-1 and balanced accuracy of
    each head at each evaluation; the bars 100 x the per-class accuracy over ticks naming each class's
    labeled count; the confusion matrix normalised by row (counts 3 1 0 / 0 1 0 / 0 0 0: a row of one image is
    all of its share, a class without test images stays a zero row) on a fixed 0..1 colour scale; the
    pseudo-label bars those of the last of three evaluations that recorded them. The figures go to --out."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    import numpy as np

    from cissl.data.protocol import Split
    from cissl.evaluation.plots import plot_run

    run = tmp_path / "run"
    run.mkdir()
    evaluations = [{"kind": "eval", "iteration": it, "test": {"main": {"top1": t, "balanced_accuracy": b},
                                                               "balanced": {"top1": t / 2, "balanced_accuracy": b / 2}}}
                   for it, t, b in ((2, 0.25, 0.5), (4, 0.75, 0.625), (6, 0.5, 0.75))]

    def pseudo(mask, used, labels, truth=(0.5, 0.25, 0.25)):
        return {"per_class_mask_rate": mask, "per_class_used_accuracy": used, "pseudo_label_distribution": labels,
                "true_distribution": list(truth)}

    evaluations[0]["pseudo_labels"] = pseudo([0.0] * 3, [0.0] * 3, [0.5, 0.25, 0.25])
    evaluations[1]["pseudo_labels"] = pseudo([0.25] * 3, [0.5] * 3, [0.25, 0.5, 0.25])
    evaluations[2]["pseudo_labels"] = pseudo([0.5, 0.25, 0.0], [1.0, 0.75, 0.0], [0.625, 0.375, 0.0])
    lines = [json.dumps({"kind": "train", "iteration": 1, "loss": 1.0})] + [json.dumps(r) for r in evaluations]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "results.json").write_text(json.dumps({"per_class_accuracy": [0.5, 0.25, 1.0], "reported_head": "main",
                                                   "confusion_matrix": [[3, 1, 0], [0, 1, 0], [0, 0, 0]]}))
    Split(np.arange(6), np.arange(6, 10), np.arange(0), [3, 2, 1], [2, 1, 1]).save(run / "split.json")
    drawn = {**record_axes_calls(monkeypatch, "plot", "bar", "imshow"), "xticks": [], "scales": []}
    real_xticks, real_imshow = matplotlib.axes.Axes.set_xticks, matplotlib.axes.Axes.imshow

    def xticks(ax, ticks, labels=None, **kwargs):
        drawn["xticks"].append(labels)
        return real_xticks(ax, ticks, labels, **kwargs)

    def imshow(ax, image, **kwargs):
        shown = real_imshow(ax, image, **kwargs)
        drawn["scales"].append(shown.get_clim())
        return shown

    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", xticks)
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    written = plot_run(run, tmp_path / "figures")
    assert written == [tmp_path / "figures" / name for name in ("curves.png", "per_class_accuracy.png",
                                                                "confusion_matrix.png", "pseudo_labels.png")]
    assert all(path.is_file() for path in written) and not (run / "plots").exists()
    assert drawn["plot"] == [[[2, 4, 6], [25.0, 75.0, 50.0], "main top-1"],
                             [[2, 4, 6], [50.0, 62.5, 75.0], "main balanced"],
                             [[2, 4, 6], [12.5, 37.5, 25.0], "balanced top-1"],
                             [[2, 4, 6], [25.0, 31.25, 37.5], "balanced balanced"]]
    assert drawn["bar"][0] == [[0, 1, 2], [50.0, 25.0, 100.0]] and drawn["xticks"][0] == ["0\n3", "1\n2", "2\n1"]
    assert drawn["imshow"] == [[[[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]]
    assert drawn["scales"] == [(0, 1)]
    assert drawn["bar"][1:] == [[[-0.2, 0.8, 1.8], [0.5, 0.25, 0.0], "mask rate (used / seen)"],
                                [[0.2, 1.2, 2.2], [1.0, 0.75, 0.0], "accuracy of used pseudo-labels"],
                                [[-0.2, 0.8, 1.8], [0.625, 0.375, 0.0], "used pseudo-labels (estimate)"],
                                [[0.2, 1.2, 2.2], [0.5, 0.25, 0.25], "true unlabeled distribution"]]


def test_a_run_plotted_before_its_first_evaluation_gets_its_curves_figure_saying_so(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import warnings

    from cissl.evaluation import plots

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "train", "iteration": 1, "loss": 1.0}) + "\n")
    figures = saved_figures(monkeypatch, plots)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned of a legend without entries
        assert plots.plot_run(tmp_path) == [tmp_path / "plots/curves.png"]
    (note,) = figures["curves"].axes[0].texts
    assert note.get_text() == "no evaluation recorded yet"  # in the middle of the empty axes, whatever their limits
    assert note.get_position() == (0.5, 0.5) and note.get_transform() == figures["curves"].axes[0].transAxes
    assert (note.get_horizontalalignment(), note.get_verticalalignment()) == ("center", "center")


def test_plot_without_matplotlib_names_the_extra_and_a_cut_record_is_skipped(tmp_path, monkeypatch, capsys):
    """`cissl plot` without matplotlib is one line naming the extra; the evaluations it draws are the eval
    records of metrics.jsonl in order, past train records and a last line cut short by a crash."""
    import sys

    from cissl.evaluation.plots import read_evaluations

    (tmp_path / "metrics.jsonl").write_text('{"kind": "eval", "iteration": 2}\n{"kind": "train", "iteration": 3}\n'
                                            '{"kind": "eval", "iteration": 4}\n{"kind": "eval", "itera')
    assert read_evaluations(tmp_path) == [{"kind": "eval", "iteration": 2}, {"kind": "eval", "iteration": 4}]
    with open(tmp_path / "metrics.jsonl", "a") as metrics:  # a line cut short, then more records: those are read
        metrics.write('\n{"kind": "eval", "iteration": 6}\n')
    assert [r["iteration"] for r in read_evaluations(tmp_path)] == [2, 4, 6]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_cli(["plot", tmp_path], capsys)
    assert code == 2 and err.strip().endswith("plots need matplotlib: pip install 'cissl[plots]'")
    assert len(err.strip().splitlines()) == 1


def test_plot_draws_each_evaluation_the_results_and_the_last_pseudo_labels(tmp_path, monkeypatch, capsys):
    """What `cissl plot` draws, read off the axes calls, for a hand-made run of three classes with two heads:
    each head's 100 x top-1 and balanced accuracy at each evaluation (train records and a cut last line
    skipped), 100 x per-class accuracy over classes ticked with their labeled counts, the confusion matrix
    normalised by row (a class without test images stays a zero row), and the last evaluation's pseudo-label
    rates beside the true distribution."""
    pytest.importorskip("matplotlib")
    import numpy as np

    import cissl.evaluation.plots as plots
    from cissl.data.protocol import Split

    run = tmp_path / "run"
    run.mkdir()
    empty = np.zeros(0, dtype=np.int64)
    Split(empty, empty, empty, labeled_counts=[5, 2, 1], unlabeled_counts=[10, 4, 2]).save(run / "split.json")
    heads = lambda main, balanced: {"main": {"top1": main[0], "balanced_accuracy": main[1]},  # noqa: E731
                                    "balanced": {"top1": balanced[0], "balanced_accuracy": balanced[1]}}
    pseudo = lambda mask: {"per_class_mask_rate": mask, "per_class_used_accuracy": [1.0, 0.5, 0.0],  # noqa: E731
                           "pseudo_label_distribution": [0.5, 0.25, 0.25], "true_distribution": [0.625, 0.25, 0.125]}
    records = [{"kind": "eval", "iteration": 2, "test": heads((0.5, 0.375), (0.25, 0.125)),
                "pseudo_labels": pseudo([0.0, 0.0, 0.0])},
               {"kind": "train", "iteration": 3, "loss": 1.0},
               {"kind": "eval", "iteration": 4, "test": heads((0.75, 0.5), (0.625, 0.875)),
                "pseudo_labels": pseudo([0.75, 0.5, 0.25])}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "ev')
    (run / "results.json").write_text(json.dumps({"reported_head": "balanced", "per_class_accuracy": [0.5, 0.25, 1.0],
                                                  "confusion_matrix": [[2, 2, 0], [0, 0, 0], [1, 0, 3]]}))
    drawn = record_axes_calls(monkeypatch, "plot", "bar", "imshow")
    figures = saved_figures(monkeypatch, plots)
    code, _, _ = run_cli(["plot", run], capsys)
    assert code == 0 and list(figures) == ["curves", "per_class_accuracy", "confusion_matrix", "pseudo_labels"]
    assert drawn["plot"] == [[[2, 4], [50.0, 75.0], "main top-1"], [[2, 4], [37.5, 50.0], "main balanced"],
                             [[2, 4], [25.0, 62.5], "balanced top-1"], [[2, 4], [12.5, 87.5], "balanced balanced"]]
    assert drawn["bar"] == [[[0, 1, 2], [50.0, 25.0, 100.0]],
                            [[-0.2, 0.8, 1.8], [0.75, 0.5, 0.25], "mask rate (used / seen)"],
                            [[0.2, 1.2, 2.2], [1.0, 0.5, 0.0], "accuracy of used pseudo-labels"],
                            [[-0.2, 0.8, 1.8], [0.5, 0.25, 0.25], "used pseudo-labels (estimate)"],
                            [[0.2, 1.2, 2.2], [0.625, 0.25, 0.125], "true unlabeled distribution"]]
    assert drawn["imshow"] == [[[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.25, 0.0, 0.75]]]]
    widths = {round(bar.get_width(), 9) for ax in figures["pseudo_labels"].axes for bar in ax.patches}
    assert widths == {0.4}  # two bars per class, side by side (at -0.2 and +0.2), not overlapping
    (image,) = figures["confusion_matrix"].axes[0].images  # its colours on a fixed scale: a share of 0 to 1
    assert image.get_clim() == (0, 1) and image.get_cmap().name == "Blues"
    (per_class,) = figures["per_class_accuracy"].axes
    assert [t.get_text() for t in per_class.get_xticklabels()] == ["0\n5", "1\n2", "2\n1"]  # class, labeled count
    curves = figures["curves"].axes[0]
    assert [line.get_linestyle() for line in curves.get_lines()] == ["-", "--", "-", "--"]  # balanced dashed
    assert [t.get_text() for t in curves.get_legend().get_texts()] == ["main top-1", "main balanced",
                                                                       "balanced top-1", "balanced balanced"]
    texts = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) for figure in figures.values() for ax in figure.axes]
    assert texts == [
        ("iteration", "test accuracy (%)", "EMA model on the test set"),
        ("class (labeled count below)", "accuracy (%)", "per-class accuracy, head 'balanced'"),
        ("predicted", "true", "confusion matrix (rows normalised)"), ("", "", ""),  # and its colour bar
        ("true class", "", "pseudo-labels, last evaluation interval"),
        ("class", "", "estimated vs true unlabeled class distribution")]
    # a run evaluated once has its curves too (one point per line)
    (run / "metrics.jsonl").write_text(json.dumps(records[0]) + "\n")
    drawn["plot"].clear()
    assert run_cli(["plot", run], capsys)[0] == 0
    assert drawn["plot"] == [[[2], [50.0], "main top-1"], [[2], [37.5], "main balanced"],
                             [[2], [25.0], "balanced top-1"], [[2], [12.5], "balanced balanced"]]
