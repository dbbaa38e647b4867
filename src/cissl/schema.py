"""The config schema: typed, frozen dataclass sections with validated options, and registries.

Dependency-free (standard library, ``cissl.errors`` and ``cissl.yamlio``), so that every part of
cissl (algorithms, their parts, data sources, backbones) can declare its options without importing
the code that reads configs.

- :func:`option` declares a field with its default, range or choices and help text;
- :func:`section` declares a nested section with its own defaults;
- :func:`choice` declares a section whose class is chosen by name from a :class:`Registry`
  (``algorithm: {name: semi, ...}``, ``refiner: darp`` or ``refiner: {name: darp, period: 10}``),
  the chosen entry's preset giving its defaults;
- :func:`build_section` builds and validates a section from a plain mapping; an unknown key, a
  wrong type or an out-of-range value raises :class:`ConfigError` naming the key and what is allowed;
- :func:`describe` lists every key with its default and help, for docs and ``cissl list``;
- :func:`add_entry` and :func:`first_doc_line` serve every name -> entry table (a :class:`Registry`, the
  backbones, the data sets): one check for a name registered twice, one ``cissl list`` summary from a docstring.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from cissl import yamlio
from cissl.errors import ConfigError


def option(default, *, min=None, max=None, choices=None, min_exclusive=False, help: str = ""):
    """A dataclass field with the metadata that :func:`build_section` validates. ``choices`` may be a live
    table (a dict such as ``BACKBONES``): a value is checked against what it holds when the config is built."""
    meta = {"min": min, "max": max, "choices": choices, "min_exclusive": min_exclusive, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls):
    """A nested config section with its own defaults."""
    return field(default_factory=cls)


@dataclass(frozen=True)
class NamedConfig:
    """Base of a section chosen by name from a registry (an algorithm, a pseudo-label refiner, ...)."""

    name: str = option("", help="which entry of the registry")


@dataclass(frozen=True)
class AlgorithmConfig(NamedConfig):
    """Base of every algorithm's config; subclasses add their hyperparameters."""

    name: str = option("fixmatch", help="algorithm name (see `cissl list`)")


def add_entry(table: dict, kind: str, name: str, value: Any) -> None:
    """``table[name] = value``, refusing a name already there (``ValueError``: "<kind> '<name>' registered
    twice")."""
    if name in table:
        raise ValueError(f"{kind} {name!r} registered twice")
    table[name] = value


def first_doc_line(obj: Any) -> str:
    """The first line of ``obj``'s docstring ("" without one): its ``cissl list`` summary."""
    return (obj.__doc__ or "").strip().split("\n")[0]


@dataclass(frozen=True)
class Entry:
    """One registered name: its config class, what it builds, its preset defaults, a one-line summary."""

    name: str
    target: Any
    config_cls: type
    preset: dict = field(default_factory=dict)
    summary: str = ""


