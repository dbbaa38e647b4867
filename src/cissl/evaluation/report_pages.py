"""A report a researcher can hand around: ``report.md`` and a self-contained ``report.html`` for the
runs below one or more folders, with the paper's numbers beside ours where the setting is one of the
paper's, and the figures of every setting (``cissl report DIR ... --out OUT``).

Per setting: the table of every method (mean ± std over seeds) with the paper's top-1 for the same
cell in its own column, labelled as the paper's; the test curves of every run overlaid; per-class
accuracy of every method beside the labeled counts; each method's confusion matrix (mean over its
seeds); the pseudo-labels per class (the paper's Fig. 6: how many pass the threshold, how many of
those are right, and their class distribution against the true one); optionally (``--tsne``) a t-SNE
of the final EMA model's test features coloured by class (the paper's Fig. 4; scikit-learn).
"""

from __future__ import annotations

import base64
import html
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cissl.errors import CisslError
from cissl.evaluation.plots import _pyplot, _save, read_evaluations
from cissl.evaluation.report import (
    COLUMNS,
    MIXED_TITLE,
    _cell,
    aggregate,
    collect_results,
    mixed_environments,
    table_setting,
)
from cissl.rundir import atomic_write_text, ensure_folder
from cissl.wording import counted

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    # a run folder -> the test features of its final EMA model (N, D) and their true classes (N,)
    TestFeatures = Callable[[Path], tuple[torch.Tensor, torch.Tensor]]

MANY_CLASSES = 20  # beyond this, per-class figures drop their tick labels and class legends


def paper_numbers() -> dict[str, dict[str, list[float]]]:
    """The SeMi paper's Tables 1-3 ([mean, std] top-1 %) by our setting name and preset name."""
    text = resources.files("cissl.evaluation").joinpath("data/paper_numbers.json").read_text(encoding="utf-8")
    return json.loads(text)["numbers"]


def paper_cell(setting: str, algorithm: str, numbers: dict | None = None) -> list[float] | None:
    """The paper's number for one of our table cells (a DASO-protocol config is the same cell), else None."""
    numbers = paper_numbers() if numbers is None else numbers
    return numbers.get(setting.replace("/daso_protocol/", "/"), {}).get(algorithm)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_") or "setting"


def _groups(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """setting -> algorithm -> runs (sorted by seed)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        out.setdefault(table_setting(run), {}).setdefault(run["method"], []).append(run)
    for algorithms in out.values():
        for members in algorithms.values():
            members.sort(key=lambda r: r["seed"])
    return dict(sorted(out.items()))


def _labeled_counts(run: dict) -> list[int] | None:
    try:
        return json.loads((Path(run["run_dir"]) / "split.json").read_text(encoding="utf-8"))["labeled_counts"]
    except (OSError, ValueError, KeyError):
        return None


def _class_names(run: dict, k: int) -> list[str]:
    try:
        names = json.loads((Path(run["run_dir"]) / "split.json").read_text(encoding="utf-8"))["settings"].get(
            "class_names")
    except (OSError, ValueError, KeyError):
        names = None
    return list(names) if names and len(names) == k else [str(i) for i in range(k)]


LINESTYLES = ("-", "--", ":", "-.")  # with tab10's colours: 40 methods of a setting drawn apart


def _method_styles(algorithms, plt) -> dict[str, dict]:
    """One line style per method of a setting (``color``, ``linestyle``), the same in each of its figures:
    tab10's ten colours, then the same colours dashed, dotted, dash-dotted (a setting holds more methods than
    a palette has colours when every method of the library ran on it)."""
    palette = plt.get_cmap("tab10")
    return {name: {"color": palette(i % 10), "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)]}
            for i, name in enumerate(algorithms)}


def _curves(algorithms: dict[str, list[dict]], path: Path, plt) -> Path | None:
    """Every run's curve (thin, its method's colour) and each method's mean over its seeds (thick)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = _method_styles(algorithms, plt)
    drawn = 0
    for algorithm, members in algorithms.items():
        curves = []
        for run in members:
            try:
                records = read_evaluations(Path(run["run_dir"]))
            except CisslError:
                continue
            head = run.get("reported_head", "main")
            points = [(r["iteration"], 100 * r["test"][head]["balanced_accuracy"])
                      for r in records if head in r["test"]]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, **styles[algorithm], linewidth=0.7, alpha=0.35)
                curves.append((xs, ys))
        if curves:
            length = min(len(xs) for xs, _ in curves)
            mean = np.mean([ys[:length] for _, ys in curves], axis=0)
            ax.plot(curves[0][0][:length], mean, **styles[algorithm], linewidth=2,
                    label=f"{algorithm} ({counted(len(curves), 'run')}; thin: each seed)")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("iteration")
    ax.set_ylabel("balanced accuracy (%), EMA model")
    ax.set_title("evaluation curves: mean over seeds (thick) and every run (thin)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path, plt)


def _per_class(algorithms: dict[str, list[dict]], path: Path, plt) -> Path:
    first = next(iter(algorithms.values()))[0]
    k = len(first["per_class_accuracy"])
    counts = _labeled_counts(first)
    fig, ax = plt.subplots(figsize=(max(7, min(18, 0.5 * k + 4)), 4.2))
    x = np.arange(k)
    styles = _method_styles(algorithms, plt)
    for algorithm, members in algorithms.items():
        mean = np.mean([r["per_class_accuracy"] for r in members], axis=0) * 100
        ax.plot(x, mean, **styles[algorithm], marker="o" if k <= MANY_CLASSES else None, markersize=3, linewidth=1.2,
                label=algorithm)
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_ylim(0, 102)
    if counts:
        twin = ax.twinx()
        twin.bar(x, counts, color="grey", alpha=0.18, width=0.8, label="labeled images")
        twin.set_ylabel("labeled images per class (bars)")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    if k <= MANY_CLASSES:
        names = _class_names(first, k)
        ax.set_xticks(x, names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if
                      max(map(len, names)) > 3 else "center", fontsize=8)
    else:
        ax.set_xlabel("class, head to tail")
    ax.set_title("per-class accuracy against the labeled counts")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path, plt)


