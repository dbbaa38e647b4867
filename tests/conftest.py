import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def repo():
    return REPO


def run_cli(args, capsys):
    """Run the cissl CLI in-process; returns (exit code, stdout, stderr)."""
    from cissl.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


sys.path.insert(0, str(Path(__file__).parent))
