"""`cissl report --per-seed`: each row's value by seed, and the --pair row minus each row by seed and third."""

import json

import pytest
from conftest import run_cli
from helpers import assert_tables_well_formed

from cissl.errors import CisslError
from cissl.evaluation.per_seed import per_seed_markdown
from cissl.evaluation.report import aggregate, paired_differences, paired_markdown, to_markdown

# setting s: semi at seeds 0-1, fixmatch at seeds 0-2; setting t: fixmatch only. Thirds as given; None: not
# recorded (a run without class groups).
RUNS = [
    ("s", "semi", 0, 0.80, (0.60, 0.50, 0.90)), ("s", "semi", 1, 0.86, (0.70, 0.50, 0.90)),
    ("s", "fixmatch", 0, 0.70, (0.80, 0.40, None)), ("s", "fixmatch", 1, 0.80, (0.80, 0.40, None)),
    ("s", "fixmatch", 2, 0.90, (0.90, 0.80, None)), ("t", "fixmatch", 0, 0.50, (0.5, 0.5, 0.5)),
]


def _runs():
    return [{"setting": setting, "algorithm": algorithm, "seed": seed, "balanced_accuracy": balanced,
             "many_accuracy": many, "medium_accuracy": medium, "few_accuracy": few}
            for setting, algorithm, seed, balanced, (many, medium, few) in RUNS]


def _write(root):
    for run in _runs():
        path = root / run["setting"] / run["algorithm"] / f"seed{run['seed']}"
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps(run))


def test_values_by_seed_with_mean_and_sample_std():
    """fixmatch 70, 80, 90 -> 80.00 ± 10.00; semi 80, 86 and no seed 2 -> 83.00 ± 4.24 (sqrt 18); setting t
    lists its own seeds."""
    text = per_seed_markdown(_runs())
    assert "| algorithm | seed 0 | seed 1 | seed 2 | mean ± std |" in text
    assert "| fixmatch | 70.00 | 80.00 | 90.00 | 80.00 ± 10.00 |" in text
    assert "| semi | 80.00 | 86.00 | - | 83.00 ± 4.24 |" in text
    section_t = text.split("### t")[1]  # its own seeds (0 only), one run: no spread
    assert "| algorithm | seed 0 | mean ± std |" in section_t and "| fixmatch | 50.00 | 50.00 |" in section_t
    assert "minus" not in text  # no --pair, no differences


def test_reference_minus_each_row_by_seed_and_third():
    """semi − fixmatch: balanced +10, +6 -> +8.00 ± 2.83; many -20, -10 -> -15.00 ± 7.07; medium +10, +10
    -> +10.00 ± 0.00; few not recorded for fixmatch: no line; seed 2 (fixmatch only): '-'. Setting t has no
    semi: no differences there."""
    text = per_seed_markdown(_runs(), "semi")
    section_s, section_t = text.split("### t")
    assert "| semi minus | metric | seed 0 | seed 1 | seed 2 | mean ± std |" in section_s
    assert "| fixmatch | balanced acc. | +10.00 | +6.00 | - | +8.00 ± 2.83 |" in section_s
    assert "| fixmatch | many | -20.00 | -10.00 | - | -15.00 ± 7.07 |" in section_s
    assert "| fixmatch | medium | +10.00 | +10.00 | - | +10.00 ± 0.00 |" in section_s
    assert "| fixmatch | few |" not in section_s
    assert "| semi | balanced acc. |" not in section_s
    assert "minus" not in section_t


def test_cli_writes_per_seed_md_beside_paired_md_with_the_same_mean(tmp_path, capsys):
    _write(tmp_path)
    code, out, _ = run_cli(["report", tmp_path, "--pair", "semi", "--per-seed"], capsys)
    assert code == 0
    per_seed = (tmp_path / "per_seed.md").read_text()
    assert per_seed in out
    paired = (tmp_path / "paired.md").read_text()
    assert "| setting | semi minus | seeds | balanced_accuracy difference (points) |" in paired
    assert "| s | fixmatch | 0 1 | 8.00 ± 2.83 |" in paired
    assert "| fixmatch | balanced acc. | +10.00 | +6.00 | - | +8.00 ± 2.83 |" in per_seed


def test_fixed_reference_pairs_across_settings():
    """s:semi minus t's fixmatch: seed 0 only, 80 - 50 = +30.00 (one seed: no spread)."""
    text = per_seed_markdown(_runs(), "s:semi")
    assert "| fixmatch | balanced acc. | +30.00 | +30.00 |" in text.split("### t")[1]


