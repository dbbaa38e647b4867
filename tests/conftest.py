import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pyproject() -> dict:
    """The checkout's pyproject.toml, parsed (tomllib from Python 3.11, else tomli: the dev extra has it)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def repo():
    return REPO


@pytest.fixture(autouse=True)
def registries_restored():
    """What a test's plugins register is taken back afterwards and their modules forgotten (a documented
    command, an example or a plugin test imports one in this process), so every test sees cissl's own
    methods only and a later import of the same plugin registers afresh."""
    from cissl import plugins

    before, loaded = plugins.registrations(), dict(plugins._LOADED)
    yield
    plugins.take_back(before)
    for name in [name for name in sys.modules if name.startswith(("cissl_plugin_", "toy_plugins_pkg"))]:
        del sys.modules[name]
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)


def run_cli(args, capsys):
    """Run the cissl CLI in-process; returns (exit code, stdout, stderr)."""
    from cissl.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


sys.path.insert(0, str(Path(__file__).parent))
