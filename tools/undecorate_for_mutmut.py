"""Rewrite decorated functions as plain ones wrapped after their definition, so that mutmut mutates them.

mutmut 3 leaves every decorated function alone (``@staticmethod`` and ``@classmethod`` apart): in this package
that is each ``@torch.no_grad()`` update (the memory bank's push, sample, prototypes and decay, the entropy
weights, the prototype pseudo-labels, DARP's solver, DASO's queue, the EMA), each ``@contextmanager`` and each
``@property``. In a clone made for mutation testing (never in the project itself) this turns::

    @torch.no_grad()
    def push(self, features, labels):
        ...

into the same function followed by ``push = torch.no_grad()(push)``, which is what the decorator does, so
that mutmut's trampoline takes the function's place and is wrapped as before. Property setters and
deleters (``@x.setter``) keep their decorator: their function has the property's name.

Usage, from the root of a clone, before ``mutmut run`` (or mutmut's mutant generation)::

    python tools/undecorate_for_mutmut.py src/cissl/algorithms/components/memory_bank.py ...
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cissl.wording import counted

KEPT = ("staticmethod", "classmethod")


def _kept(decorator: ast.expr) -> bool:
    """Decorators mutmut handles itself (it mutates those functions) or that cannot move (a setter)."""
    if isinstance(decorator, ast.Name) and decorator.id in KEPT:
        return True
    return isinstance(decorator, ast.Attribute) and decorator.attr in ("setter", "deleter")


def _mutmut_skips(node: ast.AST) -> bool:
    return (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and bool(node.decorator_list)
            and not all(_kept(d) for d in node.decorator_list))


def undecorate(source: str) -> str:
    """``source`` with each decorated function of the module or of a class at module level written as the
    plain function and an assignment that applies the decorators to it (outermost first, as Python does)."""
    return _undecorate(source)[0]


def _undecorate(source: str) -> tuple[str, int]:
    """The rewritten source and how many functions were rewritten."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = [node for node in tree.body if _mutmut_skips(node)]
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        found += [node for node in cls.body if _mutmut_skips(node)]
    for node in sorted(found, key=lambda n: n.lineno, reverse=True):  # bottom up: earlier line numbers hold
        first = min(d.lineno for d in node.decorator_list) - 1
        if any(_kept(d) for d in node.decorator_list):
            raise ValueError(f"line {first + 1}: {node.name} mixes a decorator mutmut skips with "
                             f"staticmethod, classmethod or a setter; rewrite it by hand")
        indent = " " * node.col_offset
        wrapped = node.name
        for decorator in reversed(node.decorator_list):
            wrapped = f"{ast.unparse(decorator)}({wrapped})"
        lines.insert(node.end_lineno, f"{indent}{node.name} = {wrapped}\n")
        del lines[first:node.lineno - 1]
    return "".join(lines), len(found)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[0], "\nusage: python tools/undecorate_for_mutmut.py FILE.py ...",
              file=sys.stderr)
        return 2
    for path in map(Path, paths):
        rewritten, count = _undecorate(path.read_text())
        path.write_text(rewritten)
        print(f"{path}: {counted(count, 'decorated function')} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