class Registry:
    """Name -> :class:`Entry`, filled by a class decorator in the module that defines the entry."""

    def __init__(self, kind: str, key: str):
        self.kind = kind  # e.g. "algorithm", used in messages
        self.key = key    # the config key that names an entry, e.g. "algorithm.name"
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config_cls: type, preset: dict | None = None, summary: str = ""):
        """Class decorator: ``@REGISTRY.register("darp", DarpConfig, summary=...)``; a preset gives a
        variant's defaults (several names may share one class)."""

        def decorate(target):
            add_entry(self._entries, self.kind, name, Entry(name, target, config_cls, dict(preset or {}), summary))
            return target

        return decorate

    def unregister(self, name: str) -> None:
        """Remove an entry (plugins and tests that register one for a while)."""
        del self._entries[name]

    def entry(self, name: str, key: str | None = None) -> Entry:
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(f"config key '{key or self.key}': unknown {self.kind} {name!r}; "
                              f"allowed: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def build(self, data: Any, key: str, default: str):
        """The validated config of the entry ``data`` names: a name, or a mapping whose ``name``
        (``default`` where it has none) picks the entry; the entry's preset fills what it leaves out."""
        if isinstance(data, str):
            data = {"name": data}
        if data is None:
            data = {}
        if isinstance(data, (list, tuple)):
            raise ConfigError(f"config key '{key}': one {self.kind} per run (a name or a mapping), got {data!r}")
        if not isinstance(data, dict):
            raise ConfigError(f"config key '{key}': expected a name or a mapping, got {data!r}")
        name = data.get("name", default)
        entry = self.entry(name, _join(key, "name"))
        return build_section(entry.config_cls, {**merge_config(entry.config_cls, entry.preset, data), "name": name},
                             key)


def choice(registry: Registry, default: str, help: str = ""):
    """A section whose class is the config class of the registry entry named in it (default ``default``)."""
    return field(default_factory=lambda: registry.build(default, registry.key.rpartition(".")[0], default),
                 metadata={"registry": registry, "default": default, "help": help})


# ----------------------------------------------------------------------------- building


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        return " or ".join(_type_name(a) for a in args) + (" or null" if nullable else "")
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config key '{key}': must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _check_range(value, meta: dict, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}': must be one of {', '.join(map(str, choices))}; "
                          f"got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            raise ConfigError(f"config key '{key}': must be > {lo}, got {value}")
        if not meta.get("min_exclusive") and not value >= lo:
            raise ConfigError(f"config key '{key}': must be >= {lo}, got {value}")
    if hi is not None and not value <= hi:
        raise ConfigError(f"config key '{key}': must be <= {hi}, got {value}")


def build_section(cls, data: Any, prefix: str):
    """Build and validate the dataclass ``cls`` from a mapping (unknown keys are errors)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{_join(prefix, close[0])}'?)" if close else ""
        raise ConfigError(f"unknown config key '{_join(prefix, key)}'{hint}; "
                          f"allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = _join(prefix, name)
        tp = hints[name]
        registry = f.metadata.get("registry")
        if registry is not None:
            kwargs[name] = registry.build(data[name], key, f.metadata["default"])
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, data[name], key)
        else:
            value = _coerce(data[name], tp, key)
            _check_range(value, dict(f.metadata), key)
            kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_config(cls, base: dict, top: dict) -> dict:
    """``top`` over ``base`` for the section class ``cls``: nested sections merge key by key; a
    registry-chosen section (given as a name or a mapping) merges only when both sides choose the
    same entry, otherwise ``top``'s choice replaces ``base``'s with its options."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in top.items():
        f, old = fields.get(key), out.get(key)
        registry = f.metadata.get("registry") if f is not None else None
        if registry is not None:
            new, old = _as_choice(value), _as_choice(old)
            default = f.metadata["default"]
            same = isinstance(new, dict) and isinstance(old, dict) and (
                new.get("name", old.get("name", default)) == old.get("name", default))
            if same and old.get("name", default) in registry.names():
                out[key] = merge_config(registry.entry(old.get("name", default)).config_cls, old, new)
            else:
                out[key] = new
        elif isinstance(value, dict) and isinstance(old, dict):
            is_section = f is not None and dataclasses.is_dataclass(hints[key])
            out[key] = merge_config(hints[key], old, value) if is_section else merge(old, value)
        else:
            out[key] = value
    return out


def _as_choice(value):
    return {"name": value} if isinstance(value, str) else value


def describe(cls, prefix: str = "", instance=None) -> list[tuple[str, str, str]]:
    """(key, default, help) for every option of a config class, for docs and `cissl list`.

    A registry-chosen section is described by the class of its current entry (``instance``'s, or
    the default's), after a row naming the entries it can choose from.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        current = getattr(instance, f.name) if instance is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        registry = f.metadata.get("registry")
        if registry is not None:
            rows.append((_join(key, "name"), current.name,
                         f"{f.metadata.get('help', '')} (one of: {', '.join(registry.names())})".strip()))
            rows.extend(row for row in describe(type(current), key, current) if row[0] != _join(key, "name"))
        elif dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], key, current))
        else:
            rows.append((key, yamlio.format_scalar(current), f.metadata.get("help", "")))
    return rows

