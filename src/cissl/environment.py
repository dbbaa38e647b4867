"""Where a run was computed: the code, the libraries and the machine.

Floating-point results depend on all of them: one thread on one kind of processor gives the same run
every time, another kind of processor gives other last bits from the same code (benchmarks/RESULTS.md,
section 3). A run records them in ``results.json`` (``environments``), and ``cissl report`` says when a
table mixes runs from different machines or code, so that nobody pairs such runs unknowingly.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import cissl

if TYPE_CHECKING:
    import torch

CPUINFO_FIELDS = ("model name", "cpu family", "model", "stepping", "cache size")


def processor_name(cpuinfo: str | None = None) -> str:
    """The CPU as /proc/cpuinfo describes its first core: model name, then family / model / stepping and
    cache size (one model name can cover processors that compute other bits); ``platform`` elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first core's block ends here
        key, _, value = line.partition(":")
        if key.strip() in CPUINFO_FIELDS:
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown processor"
    detail = ", ".join(f"{key} {fields[key]}" for key in CPUINFO_FIELDS[1:] if key in fields)
    return f"{name} ({detail})" if detail else name


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's (:func:`processor_name`) with the number of PyTorch threads."""
    import torch  # here, not above: cissl report reads environments without loading PyTorch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{processor_name()}, {torch.get_num_threads()} threads"


def source_commit(package_dir: Path | None = None) -> str | None:
    """The git commit that last changed the package's files in the checkout it was imported from (``+dirty``
    when its files differ from that commit; commits that touch only other files, such as documentation, do
    not change it), or None when it is not a git checkout (an installed wheel: then the version names it)."""
    package_dir = Path(package_dir or Path(cissl.__file__).parent)
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        if not git("ls-files", "--", "__init__.py"):
            return None  # inside some repository that does not track this package (e.g. a venv in a project)
        commit = git("log", "-1", "--format=%h", "--abbrev=12", "--", ".")  # its last change, not HEAD's docs
        dirty = git("status", "--porcelain", "--untracked-files=normal", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def describe_environment(device: torch.device, plugins: dict[str, str] | None = None) -> dict:
    """The code, libraries and machine a run computes on now (a ``results.json`` ``environments`` entry); a
    run with plugins (the config key) also records them, each with its source's digest
    (:func:`cissl.plugins.plugin_digests`)."""
    import torch

    return {
        "cissl": cissl.__version__,
        "code": source_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion, which a weights-only checkpoint load refuses
        "processor": processor_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    } | ({"plugins": dict(plugins)} if plugins else {})


# what, besides the code, the bits of a run depend on
MACHINE_KEYS = ("torch", "processor", "cpu_capability", "threads", "gpu")


def machine_of(environment: dict) -> str:
    """One line naming what, besides the code, decides a run's last bits."""
    return "; ".join(f"{key} {environment[key]}" for key in MACHINE_KEYS if environment.get(key) is not None)


def code_of(environment: dict) -> str:
    """One line naming the code: the git commit where known, else the release; then each plugin's digest."""
    plugins = environment.get("plugins") or {}
    return (environment.get("code") or f"cissl {environment.get('cissl')}") + "".join(
        f" + {Path(entry).name} {digest}" for entry, digest in plugins.items())


def changes(before: dict, now: dict) -> list[str]:
    """What decides a run's last bits and differs from ``before`` to ``now``: "threads 1 -> 2", the code,
    the processor, ... (a key one of them lacks was not recorded: not a change; a GPU run's CPU threads
    neither)."""
    on_gpu = before.get("gpu") is not None and now.get("gpu") is not None  # the CPU's threads do not compute it
    pairs = [(key, before[key], now[key]) for key in MACHINE_KEYS
             if key in before and key in now and not (on_gpu and key == "threads")]
    pairs.append(("code", code_of(before), code_of(now)))
    return [f"{key} {a} -> {b}" for key, a, b in pairs if a != b]
