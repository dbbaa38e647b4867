"""The project's own shape: CI runs the README's test command (which prints its summary); no import cycles."""

import ast
import re

from conftest import REPO, pyproject


def test_ci_runs_the_readme_test_command_and_pytest_prints_a_summary():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    readme_commands = set(re.findall(r"python -m pytest[^\n`&]*", readme))
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("python -m pytest")]
    assert len(ci_commands) == 1 and ci_commands[0] in {c.strip() for c in readme_commands}
    addopts = pyproject()["tool"]["pytest"]["ini_options"].get("addopts", "")
    quiet = (addopts.split() + ci_commands[0].split()).count("-q")
    assert quiet <= 1, "-qq hides pytest's 'N passed' summary line"


def cissl_import_graph() -> dict[str, set[str]]:
    """module -> the cissl modules it imports anywhere in its text (function-level imports included),
    read from the source with ``ast``; ``from cissl.a import b`` points at ``cissl.a.b`` when that is a
    module, else at ``cissl.a``."""
    src = REPO / "src"
    modules = {}
    for path in (src / "cissl").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_inside_cissl():
    graph = cissl_import_graph()
    assert "cissl.config" in graph and "cissl.schema" in graph["cissl.config"]  # the parser sees imports
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_schema_depends_on_nothing_but_errors_and_yaml():
    assert cissl_import_graph()["cissl.schema"] <= {"cissl.errors", "cissl.yamlio"}


# what a run is made of, below the engine that assembles and runs it (and the commands above that)
PARTS = ("cissl.algorithms", "cissl.data", "cissl.models", "cissl.evaluation")
RUNNERS = ("cissl.engine", "cissl.sweep", "cissl.cli", "cissl.api", "cissl.bench")


def test_the_parts_of_a_run_never_import_what_runs_them():
    """Methods, data, models and evaluation are used by the engine and the commands, never the other way:
    a method does not build data, optimizers or loggers, and the report gets a loaded run's features
    handed in (cissl.engine.run.features_on_test_set), so each part is usable and testable on its own."""
    graph = cissl_import_graph()
    upward = sorted((module, target) for module, targets in graph.items() for target in targets
                    if module.startswith(PARTS) and target.startswith(RUNNERS))
    assert upward == []
    assert ("cissl.engine.run", "cissl.evaluation.evaluate") in {(m, t) for m, ts in graph.items() for t in ts}