def _confusions(algorithms: dict[str, list[dict]], path: Path, plt) -> Path:
    n = len(algorithms)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    for ax, (algorithm, members) in zip(axes.flat, algorithms.items()):
        conf = np.sum([np.asarray(r["confusion_matrix"], dtype=float) for r in members], axis=0)
        conf = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{algorithm} ({counted(len(members), 'seed')})", fontsize=9)
        k = len(conf)
        if k <= MANY_CLASSES:
            ax.set_xticks(range(k), range(k), fontsize=7)
            ax.set_yticks(range(k), range(k), fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _pseudo_labels(algorithms: dict[str, list[dict]], path: Path, plt) -> Path | None:
    with_pseudo = {a: [r["pseudo_labels"] for r in m if r.get("pseudo_labels")] for a, m in algorithms.items()}
    with_pseudo = {a: p for a, p in with_pseudo.items() if p}
    if not with_pseudo:
        return None
    k = len(next(iter(with_pseudo.values()))[0]["per_class_mask_rate"])
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(max(13, min(18, 0.45 * k * 3)), 4))
    x = np.arange(k)
    styles = _method_styles(algorithms, plt)  # of every method of the setting: the colours of its other figures
    marker = "o" if k <= MANY_CLASSES else None
    for algorithm, stats in with_pseudo.items():
        for ax, key in ((left, "per_class_mask_rate"), (middle, "per_class_used_accuracy"),
                        (right, "pseudo_label_distribution")):
            ax.plot(x, 100 * np.mean([s[key] for s in stats], axis=0), **styles[algorithm], marker=marker,
                    markersize=3, label=algorithm)
    truth = next(iter(with_pseudo.values()))[0]["true_distribution"]
    right.plot(x, 100 * np.asarray(truth), "k--", linewidth=1.5, label="true unlabeled distribution")
    left.set_title("unlabeled images over the threshold (%)", fontsize=9)
    middle.set_title("accuracy of the used pseudo-labels (%)", fontsize=9)
    right.set_title("class distribution of the used pseudo-labels (%)", fontsize=9)
    for ax in (left, middle, right):
        ax.set_xlabel("class, head to tail" if k > MANY_CLASSES else "class")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    return _save(fig, path, plt)


def _tsne_class():
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise CisslError("--tsne needs scikit-learn: pip install 'cissl[digits]'") from None
    return TSNE


def _tsne(run: dict, path: Path, plt, features_on_test_set: TestFeatures, max_points: int = 2000) -> Path:
    """t-SNE of one run's test features (``features_on_test_set`` of its folder), coloured by true class."""
    features, labels = features_on_test_set(Path(run["run_dir"]))
    features, labels = features.numpy(), labels.numpy()
    if len(labels) > max_points:
        keep = np.random.default_rng(0).choice(len(labels), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    embedded = _tsne_class()(n_components=2, init="pca", random_state=0,
                             perplexity=min(30, len(labels) - 1)).fit_transform(features)
    k = int(labels.max()) + 1
    fig, ax = plt.subplots(figsize=(6, 5.5))
    if k <= MANY_CLASSES:  # class i in the i-th colour of a qualitative palette, the same in points and legend
        palette = plt.get_cmap("tab10" if k <= 10 else "tab20")
        colours = np.asarray([palette(i) for i in range(k)])
        ax.scatter(embedded[:, 0], embedded[:, 1], c=colours[labels], s=6, alpha=0.8)
        names = _class_names(run, k)
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[i], label=names[i]) for i in range(k)]
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    else:  # too many classes for a legend: a colour scale over the class index
        scatter = ax.scatter(embedded[:, 0], embedded[:, 1], c=labels, cmap="viridis", vmin=0, vmax=k - 1, s=6,
                             alpha=0.8)
        fig.colorbar(scatter, ax=ax, label="class")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of test features: {run['method']} seed {run['seed']}", fontsize=9)
    return _save(fig, path, plt)


