"""cissl report DIR ... --out OUT: report.md / report.html with figures and the paper's numbers beside ours."""

import json
import sys

import numpy as np
import pytest
from conftest import CONFIGS, REPO, run_cli
from helpers import saved_figures

from cissl.evaluation.report_pages import paper_cell, paper_numbers
from cissl.sweep import run_sweep

TINY = ["model.depth=10", "model.widen=1", "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.batch_size=8", "train.eval_batch_size=500", "train.report_last=1"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_report_of_two_methods_writes_pages_figures_and_the_runs_numbers(tmp_path, capsys):
    run_sweep([str(CONFIGS / "quickstart.yaml")], ["supervised", "fixmatch"], [0], tmp_path / "runs", TINY)
    code, out, _ = run_cli(["report", tmp_path / "runs", "--out", tmp_path / "report"], capsys)
    assert code == 0
    md = (tmp_path / "report/report.md").read_text()
    page = (tmp_path / "report/report.html").read_text()
    figures = sorted((tmp_path / "report/figures").glob("*.png"))
    assert {p.name.rsplit("_", 1)[-1] for p in figures} >= {"curves.png", "class.png", "confusion.png", "labels.png"}
    for path in figures:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path
        assert f"figures/{path.name}" in md
    assert page.count("data:image/png;base64,") == len(figures)
    curves = next(p.name for p in figures if p.name.endswith("_curves.png"))  # trained runs: metrics.jsonl
    assert f"![curves](figures/{curves})" in md and f"<h3>curves</h3><img alt=\"{curves[:-4]}\"" in page
    for algorithm in ("supervised", "fixmatch"):
        result = json.loads((tmp_path / f"runs/quickstart/{algorithm}/seed0/results.json").read_text())
        cells = f"| {algorithm} | 0 | {100 * result['top1']:.2f} | {100 * result['balanced_accuracy']:.2f} |"
        assert cells in md and f"<td>{100 * result['top1']:.2f}</td>" in page


def assert_well_formed(page: str) -> None:
    """report.html as a browser should read it: the doctype and the page's head first, every element closed in
    the order opened (``meta`` and ``img`` are void), and text only inside the elements that show text (stray
    text in a table row or list would be drawn on the page)."""
    from html.parser import HTMLParser

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.open, self.stray = [], []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img"):
                self.open.append(tag)

        def handle_endtag(self, tag):
            assert self.open and self.open.pop() == tag, (tag, self.open)

        def handle_data(self, data):
            if data.strip() and (not self.open or self.open[-1] not in
                                 ("title", "style", "h1", "h2", "h3", "p", "li", "th", "td")):
                self.stray.append(data)

    assert page.startswith("<!doctype html><html><head><meta charset='utf-8'><title>cissl report</title><style>")
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.open == [] and checker.stray == []


def fake_run(root, setting, algorithm, k, seed=0, top1=0.5, counts=None, **fields):
    """A results.json as a run writes it (no metrics: the curves are left out), for report layout tests;
    ``fields`` replace its values, ``counts`` the labeled counts of its split.json."""
    run = root / setting / algorithm / f"seed{seed}"
    run.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    confusion = np.diag(rng.integers(5, 20, k)) + rng.integers(0, 2, (k, k))
    counts = counts or [max(1, int(100 * 0.9 ** i)) for i in range(k)]
    pseudo = {"per_class_mask_rate": rng.random(k).tolist(), "per_class_used_accuracy": rng.random(k).tolist(),
              "pseudo_label_distribution": (np.ones(k) / k).tolist(), "true_distribution": (np.ones(k) / k).tolist()}
    result = {"setting": setting, "algorithm": algorithm, "seed": seed, "reported_head": "main", "top1": top1,
              "balanced_accuracy": top1, "many_accuracy": top1, "medium_accuracy": top1, "few_accuracy": top1,
              "mean_last_top1": top1, "per_class_accuracy": rng.random(k).tolist(),
              "confusion_matrix": confusion.tolist(), "pseudo_labels": pseudo, "wall_time_s": 60.0, **fields}
    (run / "results.json").write_text(json.dumps(result))
    (run / "split.json").write_text(json.dumps({"labeled_counts": counts, "settings": {}}))
    return run


def test_each_report_figure_draws_the_mean_over_each_methods_seeds(tmp_path, monkeypatch):
    """What the report's figures draw, read off the axes calls, for two classes and method 'a' (seeds 0, 1;
    seed 1 evaluated once more) beside 'b' (one seed, its balanced head reported, no pseudo-labels): the
    curves are each run's 100 x balanced accuracy of its reported head and their mean over the iterations
    every seed reached; per-class accuracy and pseudo-label rates are means over seeds; a confusion matrix
    is the seeds' summed counts normalised by row (a class without test images stays a zero row)."""
    pytest.importorskip("matplotlib")
    from helpers import record_axes_calls

    from cissl.evaluation.report_pages import write_report_pages

    def evaluations(run, head_values):
        lines = [{"kind": "train", "iteration": 1, "loss": 1.0}]
        lines += [{"kind": "eval", "iteration": it, "test": {head: {"balanced_accuracy": v} for head, v in heads}}
                  for it, heads in head_values]
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    def pseudo(mask, used, labels):
        return {"per_class_mask_rate": mask, "per_class_used_accuracy": used, "pseudo_label_distribution": labels,
                "true_distribution": [0.625, 0.375]}

    root = tmp_path / "runs"
    a0 = fake_run(root, "s", "a", 2, seed=0, counts=[3, 1], per_class_accuracy=[0.5, 0.25],
                  confusion_matrix=[[3, 1], [0, 2]], pseudo_labels=pseudo([0.5, 0.25], [1.0, 0.5], [0.75, 0.25]))
    a1 = fake_run(root, "s", "a", 2, seed=1, per_class_accuracy=[1.0, 0.75], confusion_matrix=[[1, 0], [2, 0]],
                  pseudo_labels=pseudo([0.25, 0.75], [0.5, 1.0], [0.25, 0.75]))
    b0 = fake_run(root, "s", "b", 2, reported_head="balanced", per_class_accuracy=[0.25, 0.125],
                  confusion_matrix=[[0, 0], [1, 3]], pseudo_labels=None)
    evaluations(a0, [(2, [("main", 0.5)]), (4, [("main", 0.25)])])
    evaluations(a1, [(2, [("main", 0.25)]), (4, [("main", 0.75)]), (6, [("main", 1.0)])])
    evaluations(b0, [(2, [("main", 0.9), ("balanced", 0.125)]), (4, [("main", 0.9), ("balanced", 0.5)])])
    drawn = record_axes_calls(monkeypatch, "plot", "bar", "imshow")
    names = [p.name for p in write_report_pages([root], tmp_path / "report")]
    assert names == ["report.md", "report.html", "s_curves.png", "s_per_class.png", "s_confusion.png",
                     "s_pseudo_labels.png"]
    curves, per_class, pseudo_labels = drawn["plot"][:5], drawn["plot"][5:7], drawn["plot"][7:]
    assert curves == [[[2, 4], [50.0, 25.0]], [[2, 4, 6], [25.0, 75.0, 100.0]],
                      [[2, 4], [37.5, 50.0], "a (2 runs; thin: each seed)"],
                      [[2, 4], [12.5, 50.0]], [[2, 4], [12.5, 50.0], "b (1 run; thin: each seed)"]]
    assert per_class == [[[0, 1], [75.0, 50.0], "a"], [[0, 1], [25.0, 12.5], "b"]]
    assert drawn["bar"] == [[[0, 1], [3, 1], "labeled images"]]  # the first run's split
    assert drawn["imshow"] == [[[[0.8, 0.2], [0.5, 0.5]]], [[[0.0, 0.0], [0.25, 0.75]]]]
    assert pseudo_labels == [[[0, 1], [37.5, 50.0], "a"], [[0, 1], [75.0, 75.0], "a"], [[0, 1], [50.0, 50.0], "a"],
                             [[0, 1], [62.5, 37.5], "true unlabeled distribution"]]


def test_each_method_keeps_one_line_style_across_a_settings_figures_and_twelve_are_told_apart(tmp_path,
                                                                                                  monkeypatch):
    """A setting with every method of the library holds more methods than a palette has colours: each of 12
    methods gets its own (colour, line style), the same in the curves, per-class and pseudo-label figures
    (matplotlib's default cycle repeated its 10 colours there, and the curves' tab20 differed from it)."""
    pytest.importorskip("matplotlib")
    import matplotlib.colors

    from cissl.evaluation import report_pages

    root = tmp_path / "runs"
    methods = [f"m{i:02d}" for i in range(12)]
    for name in methods:
        run = fake_run(root, "s", name, 3)
        line = {"kind": "eval", "iteration": 2, "test": {"main": {"balanced_accuracy": 0.5}}}
        (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    figures = saved_figures(monkeypatch, report_pages)
    report_pages.write_report_pages([root], tmp_path / "report")
    styles = {}
    for stem, fig in figures.items():
        figure = stem.split("_", 1)[1]
        for ax in fig.axes:
            lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("m")]
            if not lines:
                continue
            drawn = {ln.get_label().split(" ")[0]: (matplotlib.colors.to_hex(ln.get_color()), ln.get_linestyle())
                     for ln in lines}
            assert sorted(drawn) == methods, figure
            assert len(set(drawn.values())) == 12, (figure, drawn)  # told apart
            styles[(figure, ax.get_title())] = drawn
    assert {figure for figure, _ in styles} == {"curves", "per_class", "pseudo_labels"}
    assert len(styles) == 5  # one axes each, three in the pseudo-label figure
    first = next(iter(styles.values()))
    assert all(drawn == first for drawn in styles.values())  # the same style in every figure
    tab10 = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
    assert [first[m] for m in methods] == [(tab10[i % 10], "-" if i < 10 else "--") for i in range(12)]


def test_report_md_of_a_paper_setting_line_by_line_and_the_html_embeds_each_figure_file(tmp_path):
    """The whole report.md of two methods on a paper setting (no metrics.jsonl: no curves figure): the intro,
    the table (mean ± sample std over seeds: semi's 80 and 70 give 75.00 ± 7.07; the paper's column from its
    Table 1: FixMatch 67.8 ± 1.13, SeMi 80.3 ± 0.41), the figure links; report.html holds the same intro and
    cells and each figure as the PNG file's own bytes."""
    import base64
    import re

    from cissl.evaluation.report_pages import write_report_pages

    setting = "cifar10_lt/consistent_n500_m4000_g100"
    fake_run(tmp_path / "runs", setting, "semi", 3, top1=0.8)
    fake_run(tmp_path / "runs", setting, "semi", 3, seed=1, top1=0.7)
    fake_run(tmp_path / "runs", setting, "fixmatch", 3, top1=0.6)
    written = write_report_pages([tmp_path / "runs"], tmp_path / "report")
    slug = "cifar10_lt_consistent_n500_m4000_g100"
    figures = [f"{slug}_per_class.png", f"{slug}_confusion.png", f"{slug}_pseudo_labels.png"]
    assert [p.name for p in written] == ["report.md", "report.html", *figures]
    intro = (f"3 runs below {tmp_path / 'runs'}. Ours: mean ± sample std over seeds of the final EMA model on the "
             "test set, the method's reported head, in %. The last column is the SeMi paper's own number for the "
             "same cell (its Tables 1-3, mean ± std of 3 runs, DASO's protocol for the baselines), where the "
             "setting is one of the paper's: the paper's, not ours.")
    semi = " | ".join(["75.00 ± 7.07"] * 6)
    assert (tmp_path / "report/report.md").read_text() == "\n".join([
        "# cissl report", "", intro, "", f"## {setting}", "",
        "| algorithm | seeds | top-1 | balanced acc. | many | medium | few | mean of last k top-1 | "
        "paper top-1 (the paper's, 3 runs) |",
        "|---|---|---|---|---|---|---|---|---|",
        "| fixmatch | 0 | " + " | ".join(["60.00"] * 6) + " | 67.8 ± 1.13 |",
        f"| semi | 0 1 | {semi} | 80.3 ± 0.41 |", "",
        f"![per-class accuracy](figures/{figures[0]})", f"![confusion matrices](figures/{figures[1]})",
        f"![pseudo-labels](figures/{figures[2]})", ""])
    page = (tmp_path / "report/report.html").read_text()
    assert f"<h1>cissl report</h1>\n<p>{intro.replace(chr(39), '&#x27;')}</p>" in page
    assert f"<h2>{setting}</h2>" in page and "<td>semi</td><td>0 1</td><td>75.00 ± 7.07</td>" in page
    embedded = re.findall(r'<h3>([^<]+)</h3><img alt="([^"]+)" src="data:image/png;base64,([^"]+)">', page)
    assert [(title, alt) for title, alt, _ in embedded] == [
        ("per-class accuracy", figures[0][:-4]), ("confusion matrices", figures[1][:-4]),
        ("pseudo-labels", figures[2][:-4])]
    for (_, _, data), name in zip(embedded, figures):
        assert base64.b64decode(data) == (tmp_path / "report/figures" / name).read_bytes()
    assert_well_formed(page)


def test_a_report_of_two_settings_returns_the_figures_of_both_and_names_a_setting_without_name(tmp_path):
    from cissl.evaluation.report_pages import write_report_pages

    fake_run(tmp_path / "runs", "a", "semi", 3)
    fake_run(tmp_path / "more", "", "semi", 3)  # a run of the user's own data written without a setting name
    written = [p.name for p in write_report_pages([tmp_path / "runs", tmp_path / "more"], tmp_path / "report")]
    assert written == ["report.md", "report.html"] + [f"{slug}_{figure}.png" for slug in ("setting", "a")
                                                       for figure in ("per_class", "confusion", "pseudo_labels")]
    md = (tmp_path / "report/report.md").read_text()
    assert f"\n2 runs below {tmp_path / 'runs'}, {tmp_path / 'more'}. Ours:" in md
    assert "\n## (no setting name)\n" in md and "\n## a\n" in md
    assert "<h2>(no setting name)</h2>" in (tmp_path / "report/report.html").read_text()


def test_per_class_figures_name_the_classes_of_the_split_when_it_names_all_of_them(tmp_path, monkeypatch):
    """The per-class figure's ticks (and a t-SNE legend) take the class names of the run's split.json when it
    holds one per class, else the class indices."""
    pytest.importorskip("matplotlib")
    from cissl.evaluation import report_pages

    figures = saved_figures(monkeypatch, report_pages)
    for setting, names in (("named", ["cat", "dog", "emu"]), ("two_names", ["cat", "dog"]), ("none", None)):
        run = fake_run(tmp_path / setting, setting, "m", 3, counts=[4, 2, 1])
        split = {"labeled_counts": [4, 2, 1], "settings": {} if names is None else {"class_names": names}}
        (run / "split.json").write_text(json.dumps(split))
        report_pages.write_report_pages([tmp_path / setting], tmp_path / f"report_{setting}")
    ticks = [[t.get_text() for t in figures[f"{setting}_per_class"].axes[0].get_xticklabels()]
             for setting in ("named", "two_names", "none")]
    assert ticks == [["cat", "dog", "emu"], ["0", "1", "2"], ["0", "1", "2"]]


def test_paper_columns_for_a_cifar10_lt_setting_match_the_papers_table(tmp_path, capsys):
    fake_run(tmp_path / "runs", "cifar10_lt/consistent_n500_m4000_g100", "semi", 10, top1=0.8)
    fake_run(tmp_path / "runs", "cifar10_lt/daso_protocol/consistent_n500_m4000_g100", "fixmatch_daso", 10)
    fake_run(tmp_path / "runs", "digits_lt/consistent_n20_m90_g10", "semi", 10)
    code, _, _ = run_cli(["report", tmp_path / "runs", "--out", tmp_path / "report"], capsys)
    md = (tmp_path / "report/report.md").read_text()
    assert code == 0 and "paper top-1 (the paper's, 3 runs)" in md
    assert "| semi | 0 | 80.00 | 80.00 | 80.00 | 80.00 | 80.00 | 80.00 | 80.3 ± 0.41 |" in md
    assert "| fixmatch_daso | 0 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 76.0 ± 0.37 |" in md
    assert "| semi | 0 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |  |" in md  # not a paper setting


def test_the_pages_name_what_was_left_out_and_escape_names_in_the_html(tmp_path, capsys):
    """A setting name is the user's text: the HTML page shows it as text (escaped), never as markup. An
    unreadable results.json is named on both pages, as the plain report names it."""
    fake_run(tmp_path / "runs", 'lt<b>&"10"', "semi", 4)
    broken = [tmp_path / f"runs/broken/seed{seed}/results.json" for seed in (0, 1)]
    for path in broken:
        path.parent.mkdir(parents=True)
        path.write_text("{")
    code, _, _ = run_cli(["report", tmp_path / "runs", "--out", tmp_path / "report"], capsys)
    md = (tmp_path / "report/report.md").read_text()
    page = (tmp_path / "report/report.html").read_text()
    assert code == 0 and '## lt<b>&"10"' in md and "<h2>lt&lt;b&gt;&amp;&quot;10&quot;</h2>" in page
    assert "<b>" not in page
    first, second = (f"{path} (" for path in broken)  # each followed by why it could not be read
    assert md.startswith("# cissl report\n\n1 run below ")  # the broken ones are listed, not counted
    assert f"\n\nLeft out, unreadable:\n- {first}" in md and f"\n- {second}" in md
    assert md.split("Left out, unreadable:\n")[1].split("\n\n## ")[0].count("\n") == 1  # the list, then the setting
    assert f"<p>Left out, unreadable:</p><ul><li>{first}" in page and f"</li><li>{second}" in page
    assert_well_formed(page)


def test_paper_numbers_are_the_transcribed_tables():
    """The shipped JSON equals what tests/reference/paper_numbers.py reads from shared/paper/tables.md."""
    tables = REPO.parent / "shared" / "paper" / "tables.md"
    if not tables.is_file():
        pytest.skip("shared/paper/tables.md is not beside the checkout")
    sys.path.insert(0, str(REPO / "tests" / "reference"))
    try:
        from paper_numbers import parse
    finally:
        sys.path.pop(0)
    assert parse(tables.read_text(encoding="utf-8")) == paper_numbers()


def test_a_paper_cell_is_read_from_the_shipped_tables_or_the_numbers_given():
    """The shipped numbers (Table 3's SeMi on STL-10-LT; a DASO-protocol config is the paper's cell of the same
    setting), none for a setting or method the paper lacks, and the numbers a caller passes instead."""
    assert paper_cell("stl10_lt/n150_g10", "semi") == [75.3, 0.74]
    assert paper_cell("cifar100_lt/daso_protocol/reversed_n150_m300_g10", "fixmatch_daso") == [60.0, 0.31]
    assert paper_cell("digits_lt/consistent_n20_m90_g10", "semi") is None
    assert paper_cell("stl10_lt/n150_g10", "cossl") is None
    assert paper_cell("stl10_lt/n150_g10", "semi", {"stl10_lt/n150_g10": {"semi": [1.0, 0.5]}}) == [1.0, 0.5]
    assert sum(map(len, paper_numbers().values())) == 208  # Table 1: 15 x 8, Table 2: 8 x 8, Table 3: 6 x 4


def test_a_settings_figure_files_are_named_by_its_letters_and_digits():
    from cissl.evaluation.report_pages import _slug

    assert _slug("cifar10_lt/consistent_n500_m4000_g100") == "cifar10_lt_consistent_n500_m4000_g100"
    assert _slug("/X lt [key=1.5]/") == "X_lt__key_1_5"  # no _ at either end; letters kept as they are
    assert _slug("") == _slug("/ /") == "setting"


def test_a_100_class_report_renders(tmp_path, capsys):
    for algorithm in ("fixmatch", "semi"):
        for seed in (0, 1):
            fake_run(tmp_path / "runs", "cifar100_lt/consistent_n150_m300_g10", algorithm, 100, seed)
    code, _, _ = run_cli(["report", tmp_path / "runs", "--out", tmp_path / "report"], capsys)
    assert code == 0
    figures = sorted((tmp_path / "report/figures").glob("*.png"))
    assert len(figures) == 3 and all(p.read_bytes().startswith(PNG) for p in figures)  # no curves: no metrics
    assert "| semi | 0 1 |" in (tmp_path / "report/report.md").read_text()


def test_several_folders_need_out(tmp_path, capsys):
    code, _, err = run_cli(["report", tmp_path, tmp_path], capsys)
    assert code == 2 and "give --out" in err


def test_a_report_needs_results_and_the_tsne_needs_scikit_learn(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "empty/run").mkdir(parents=True)
    (tmp_path / "also_empty").mkdir()
    code, _, err = run_cli(["report", tmp_path / "empty", tmp_path / "also_empty", "--out", tmp_path / "report"],
                           capsys)
    assert code == 2 and err.strip().endswith(f"no results.json below {tmp_path / 'empty'}, {tmp_path / 'also_empty'}")
    run_sweep([str(CONFIGS / "quickstart.yaml")], ["supervised"], [0], tmp_path / "runs", TINY)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    code, _, err = run_cli(["report", tmp_path / "runs", "--out", tmp_path / "report", "--tsne"], capsys)
    assert code == 2 and err.strip().endswith("--tsne needs scikit-learn: pip install 'cissl[digits]'")
    assert not (tmp_path / "report").exists()  # refused before any figure is drawn


def test_tsne_figure_of_each_method(tmp_path, capsys):
    run_sweep([str(CONFIGS / "quickstart.yaml")], ["supervised"], [0], tmp_path / "runs", TINY)
    code, _, _ = run_cli(["report", tmp_path / "runs", "--out", tmp_path / "report", "--tsne"], capsys)
    (tsne,) = (tmp_path / "report/figures").glob("*_tsne.png")
    assert code == 0 and tsne.read_bytes().startswith(PNG) and tsne.stat().st_size > 10000
    assert f"figures/{tsne.name}" in (tmp_path / "report/report.md").read_text()


def test_tsne_embeds_the_final_ema_models_test_features_coloured_by_their_class(tmp_path, monkeypatch):
    """What the t-SNE figure shows: the EMA model's test features of the run (its newest checkpoint), a seeded
    subsample of max_points of them when the pool is larger, coloured by their true class."""
    import matplotlib
    import sklearn.manifold

    matplotlib.use("Agg")
    import matplotlib.axes
    import matplotlib.pyplot as plt

    from cissl.engine.run import features_on_test_set, load_run
    from cissl.evaluation import report_pages
    from cissl.evaluation.evaluate import predict_with_features

    run_sweep([str(CONFIGS / "quickstart.yaml")], ["supervised"], [0], tmp_path / "runs", TINY)
    run_dir = tmp_path / "runs/quickstart/supervised/seed0"
    seen = []

    class RecordedTSNE:
        def __init__(self, **options):
            seen.append({"options": options})

        def fit_transform(self, features):
            seen[-1]["features"] = features
            return features[:, :2]

    real_scatter = matplotlib.axes.Axes.scatter

    def scatter(ax, x, y, **kwargs):
        seen[-1]["colours"] = np.asarray(kwargs["c"])
        return real_scatter(ax, x, y, **kwargs)

    monkeypatch.setattr(sklearn.manifold, "TSNE", RecordedTSNE)
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    run = {"run_dir": str(run_dir), "method": "supervised", "seed": 0}
    trained = load_run(run_dir)
    _, features = predict_with_features(trained.model, trained.data.test.images, trained.config.train.eval_batch_size,
                                        trained.policy)
    labels = trained.data.test.labels.cpu().numpy()
    keep = np.random.default_rng(0).choice(len(labels), 50, replace=False)
    assert report_pages._tsne(run, tmp_path / "small.png", plt, features_on_test_set,
                              max_points=50).read_bytes().startswith(PNG)
    report_pages._tsne(run, tmp_path / "all.png", plt, features_on_test_set)
    assert seen[0]["options"] == {"n_components": 2, "init": "pca", "random_state": 0, "perplexity": 30}
    assert np.array_equal(seen[0]["features"], features.numpy()[keep])
    tab10 = np.asarray([plt.get_cmap("tab10")(i) for i in range(10)])  # digits: 10 classes, one colour each
    assert np.array_equal(seen[0]["colours"], tab10[labels[keep]])
    assert len(labels) < 2000 and np.array_equal(seen[1]["features"], features.numpy())
    assert np.array_equal(seen[1]["colours"], tab10[labels])


@pytest.mark.parametrize("k", [3, 10, 15, 30])
def test_tsne_points_have_the_colour_their_class_has_in_the_legend(tmp_path, monkeypatch, k):
    """Each class one colour, the same in the points and in the legend (up to MANY_CLASSES classes; beyond, a
    colour bar from class 0 to k - 1). With fewer than 10 classes the legend showed tab10's first colours while
    the points took colours spread over the whole palette."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from cissl.evaluation import report_pages

    labels = np.repeat(np.arange(k), 4)
    features = np.random.default_rng(0).normal(size=(len(labels), 5)).astype(np.float32)
    class FirstTwo:
        def __init__(self, **options):
            pass

        def fit_transform(self, x):
            return x[:, :2]

    monkeypatch.setattr(report_pages, "_tsne_class", lambda: FirstTwo)
    figures = saved_figures(monkeypatch, report_pages)
    run = {"run_dir": str(tmp_path), "method": "m", "seed": 0}
    report_pages._tsne(run, tmp_path / "t.png", plt, lambda _: (torch.from_numpy(features), torch.from_numpy(labels)))
    (fig,) = figures.values()
    fig.canvas.draw()  # a colour-mapped scatter's colours exist once drawn
    ax = fig.axes[0]
    points = ax.collections[0].get_facecolors()[:, :3]
    point_colours = {c: tuple(points[labels == c][0]) for c in range(k)}
    assert all(len(np.unique(points[labels == c], axis=0)) == 1 for c in range(k))  # one colour per class
    assert len(set(point_colours.values())) == k  # a colour for each class
    if k <= report_pages.MANY_CLASSES:
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == [str(c) for c in range(k)]
        legend_colours = [matplotlib.colors.to_rgb(h.get_color()) for h in legend.legend_handles]
        assert np.allclose(legend_colours, [point_colours[c] for c in range(k)])
    else:
        bar = fig.axes[1]
        assert ax.get_legend() is None and bar.get_ylabel() == "class"
        viridis = plt.get_cmap("viridis")
        assert np.allclose([point_colours[c] for c in (0, k - 1)], [viridis(0.0)[:3], viridis(1.0)[:3]])
    plt.close(fig)
