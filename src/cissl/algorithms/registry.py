"""Name -> algorithm registry, so configs select methods by name (``algorithm.name``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cissl.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    algorithm_cls: type
    config_cls: type
    preset: dict = field(default_factory=dict)
    summary: str = ""


_REGISTRY: dict[str, Entry] = {}


def register(name: str, config_cls: type, preset: dict | None = None, summary: str = ""):
    """Class decorator: ``@register("fixmatch", FixMatchConfig)``; a preset gives a variant's defaults."""

    def decorate(algorithm_cls):
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} registered twice")
        _REGISTRY[name] = Entry(name, algorithm_cls, config_cls, dict(preset or {}), summary)
        return algorithm_cls

    return decorate


def entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"config key 'algorithm.name': unknown algorithm {name!r}; "
                          f"allowed: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def algorithm_names() -> list[str]:
    return sorted(_REGISTRY)
