"""Methods, parts, backbones and data sets from the user's own modules: the config key ``plugins``.

A plugin is a module that registers algorithms, pseudo-label refiners or auxiliary heads the way the
modules of :mod:`cissl.algorithms` do, backbones (:func:`cissl.models.register_backbone`) or data sets
(:func:`cissl.data.sources.register_source`) (``docs/algorithms.md``), kept outside the package: a ``.py`` file
(a relative path is read from the folder of the config file that names it, or from the working directory
on the command line) or the name of a module Python can import where cissl runs (an installed package,
or one on ``PYTHONPATH``). :func:`cissl.config.load_config` imports the plugins before it reads any
``algorithm``, ``model`` or ``data`` section, and a run's saved ``config.yaml`` lists them with absolute
paths, so a resume, an evaluation, a prediction, every worker of a sweep and every torchrun rank imports
them again. Each is imported once per process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from cissl.algorithms.registry import ALGORITHMS, AUX_HEADS, REFINERS
from cissl.data.sources import SOURCES
from cissl.errors import ConfigError
from cissl.models import BACKBONES

KEY = "plugins"
_LOADED: dict[str, str] = {}  # module name -> the plugins entry that imported it, in this process


def plugin_entries(value: Any) -> list[str]:
    """The config value as a list of entries: a list of strings, or one string alone."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"config key '{KEY}': expected a list of .py files or module names, got {value!r}")
    return list(value)


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py")


def resolve_plugins(value: Any, base: Path) -> Any:
    """The entries with each relative ``.py`` path made absolute against ``base`` (a config file's folder,
    or the working directory for a command-line override); None or a value of the wrong type is returned as
    it is, for the config check to name."""
    try:
        entries = plugin_entries(value)
    except ConfigError:
        return value
    if value is None:
        return None
    return [os.path.abspath(Path(base, os.path.expanduser(entry))) if is_file_entry(entry) else entry
            for entry in entries]


def import_plugins(value: Any) -> list[ModuleType]:
    """Import each plugin (once per process) and return the modules. A plugin that cannot be found or
    fails while it is imported is one line naming it, and what it had registered is taken back."""
    return [_import_one(entry) for entry in plugin_entries(value)]


REGISTRIES = (ALGORITHMS, REFINERS, AUX_HEADS)  # schema.Registry: a name -> class, config and preset
TABLES = (BACKBONES, SOURCES)  # name -> builder / data set facts


def registrations() -> tuple[list[set[str]], list[set[str]]]:
    """The names registered now in every registry and table a plugin may add to (methods, parts, backbones,
    data sets): a snapshot for :func:`take_back`."""
    return [set(registry.names()) for registry in REGISTRIES], [set(table) for table in TABLES]


def take_back(snapshot: tuple[list[set[str]], list[set[str]]]) -> None:
    """Unregister every name registered since ``snapshot`` (:func:`registrations`)."""
    names, tables = snapshot
    for registry, before in zip(REGISTRIES, names):
        for added in set(registry.names()) - before:
            registry.unregister(added)
    for table, before in zip(TABLES, tables):
        for added in set(table) - before:
            del table[added]


def _module_name(path: Path) -> str:
    """A module name of its own for a plugin file (two files of one name in different folders stay apart)."""
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"cissl_plugin_{stem}_{digest}"


def _import_one(entry: str) -> ModuleType:
    if is_file_entry(entry):
        path = Path(os.path.abspath(entry))  # as configs spell it (resolve_plugins); its module by the real file
        name = _module_name(path.resolve())
        if name in sys.modules:
            return sys.modules[name]
        if not path.is_file():
            raise ConfigError(f"config key '{KEY}': no such file {path}")
    elif entry in sys.modules:
        return sys.modules[entry]
    before = registrations()
    try:
        if is_file_entry(entry):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            _LOADED[name] = str(path)
        else:
            module = importlib.import_module(entry)
            _LOADED[entry] = entry
        return module
    except Exception as exc:
        take_back(before)
        if isinstance(exc, ModuleNotFoundError) and (entry == exc.name or entry.startswith(f"{exc.name}.")):
            raise ConfigError(f"config key '{KEY}': cannot import {entry!r} ({exc}); give a .py file, or a module "
                              f"Python imports here (installed, or on PYTHONPATH)") from None
        raise ConfigError(f"config key '{KEY}': importing {entry} failed: {type(exc).__name__}: {exc}"
                          f"{_where(exc)}") from exc


def plugin_of(module_name: str) -> str | None:
    """The plugins entry whose import defined the module ``module_name`` (or a module inside that package),
    or None for a module no plugin brought (cissl's own, or one imported by the user's script)."""
    for name, entry in _LOADED.items():
        if module_name == name or module_name.startswith(f"{name}."):
            return entry
    return None


def _where(exc: BaseException) -> str:
    """`` (file, line N)`` of the innermost frame of the error (a syntax error: where it was found)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def plugin_digests(value: Any) -> dict[str, str]:
    """Entry -> the first 12 hex digits of the SHA-256 of its source file (of a module: its ``__file__``), for
    a run's record of the code it ran (:func:`cissl.environment.describe_environment`)."""
    out = {}
    for entry, module in zip(plugin_entries(value), import_plugins(value)):
        source = getattr(module, "__file__", None)  # a module built into Python has none
        out[entry] = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:12] if source else "unknown"
    return out
