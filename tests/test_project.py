"""The project's own shape: CI runs the README's test command, and that command prints its summary."""

import re

import tomllib
from conftest import REPO


def test_ci_runs_the_readme_test_command_and_pytest_prints_a_summary():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    readme_commands = set(re.findall(r"python -m pytest[^\n`&]*", readme))
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("python -m pytest")]
    assert len(ci_commands) == 1 and ci_commands[0] in {c.strip() for c in readme_commands}
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("addopts", "")
    quiet = (addopts.split() + ci_commands[0].split()).count("-q")
    assert quiet <= 1, "-qq hides pytest's 'N passed' summary line"
