"""Multi-run tables: mean +- std over seeds per (setting, algorithm), as markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import sys
from pathlib import Path

from cissl.environment import code_of, machine_of
from cissl.errors import CisslError
from cissl.rundir import RESULTS, atomic_write_text
from cissl.wording import counted

COLUMNS = [  # (results.json key, column title)
    ("top1", "top-1"),
    ("balanced_accuracy", "balanced acc."),
    ("many_accuracy", "many"),
    ("medium_accuracy", "medium"),
    ("few_accuracy", "few"),
    ("mean_last_top1", "mean of last k top-1"),
]


VALIDATION_SUFFIX = " (validation)"  # the setting cell of runs evaluated on the validation split


def method_label(algorithm: str, run_dir: Path) -> str:
    """The name a run's row goes by: its algorithm, or the folder that holds its ``seed<k>`` directory
    when that folder is named otherwise (a jobs file's variant, e.g. OUT/<setting>/fixmatch_darp_estimated/
    seed0), so that runs of one algorithm with other settings never share a row. A grid's runs
    (OUT/<setting>/<algorithm>/<key=value>/seed<k>) keep the algorithm: their setting names the values."""
    run_dir = Path(run_dir)
    if re.fullmatch(r"seed\d+", run_dir.name) and algorithm not in (run_dir.parent.name, run_dir.parent.parent.name):
        return run_dir.parent.name
    return algorithm


def collect_results(root: Path, unreadable: list[str] | None = None) -> list[dict]:
    """Every ``results.json`` below ``root`` (with its run directory and its row's name, ``method``); the
    path and reason of each one that cannot be read go to ``unreadable`` (the tables say so instead of
    quietly holding fewer seeds)."""
    if not Path(root).is_dir():
        raise CisslError(f"no such folder: {root}")
    runs = []
    for path in sorted(Path(root).rglob(RESULTS)):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(result, dict) or not {"algorithm", "seed"} <= result.keys():
                raise ValueError("not a cissl results file")
        except (OSError, ValueError) as exc:
            if unreadable is not None:
                unreadable.append(f"{path} ({exc})")
            continue
        result["run_dir"] = str(path.parent)
        result["method"] = method_label(str(result["algorithm"]), path.parent)
        runs.append(result)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std; the std is None for a single run (one seed has no spread to report)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def table_setting(run: dict) -> str:
    """The setting cell of a run's row: runs evaluated on the validation split are never averaged with
    test-set numbers."""
    return run.get("setting", "") + (VALIDATION_SUFFIX if run.get("evaluated_on", "test") == "val" else "")


def _row_name(run: dict) -> str:
    return run.get("method", run["algorithm"])


def duplicate_seeds(runs: list[dict]) -> list[str]:
    """A line for each seed that more than one run directory brings to the same row (setting, method):
    such a row averages runs that are not repeats of one another."""
    where: dict[tuple[str, str, int], list[str]] = {}
    for run in runs:
        where.setdefault((table_setting(run), _row_name(run), run["seed"]), []).append(run.get("run_dir", "?"))
    return [f"{setting} / {name}: seed {seed} in {', '.join(dirs)}"
            for (setting, name, seed), dirs in sorted(where.items()) if len(dirs) > 1]


PAIRED = "paired.md"  # written beside results.md by --pair
NOT_RECORDED = "not recorded (runs from before 2026-12-02)"
MIXED_TITLE = ("The runs come from more than one machine or version of the code (runs repeat bit for bit only on "
               "one kind of machine with one code; compare and pair runs of one):")


def mixed_environments(runs: list[dict]) -> list[str]:
    """A line for each machine and each code version when the runs come from more than one of either
    (``environments`` of results.json; a run resumed elsewhere counts for each): one thread on one kind of
    processor repeats a run bit for bit, another kind or other code gives other last bits, so a paired
    difference between such runs holds more than the method's effect."""
    lines = []
    for what, describe in (("machine", machine_of), ("code", code_of)):
        count: dict[str, int] = {}
        for run in runs:
            for name in {describe(e) for e in run.get("environments") or []} or {NOT_RECORDED}:
                count[name] = count.get(name, 0) + 1
        if len(count) > 1:
            lines += [f"{what}: {name}: {counted(n, 'run')}" for name, n in sorted(count.items())]
    return lines


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (setting, method): seeds, mean and sample std (n - 1) of each column, wall time."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((table_setting(run), _row_name(run)), []).append(run)
    rows = []
    for (setting, algorithm), members in sorted(groups.items()):
        row = {"setting": setting, "algorithm": algorithm, "seeds": sorted(r["seed"] for r in members),
               "reported_head": members[0].get("reported_head", "main"),
               "wall_time_s": statistics.fmean(r.get("wall_time_s", 0.0) for r in members)}
        for key, _ in COLUMNS:
            values = [r[key] for r in members if r.get(key) is not None]
            row[key] = _mean_std(values) if values else None
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "n/a"
    mean, std = value
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def to_markdown(rows: list[dict]) -> str:
    header = ["setting", "algorithm", "seeds", *[title for _, title in COLUMNS], "min / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["setting"], row["algorithm"], " ".join(map(str, row["seeds"])),
                 *[_cell(row[key]) for key, _ in COLUMNS], f"{row['wall_time_s'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["setting", "algorithm", "seeds", "reported_head",
                     *[f"{key}_{stat}" for key, _ in COLUMNS for stat in ("mean", "std")], "wall_time_s"])
    for row in rows:
        stats = []
        for key, _ in COLUMNS:
            mean, std = row[key] if row[key] is not None else ("", "")
            stats.extend((mean, "" if std is None else std))
        writer.writerow([row["setting"], row["algorithm"], " ".join(map(str, row["seeds"])), row["reported_head"],
                         *stats, f"{row['wall_time_s']:.1f}"])
    return out.getvalue()


