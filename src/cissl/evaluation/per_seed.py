"""Per-seed tables: what a mean ± std row is made of, seed by seed.

For each setting, every row's balanced accuracy at each seed; with a reference row (``--pair``), the
reference minus each row at each seed, for balanced accuracy and for each third of the classes (many /
medium / few), with the mean ± sample std over the seeds both ran (the paired.md cell for balanced
accuracy). Values in %, differences in points."""

from __future__ import annotations

from pathlib import Path

from cissl.evaluation.report import COLUMNS, _mean_std, check_reference, collect_results, pairs, values_by_row
from cissl.rundir import atomic_write_text

PER_SEED = "per_seed.md"
METRICS = [(key, title) for key, title in COLUMNS if key.endswith("_accuracy")]  # balanced, many, medium, few
MISSING = "-"


def _spread(values: list[float], signed: bool) -> str:
    mean, std = _mean_std([100 * v for v in values])
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if std is None else f"{text} ± {std:.2f}"


def _values_table(by_row: dict, setting: str, seeds: list[int]) -> list[str]:
    lines = ["| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for (row_setting, algorithm), values in sorted(by_row.items()):
        if row_setting == setting:
            cells = [f"{100 * values[s]:.2f}" if s in values else MISSING for s in seeds]
            lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {_spread(list(values.values()), False)} |")
    return lines


def _differences_table(per_metric: dict, reference: str, setting: str, seeds: list[int]) -> list[str]:
    lines = [f"| {reference} minus | metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for (row_setting, algorithm), metrics in sorted(per_metric.items()):
        if row_setting != setting:
            continue
        for title, (own, values) in metrics.items():
            both = [s for s in seeds if s in own and s in values]
            cells = [f"{100 * (own[s] - values[s]):+.2f}" if s in both else MISSING for s in seeds]
            spread = _spread([own[s] - values[s] for s in both], True)
            lines.append(f"| {algorithm} | {title} | " + " | ".join(cells) + f" | {spread} |")
    return lines


def per_seed_markdown(runs: list[dict], reference: str | None = None) -> str:
    """One section per setting: each row's balanced accuracy by seed and, given ``reference`` (an
    algorithm or SETTING:ALGORITHM, as ``--pair``), the reference minus each row by seed, per metric."""
    by_row = values_by_row(runs, "balanced_accuracy")
    per_metric: dict[tuple[str, str], dict[str, tuple[dict, dict]]] = {}
    if reference is not None:
        check_reference(by_row, reference)  # below, a metric the reference row did not record pairs with nothing
        for key, title in METRICS:
            for setting, algorithm, own, values in pairs(values_by_row(runs, key), reference):
                if set(own) & set(values):
                    per_metric.setdefault((setting, algorithm), {})[title] = (own, values)
    sections = []
    for setting in sorted({s for s, _ in by_row}):
        seeds = sorted({seed for (s, _), values in by_row.items() if s == setting for seed in values})
        lines = [f"### {setting}", "", "Balanced accuracy by seed, in %:", "",
                 *_values_table(by_row, setting, seeds)]
        if any(s == setting for s, _ in per_metric):
            lines += ["", f"{reference} minus each, by seed, in points (mean ± sample std over the seeds both "
                          f"ran; '{MISSING}': not both ran):", "",
                      *_differences_table(per_metric, reference, setting, seeds)]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def write_per_seed(root: Path, reference: str | None = None) -> str:
    """Write ``per_seed.md`` for every run below ``root``; returns its text."""
    text = per_seed_markdown(collect_results(Path(root)), reference)
    atomic_write_text(Path(root) / PER_SEED, text)
    return text