def test_per_seed_with_out_is_one_line_error(tmp_path, capsys):
    _write(tmp_path)
    code, _, err = run_cli(["report", tmp_path, "--per-seed", "--out", tmp_path / "pages"], capsys)
    assert code == 2 and "--per-seed" in err and "--out" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "per_seed.md").exists()


def test_every_table_of_the_reports_is_well_formed():
    """The per-seed tables (values and differences, two settings with other seeds), results.md's and
    paired.md's, each with as many cells in every row as in its header."""
    runs = _runs()
    assert assert_tables_well_formed(per_seed_markdown(runs, "semi")) == 3
    assert assert_tables_well_formed(to_markdown(aggregate(runs))) == 1
    assert assert_tables_well_formed(paired_markdown(paired_differences(runs, "semi"), "semi")) == 1


def test_a_row_without_a_seed_in_common_with_the_reference_has_no_differences():
    """In setting u, semi ran seed 0 and fixmatch seed 1 only: nothing to pair, no line (and no error)."""
    runs = _runs() + [{"setting": "u", "algorithm": "semi", "seed": 0, "balanced_accuracy": 0.7},
                      {"setting": "u", "algorithm": "fixmatch", "seed": 1, "balanced_accuracy": 0.6}]
    section_u = per_seed_markdown(runs, "semi").split("### u")[1]
    assert "| fixmatch | - | 60.00 | 60.00 |" in section_u and "minus" not in section_u


def test_a_fixed_reference_whose_setting_name_holds_a_colon():
    """SETTING:ALGORITHM splits at the last ':' (algorithm names have none; a setting name may)."""
    runs = [{"setting": "grid:a", "algorithm": "semi", "seed": 0, "balanced_accuracy": 0.8},
            {"setting": "grid:a", "algorithm": "fixmatch", "seed": 0, "balanced_accuracy": 0.7}]
    assert "| fixmatch | balanced acc. | +10.00 | +10.00 |" in per_seed_markdown(runs, "grid:a:semi")


def test_a_fixed_reference_without_a_third_pairs_the_metrics_it_has():
    """Reference s:fixmatch, whose run recorded no 'few' (results from before the thirds): the other metrics
    pair, 'few' has no line; a reference row that does not exist is still the one-line error."""
    runs = [{"setting": "s", "algorithm": "semi", "seed": 0, "balanced_accuracy": 0.8, "many_accuracy": 0.9,
             "few_accuracy": 0.7},
            {"setting": "s", "algorithm": "fixmatch", "seed": 0, "balanced_accuracy": 0.7, "many_accuracy": 0.6}]
    text = per_seed_markdown(runs, "s:fixmatch")
    assert "| semi | balanced acc. | -10.00 | -10.00 |" in text and "| semi | many | -30.00 | -30.00 |" in text
    assert "| semi | few |" not in text
    with pytest.raises(CisslError, match="--pair s:supervised: no such row with balanced_accuracy"):
        per_seed_markdown(runs, "s:supervised")
    with pytest.raises(CisslError, match=r"^--pair supervised: no run of that algorithm with balanced_accuracy; "
                                         r"the rows are s:fixmatch, s:semi$"):
        per_seed_markdown(runs, "supervised")  # a plain algorithm no setting ran: not an empty pairing


def test_per_seed_md_line_by_line():
    """The whole file for RUNS with --pair semi: per setting a heading, the caption and table of values and,
    where the reference ran, the caption and table of differences, each set off by one blank line; one
    blank line between the settings and one newline at the end."""
    assert per_seed_markdown(_runs(), "semi").split("\n") == [
        "### s", "",
        "Balanced accuracy by seed, in %:", "",
        "| algorithm | seed 0 | seed 1 | seed 2 | mean ± std |",
        "|---|---|---|---|---|",
        "| fixmatch | 70.00 | 80.00 | 90.00 | 80.00 ± 10.00 |",
        "| semi | 80.00 | 86.00 | - | 83.00 ± 4.24 |", "",
        "semi minus each, by seed, in points (mean ± sample std over the seeds both ran; '-': not both ran):", "",
        "| semi minus | metric | seed 0 | seed 1 | seed 2 | mean ± std |",
        "|---|---|---|---|---|---|",
        "| fixmatch | balanced acc. | +10.00 | +6.00 | - | +8.00 ± 2.83 |",
        "| fixmatch | many | -20.00 | -10.00 | - | -15.00 ± 7.07 |",
        "| fixmatch | medium | +10.00 | +10.00 | - | +10.00 ± 0.00 |", "",
        "### t", "",
        "Balanced accuracy by seed, in %:", "",
        "| algorithm | seed 0 | mean ± std |",
        "|---|---|---|",
        "| fixmatch | 50.00 | 50.00 |", ""]
