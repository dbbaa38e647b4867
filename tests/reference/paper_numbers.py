"""Write src/cissl/evaluation/data/paper_numbers.json from the SeMi paper's tables as transcribed in
../shared/paper/tables.md (Tables 1-3): the paper's top-1 (mean, std of 3 runs) per (setting, method),
keyed by our config's setting name and our preset name, for the paper columns of `cissl report`.

    python tests/reference/paper_numbers.py ../shared/paper/tables.md src/cissl/evaluation/data/paper_numbers.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

COLUMNS = {  # the tables' column titles -> our settings
    "C10 γ100 500": "cifar10_lt/consistent_n500_m4000_g100", "C10 γ100 1500": "cifar10_lt/consistent_n1500_m3000_g100",
    "C10 γ150 500": "cifar10_lt/consistent_n500_m4000_g150", "C10 γ150 1500": "cifar10_lt/consistent_n1500_m3000_g150",
    "C100 γ10 50": "cifar100_lt/consistent_n50_m400_g10", "C100 γ10 150": "cifar100_lt/consistent_n150_m300_g10",
    "C100 γ20 50": "cifar100_lt/consistent_n50_m400_g20", "C100 γ20 150": "cifar100_lt/consistent_n150_m300_g20",
    "C10 uniform 500/4000": "cifar10_lt/uniform_n500_m4000_g100",
    "C10 uniform 1500/3000": "cifar10_lt/uniform_n1500_m3000_g100",
    "C10 reversed 500/4000": "cifar10_lt/reversed_n500_m4000_g100",
    "C10 reversed 1500/3000": "cifar10_lt/reversed_n1500_m3000_g100",
    "STL γl10 N150": "stl10_lt/n150_g10", "STL γl10 N450": "stl10_lt/n450_g10",
    "STL γl20 N150": "stl10_lt/n150_g20", "STL γl20 N450": "stl10_lt/n450_g20",
    "uniform N1 50/M1 400": "cifar100_lt/uniform_n50_m400_g10", "uniform 150/300": "cifar100_lt/uniform_n150_m300_g10",
    "reversed 50/400": "cifar100_lt/reversed_n50_m400_g10", "reversed 150/300": "cifar100_lt/reversed_n150_m300_g10",
}
ROWS = {  # the tables' row labels -> our presets (methods not in cissl yet keep a name for when they land)
    "Supervised": "supervised", "Supervised w/ LA": "supervised_la", "FixMatch": "fixmatch",
    "w/ DARP": "fixmatch_darp", "w/ DASO": "fixmatch_daso", "w/ CReST+": "fixmatch_crest_plus",
    "w/ CReST": "fixmatch_crest", "w/ BEM": "fixmatch_bem", "w/ SEVAL": "fixmatch_seval",
    "FixMatch + LA": "fixmatch_la", "+ LA w/ DARP": "fixmatch_la_darp", "+ LA w/ DASO": "fixmatch_la_daso",
    "+ LA w/ CReST+": "fixmatch_la_crest_plus", "+ LA w/ BEM": "fixmatch_la_bem", "FixMatch + ABC": "fixmatch_abc",
    "+ ABC w/ DASO": "fixmatch_abc_daso", "SeMi": "semi",
}
CELL = re.compile(r"([0-9.]+)±([0-9.]+)")


def parse(text: str) -> dict[str, dict[str, list[float]]]:
    numbers: dict[str, dict[str, list[float]]] = {}
    header = None
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            if not line.startswith("|"):
                header = None
            continue
        cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if header[0] != "method" or not all(title in COLUMNS for title in header[1:]):
            continue
        method = ROWS[cells[0]]
        for title, cell in zip(header[1:], cells[1:]):
            match = CELL.search(cell)
            if match:
                numbers.setdefault(COLUMNS[title], {})[method] = [float(match.group(1)), float(match.group(2))]
    return numbers


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    numbers = parse(source.read_text(encoding="utf-8"))
    note = ("The SeMi paper's Tables 1-3, top-1 % as [mean, std] of its 3 runs, by setting and method; written by "
            "tests/reference/paper_numbers.py from the transcription of the paper's tables. The paper's numbers, "
            "never ours.")
    target.write_text(json.dumps({"note": note, "numbers": numbers}, indent=1, sort_keys=True) + "\n")
    print(f"{sum(map(len, numbers.values()))} cells of {len(numbers)} settings -> {target}")


if __name__ == "__main__":
    main()