def values_by_row(runs: list[dict], key: str) -> dict[tuple[str, str], dict[int, float]]:
    """``key``'s value of each run by (setting cell, row name) and seed; runs without it are left out."""
    by_row: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        if run.get(key) is not None:
            by_row.setdefault((table_setting(run), _row_name(run)), {})[run["seed"]] = run[key]
    return by_row


def reference_row(reference: str) -> tuple[str, str] | None:
    """``SETTING:ALGORITHM`` as (setting, algorithm), split at the last ':' (a setting name may hold one, an
    algorithm name does not); None for a bare algorithm."""
    return tuple(reference.rsplit(":", 1)) if ":" in reference else None


def check_reference(by_row: dict[tuple[str, str], dict[int, float]], reference: str,
                    key: str = "balanced_accuracy") -> None:
    """An unknown ``SETTING:ALGORITHM`` (no row with ``key``), or an algorithm no setting ran, is one line
    naming the rows there are (an empty pairing would otherwise be written without a word)."""
    fixed = reference_row(reference)
    rows_here = ", ".join(f"{s}:{a}" for s, a in sorted(by_row)) or "none"
    if fixed is not None and fixed not in by_row:
        raise CisslError(f"--pair {reference}: no such row with {key}; the rows are {rows_here}")
    if fixed is None and all(algorithm != reference for _, algorithm in by_row):
        raise CisslError(f"--pair {reference}: no run of that algorithm with {key}; the rows are {rows_here}")


def pairs(by_row: dict[tuple[str, str], dict[int, float]], reference: str):
    """(setting, row name, reference's values, the row's values) for each row that ``reference`` pairs
    with: an algorithm pairs with the other rows of its own setting (the same split and streams);
    ``SETTING:ALGORITHM`` is one row paired with every row of every setting (for settings that share its
    split: a Table-5 ablation, a grid point). A reference without values in ``by_row`` pairs with nothing
    (:func:`check_reference` says when it names no row at all)."""
    fixed = reference_row(reference)
    for (setting, algorithm), values in sorted(by_row.items()):
        own = by_row.get(fixed) if fixed is not None else by_row.get((setting, reference))
        if (setting, algorithm) != (fixed or (setting, reference)) and own is not None:
            yield setting, algorithm, own, values


def paired_differences(runs: list[dict], reference: str, key: str = "balanced_accuracy") -> list[dict]:
    """``reference`` minus each other row (see ``pairs``), paired by seed: the seeds both ran, the mean
    difference and its sample std (None for one seed)."""
    by_row = values_by_row(runs, key)
    check_reference(by_row, reference, key)
    rows = []
    for setting, algorithm, own, values in pairs(by_row, reference):
        seeds = sorted(set(own) & set(values))
        if seeds:
            mean, std = _mean_std([own[s] - values[s] for s in seeds])
            rows.append({"setting": setting, "algorithm": algorithm, "seeds": seeds, "difference": (mean, std)})
    return rows


def paired_markdown(rows: list[dict], reference: str, key: str = "balanced_accuracy") -> str:
    lines = [f"| setting | {reference} minus | seeds | {key} difference (points) |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['setting']} | {row['algorithm']} | {' '.join(map(str, row['seeds']))} | "
                     f"{_cell(row['difference'])} |")
    return "\n".join(lines) + "\n"


def write_report(root: Path, pair_with: str | None = None) -> list[dict]:
    """Write ``results.md`` and ``results.csv`` for every run below ``root`` (and ``paired.md``,
    ``pair_with`` against every other algorithm, with it); returns the rows."""
    root = Path(root)
    unreadable: list[str] = []
    runs = collect_results(root, unreadable)
    for line in unreadable:
        print(f"cissl: warning: left out of the tables, unreadable: {line}", file=sys.stderr)
    duplicates = duplicate_seeds(runs)
    for line in duplicates:
        print(f"cissl: warning: one row holds two runs of the same seed: {line}", file=sys.stderr)
    mixed = mixed_environments(runs)
    for line in mixed:
        print(f"cissl: warning: the runs come from more than one {line}", file=sys.stderr)
    mixed_note = (MIXED_TITLE + "\n" + "".join(f"- {line}\n" for line in mixed) + "\n") if mixed else ""
    if pair_with is not None:
        note = (f"{pair_with} minus each algorithm, balanced accuracy, per seed on the same split; mean ± sample "
                f"std over the seeds both ran, in points.\n\n") + mixed_note
        atomic_write_text(root / PAIRED, note + paired_markdown(paired_differences(runs, pair_with), pair_with))
    rows = aggregate(runs)
    note = ("Mean ± sample std over seeds (no ± where one seed ran), in %; final EMA model on the test set, "
            "the algorithm's reported head (SeMi: balanced); settings marked (validation) were evaluated on the "
            "held-out validation split instead (train.evaluate_on: val). 'mean of last k' averages the last k "
            "evaluations of a run.\n\n")
    if unreadable:
        note += "Left out, unreadable:\n" + "".join(f"- {line}\n" for line in unreadable) + "\n"
    if duplicates:
        note += ("Rows that hold two runs of the same seed (they average runs that are not repeats; give each "
                 "variant its own folder):\n" + "".join(f"- {line}\n" for line in duplicates) + "\n")
    note += mixed_note
    atomic_write_text(root / "results.md", note + to_markdown(rows))
    atomic_write_text(root / "results.csv", to_csv(rows))
    return rows
