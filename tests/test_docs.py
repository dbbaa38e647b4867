"""The README, docs/ and benchmarks/RESULTS.md against the code: every ``cissl ...`` line in a code block
parses with the CLI's parser, and where it names config files, the configs with its algorithm, grid and
overrides validate (as the command would check them before running anything); the config keys, module
names, paths and extras the docs name exist; their markdown tables are well formed."""

import re
import shlex

import pytest
from conftest import REPO, pyproject
from helpers import assert_tables_well_formed, parser_commands

from cissl.cli import parse_args
from cissl.config import load_config
from cissl.errors import CisslError
from cissl.sweep import plan

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
COMMAND = re.compile(r"(?:^|\s)(?:cissl|-m cissl)\s+(.*)")


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line) of every cissl command in a fenced code block, continuation lines joined;
    left out: lines with a shell variable or a ``[optional]`` synopsis (not runnable as written)."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                    part = part.strip().strip("()").strip()
                    match = COMMAND.search(part)
                    if match and not part.startswith("#") and "$" not in part and " [" not in part:
                        found.append((path.relative_to(REPO).as_posix(), match.group(1)))
    return found


def check_command(argv: list[str], capsys) -> str | None:
    """What is wrong with ``cissl argv`` (None: nothing): the CLI's parsing verdict, then the configs'."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        printed = capsys.readouterr()
        return None if exc.code == 0 else printed.err.strip().splitlines()[-1]  # 0: --version; else argparse's line
    overrides = getattr(args, "overrides", None) or []
    try:
        if getattr(args, "configs", None):  # cissl sweep: every job of the grid is validated up front
            plan(args.configs, args.algorithms, args.seeds, REPO / "unused", overrides, args.grid)
        elif (getattr(args, "config", None) or "").endswith(".yaml"):  # not a placeholder such as FILE
            load_config(args.config, overrides, args.algorithm)
    except CisslError as exc:
        return str(exc)
    return None


def test_every_documented_command_parses_and_its_configs_validate(monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the docs' config paths are relative to the checkout
    commands = documented_commands()
    assert len(commands) >= 60, f"only {len(commands)} commands found: the extraction broke"
    assert any(argv.startswith("sweep --configs") for _, argv in commands)
    wrong = [f"{path}: cissl {argv} -> {why}" for path, argv in commands
             if (why := check_command(shlex.split(argv), capsys)) is not None]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("argv, why", [
    ("train --config configs/quickstart.yaml --algorithm no_such_method", "no_such_method"),
    ("train --config configs/quickstart.yaml optim.lrr=0.1", "optim.lrr"),
    ("report runs --per-seeds", "unrecognized arguments"),
    ("report runs --pair semi train.iterations=5", "unrecognized arguments: train.iterations=5"),  # takes none
    ("report", "the following arguments are required: DIR"),
    ("", "the following arguments are required: command"),  # no command: a usage error, not a traceback
    ("data", "the following arguments are required: data"),
    ("bench", "the following arguments are required: bench"),
    ("data build-imagenet127 --source s --size 48 --out o", "argument --size: invalid choice: 48 (choose from 32, 64)"),
    ("bench throughput --config configs/quickstart.yaml --device tpu", "argument --device: invalid choice: 'tpu'"),
    ("bench throughput --config configs/quickstart.yaml --device cpu", None),
    ("bench throughput --config configs/quickstart.yaml --device cuda", None),
    ("sweep --configs configs/quickstart.yaml --grid optim.lr=0.1,fast --out x", "optim.lr"),
    ("split --config configs/quickstart.yaml --counts-only", None),
])
def test_a_wrong_command_is_caught(monkeypatch, capsys, argv, why):
    monkeypatch.chdir(REPO)
    verdict = check_command(shlex.split(argv), capsys)
    assert (verdict is None) if why is None else (why in verdict)


# each command's required options, written out: without one, argparse's usage error, not a run on defaults
REQUIRED = [("predict r --images x.png", "--images"), ("split --config Q", "--config"),
            ("bench throughput --config Q", "--config"), ("sweep --configs Q --out o", "--out"),
            ("data build-imagenet127 --source s --size 32 --out o", "--source"),
            ("data build-imagenet127 --source s --size 32 --out o", "--size"),
            ("data build-imagenet127 --source s --size 32 --out o", "--out")]


@pytest.mark.parametrize("argv, option", REQUIRED)
def test_a_command_without_a_required_option_is_a_usage_error(argv, option, capsys):
    words = shlex.split(argv)
    at = words.index(option)
    assert parse_args(words) is not None  # whole, it parses
    with pytest.raises(SystemExit) as stop:
        parse_args(words[:at] + words[at + 2:])
    assert stop.value.code == 2 and f"the following arguments are required: {option}" in capsys.readouterr().err


def test_every_extra_is_named_in_the_readme():
    extras = pyproject()["project"]["optional-dependencies"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("Optional extras:"):].split("\n\n")[0]
    assert sorted(e for e in extras if f"`{e}`" not in paragraph) == []


def test_the_readmes_synopsis_names_every_command_and_every_option_of_it():
    """README's "Runs" block lists the commands; one the parser has but the block leaves out (as
    estimate-distribution and data build-imagenet127 were) is a command a reader never learns of."""
    from cissl.cli import build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    synopsis = readme[readme.index("## Runs"):].split("```text\n")[1].split("```")[0].splitlines()
    missing = []
    for name, parser in parser_commands(build_parser()).items():
        command = f"cissl {name}"
        lines = [line for line in synopsis if line.startswith(command + " ") or line == command]
        options = sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help")
        if not lines:
            missing.append(command)
        missing += [f"{command} {option}" for option in options if not any(option in line for line in lines)]
    assert missing == []


def test_every_markdown_table_of_the_docs_is_well_formed():
    """Outside code blocks, every block of lines starting with '|' is a table: a header, a separator row
    of '---' cells (':' for alignment) and as many cells in every row (a blank line inside a table cuts
    its rows off; a prose line starting with '|' is no table)."""
    tables = sum(assert_tables_well_formed(path.read_text(encoding="utf-8"), r"\s*:?-{3,}:?\s*", f"{path.name}: ")
                 for path in DOCS)
    assert tables >= 60


def test_every_module_and_name_the_docs_cite_exists():
    """`cissl.a.b.Name` and `src/cissl/...` paths quoted in the README and docs/ name what is there."""
    import importlib

    missing, cited = [], 0
    for path in DOCS[:-1]:  # RESULTS.md quotes the code of earlier commits
        text = path.read_text(encoding="utf-8")
        for name in sorted(set(re.findall(r"`(cissl(?:\.\w+)+)`", text))):
            cited += 1
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):
                try:
                    target = importlib.import_module(".".join(parts[:cut]))
                    break
                except ImportError:
                    continue
            for attribute in parts[cut:]:
                target = getattr(target, attribute, None)
            if target is None:
                missing.append(f"{path.name}: {name}")
        for file in sorted(set(re.findall(r"`(src/cissl/[\w/.]+)`", text))):
            cited += 1
            if not (REPO / file).exists():
                missing.append(f"{path.name}: {file}")
    assert cited >= 10 and not missing, missing


def test_every_config_key_the_docs_name_exists():
    """`data.image_size`, `algorithm.refiner.period`, ... anywhere in the docs (prose, tables, commands) is
    a key of the config or of some method's config (a renamed key leaves no stale name behind)."""
    from cissl.algorithms import ALGORITHMS
    from cissl.config import Config, algorithm_defaults
    from cissl.schema import describe

    keys = {key for key, _, _ in describe(Config)}
    for name in ALGORITHMS.names():
        defaults = algorithm_defaults(name)
        keys |= {f"algorithm.{key}" for key, _, _ in describe(type(defaults), instance=defaults)}
    pattern = re.compile(r"(?<![\w./-])((?:data|model|optim|augment|train|algorithm)\.[a-z_]+(?:\.[a-z_0-9]+)*)")
    named, unknown = 0, set()
    for path in DOCS:
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            key = match.group(1)
            named += 1
            if key not in keys and not any(k.startswith(f"{key}.") for k in keys):
                unknown.add(f"{path.name}: {key}")
    assert named >= 100 and not unknown, sorted(unknown)
