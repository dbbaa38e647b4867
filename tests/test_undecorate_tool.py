"""tools/undecorate_for_mutmut.py: decorated functions become plain ones that mutmut mutates, wrapped the same."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from undecorate_for_mutmut import main, undecorate  # noqa: E402

SAMPLE = '''\
from contextlib import contextmanager
import torch


def tag(label):
    def wrap(fn):
        return lambda *a: f"{label}({fn(*a)})"
    return wrap


@contextmanager
def opened(log):
    log.append("in")
    yield len(log)
    log.append("out")


@tag("outer")
@tag("inner")
def named(x):
    return x


class Holder:
    def __init__(self):
        self._value = 1

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, new):
        self._value = new * 10

    @staticmethod
    def kept():
        return "static"

    @torch.no_grad()
    def doubled(self, t):
        return t * 2
'''


def test_each_decorator_is_applied_after_its_function_in_the_same_order():
    rewritten = undecorate(SAMPLE)
    assert "opened = contextmanager(opened)\n" in rewritten
    assert "named = tag('outer')(tag('inner')(named))\n" in rewritten
    assert "    value = property(value)\n\n    @value.setter\n" in rewritten  # the setter keeps its decorator
    assert "    @staticmethod\n    def kept():" in rewritten
    assert "    doubled = torch.no_grad()(doubled)\n" in rewritten
    assert "@contextmanager" not in rewritten and "@tag" not in rewritten and "@torch.no_grad" not in rewritten


def test_the_rewritten_module_behaves_as_the_decorated_one():
    results = []
    for source in (SAMPLE, undecorate(SAMPLE)):
        namespace = {}
        exec(compile(source, "<sample>", "exec"), namespace)
        log = []
        with namespace["opened"](log) as entered:
            log.append(entered)
        holder = namespace["Holder"]()
        holder.value = 3
        doubled = holder.doubled(torch.ones(2, requires_grad=True))
        results.append((log, namespace["named"](5), holder.value, holder.kept(), doubled.requires_grad,
                        doubled.tolist()))
    assert results[0] == results[1] == (["in", 1, "out"], "outer(inner(5))", 30, "static", False, [2.0, 2.0])


def test_a_setter_given_another_decorator_too_is_refused():
    source = "class A:\n    @property\n    def x(self):\n        return 1\n\n    @x.setter\n    @torch.no_grad()\n" \
             "    def x(self, v):\n        pass\n"
    with pytest.raises(ValueError, match="line 6: x mixes a decorator mutmut skips"):
        undecorate(source)


def test_the_package_rewritten_imports_with_the_same_kinds_of_attributes(tmp_path):
    """Every module of src/cissl rewritten in a copy: the same module and class attributes, each of the same type
    (a property stays a property, a no_grad function a function), and no function left that mutmut skips."""
    shutil.copytree(ROOT / "src" / "cissl", tmp_path / "cissl")
    files = sorted(map(str, (tmp_path / "cissl").rglob("*.py")))
    assert main(files) == 0
    for path in files:
        assert "@torch.no_grad()" not in Path(path).read_text(), path
    probe = r'''
import importlib, inspect, json, pkgutil, sys
import cissl
kinds = {}
for info in pkgutil.walk_packages(cissl.__path__, "cissl."):
    if info.name.endswith(".__main__"):  # runs the command line
        continue
    module = importlib.import_module(info.name)
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != info.name:
            continue
        kinds[f"{info.name}.{name}"] = type(value).__name__
        if inspect.isclass(value):
            for attr, member in vars(value).items():
                kinds[f"{info.name}.{name}.{attr}"] = type(member).__name__
print(json.dumps(kinds))
'''
    seen = []
    for root in (ROOT / "src", tmp_path):
        run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                             env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
        assert run.returncode == 0, run.stderr[-2000:]
        seen.append(json.loads(run.stdout))
    assert seen[0] == seen[1]
    assert seen[1]["cissl.algorithms.components.memory_bank.MemoryBank.push"] == "function"
    assert seen[1]["cissl.algorithms.fixmatch.FixMatch.ema_model"] == "property"