def _table(setting: str, rows: list[dict], numbers: dict) -> tuple[list[str], list[list[str]]]:
    header = ["algorithm", "seeds", *[title for _, title in COLUMNS], "paper top-1 (the paper's, 3 runs)"]
    body = []
    for row in rows:
        paper = paper_cell(setting, row["algorithm"], numbers)
        body.append([row["algorithm"], " ".join(map(str, row["seeds"])), *[_cell(row[key]) for key, _ in COLUMNS],
                     "" if paper is None else f"{paper[0]:.1f} ± {paper[1]:.2f}"])
    return header, body


def write_report_pages(roots: list[Path], out: Path,
                       features_on_test_set: TestFeatures | None = None) -> list[Path]:
    """Write OUT/report.md, OUT/report.html and OUT/figures/*.png for every run below ``roots``; with
    ``features_on_test_set`` (a run folder -> its final EMA model's test features and their labels, as
    :func:`cissl.engine.run.features_on_test_set` gives them) a t-SNE of each method's first run too."""
    plt = _pyplot()
    if features_on_test_set is not None:
        _tsne_class()  # scikit-learn missing: one line before any figure is drawn
    unreadable: list[str] = []
    runs = [run for root in roots for run in collect_results(Path(root), unreadable)]
    if not runs:
        raise CisslError(f"no results.json below {', '.join(map(str, roots))}")
    out = ensure_folder(Path(out))
    figures_dir = ensure_folder(out / "figures")
    numbers = paper_numbers()
    rows_by_setting: dict[str, list[dict]] = {}
    for row in aggregate(runs):
        rows_by_setting.setdefault(row["setting"], []).append(row)
    md = ["# cissl report", "",
          f"{counted(len(runs), 'run')} below {', '.join(map(str, roots))}. Ours: mean ± sample std over seeds of "
          "the final EMA model on the test set, the method's reported head, in %. The last column is the SeMi "
          "paper's own number for the same cell (its Tables 1-3, mean ± std of 3 runs, DASO's protocol for the "
          "baselines), where the setting is one of the paper's: the paper's, not ours.", ""]
    lists = [(title, lines) for title, lines in (("Left out, unreadable:", unreadable),
                                                 (MIXED_TITLE, mixed_environments(runs))) if lines]
    for title, lines in lists:
        md += [title, *[f"- {line}" for line in lines], ""]
    sections = []
    written = []
    for setting, algorithms in _groups(runs).items():
        slug = _slug(setting)
        header, body = _table(setting, rows_by_setting.get(setting, []), numbers)
        figures = [("curves", _curves(algorithms, figures_dir / f"{slug}_curves.png", plt)),
                   ("per-class accuracy", _per_class(algorithms, figures_dir / f"{slug}_per_class.png", plt)),
                   ("confusion matrices", _confusions(algorithms, figures_dir / f"{slug}_confusion.png", plt)),
                   ("pseudo-labels", _pseudo_labels(algorithms, figures_dir / f"{slug}_pseudo_labels.png", plt))]
        if features_on_test_set is not None:
            for algorithm, members in algorithms.items():
                path = figures_dir / f"{slug}_{_slug(algorithm)}_tsne.png"
                figures.append((f"t-SNE {algorithm}", _tsne(members[0], path, plt, features_on_test_set)))
        figures = [(title, path) for title, path in figures if path is not None]
        written += [path for _, path in figures]
        sections.append((setting, header, body, figures))
        md += [f"## {setting or '(no setting name)'}", "", "| " + " | ".join(header) + " |",
               "|" + "---|" * len(header), *["| " + " | ".join(cells) + " |" for cells in body], ""]
        md += [f"![{title}](figures/{path.name})" for title, path in figures] + [""]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", _html(md[2], lists, sections))
    return [out / "report.md", out / "report.html", *written]


def _html(intro: str, lists: list[tuple[str, list[str]]], sections) -> str:
    def image(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cissl report</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th:last-child,td:last-child"
             "{background:#f4f4f4}img{max-width:100%;margin:0.5em 0}</style></head><body>",
             "<h1>cissl report</h1>", f"<p>{html.escape(intro)}</p>"]
    for title, lines in lists:
        parts.append(f"<p>{html.escape(title)}</p><ul>" + "".join(f"<li>{html.escape(u)}</li>" for u in lines)
                     + "</ul>")
    for setting, header, body, figures in sections:
        parts.append(f"<h2>{html.escape(setting or '(no setting name)')}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                               for cells in body) + "</table>")
        parts += [f"<h3>{html.escape(title)}</h3>{image(path)}" for title, path in figures]
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["paper_cell", "paper_numbers", "write_report_pages"]
