"""A small reader and writer for the subset of YAML that cissl configs use.

The core package depends only on torch and numpy, so it does not pull in a YAML library.
Supported: block mappings (``key: value`` and nested blocks), block sequences of scalars
(``- item``), flow sequences of scalars (``[1, 2, "a"]``), the empty flow mapping ``{}``,
``#`` comments, and the YAML 1.2 core-schema scalars: ``null``/``~``, ``true``/``false``,
integers, floats (``0.03``, ``5e-4``, ``.inf``, ``.nan``) and plain, single- or double-quoted
strings. Anything else (anchors, multi-line strings, flow mappings with content, tabs) is
rejected with a message naming the file and line.

Note: YAML 1.1 parsers (PyYAML) read ``5e-4`` as a string and ``yes``/``no`` as booleans; this
reader follows YAML 1.2 (a float, and strings). The configs shipped with cissl avoid both forms
so that any YAML parser reads them alike (a test checks this against PyYAML).
"""

from __future__ import annotations

import math
import re
from typing import Any

from cissl.errors import ConfigError

_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {
    ".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf,
    ".Inf": math.inf, "+.Inf": math.inf, "-.Inf": -math.inf,
    ".INF": math.inf, "+.INF": math.inf, "-.INF": -math.inf,
    ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan,
}
_NULLS = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}


def parse_scalar(text: str, where: str = "value") -> Any:
    """Parse one scalar (or a flow sequence of scalars) as YAML 1.2 core schema would."""
    s = text.strip()
    if s.startswith("[") :
        if not s.endswith("]"):
            raise ConfigError(f"{where}: unterminated flow sequence {s!r}")
        inner = s[1:-1].strip()
        if not inner:
            return []
        return [parse_scalar(item, where) for item in _split_flow(inner, where)]
    if s == "{}":
        return {}
    if s.startswith("{"):
        raise ConfigError(f"{where}: flow mappings are not supported; use an indented block")
    if s.startswith('"'):
        if len(s) < 2 or not s.endswith('"'):
            raise ConfigError(f"{where}: unterminated double-quoted string {s!r}")
        return _unescape_double(s[1:-1], where)
    if s.startswith("'"):
        if len(s) < 2 or not s.endswith("'"):
            raise ConfigError(f"{where}: unterminated single-quoted string {s!r}")
        return s[1:-1].replace("''", "'")
    if s in _NULLS:
        return None
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s):
        return float(s)
    if s in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[s]
    if s[0] in "&*!|>%@`":
        raise ConfigError(f"{where}: YAML feature not supported here: {s!r}")
    return s


def _unescape_double(body: str, where: str) -> str:
    escapes = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "/": "/", "0": "\0"}
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 >= len(body) or body[i + 1] not in escapes:
                raise ConfigError(f"{where}: unsupported escape in {body!r}")
            out.append(escapes[body[i + 1]])
            i += 2
            continue
        if ch == '"':
            raise ConfigError(f"{where}: unescaped quote inside {body!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def _split_flow(inner: str, where: str) -> list[str]:
    items, cur, quote = [], [], None
    for ch in inner:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            cur.append(ch)
        elif ch == ",":
            items.append("".join(cur))
            cur = []
        elif ch in "[]{}":
            raise ConfigError(f"{where}: nested flow collections are not supported")
        else:
            cur.append(ch)
    if quote:
        raise ConfigError(f"{where}: unterminated string in flow sequence")
    items.append("".join(cur))
    if items and not items[-1].strip():  # trailing comma
        items.pop()
    return items


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or line[i - 1] in " \t:[,-"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _split_key(content: str, where: str) -> tuple[str, str] | None:
    """Split ``key: rest`` at the first colon followed by a space or the line end."""
    quote = None
    for i, ch in enumerate(content):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "\"'" and i == 0:
            quote = ch
            continue
        if ch == ":" and (i + 1 == len(content) or content[i + 1] == " "):
            key = content[:i].strip()
            if key.startswith(("'", '"')):
                key = parse_scalar(key, where)
            if not key:
                raise ConfigError(f"{where}: empty key")
            return str(key), content[i + 1:].strip()
    return None


def loads(text: str, source: str = "<string>") -> Any:
    """Parse YAML-subset text; returns a dict (empty document -> {})."""
    lines: list[tuple[int, int, str]] = []  # (line number, indent, content)
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip() in ("---", "..."):
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ConfigError(f"{source}:{number}: tabs are not allowed for indentation")
        content = _strip_comment(raw)
        if not content.strip():
            continue
        indent = len(content) - len(content.lstrip(" "))
        lines.append((number, indent, content.strip()))
    if not lines:
        return {}
    value, pos = _parse_block(lines, 0, lines[0][1], source)
    if pos != len(lines):
        number = lines[pos][0]
        raise ConfigError(f"{source}:{number}: unexpected indentation")
    return value


def _parse_block(lines, pos: int, indent: int, source: str):
    number, _, content = lines[pos]
    if content.startswith("- ") or content == "-":
        return _parse_sequence(lines, pos, indent, source)
    if _split_key(content, f"{source}:{number}") is None:
        if len(lines) == 1:
            return parse_scalar(content, f"{source}:{number}"), 1
        raise ConfigError(f"{source}:{number}: expected 'key: value', got {content!r}")
    return _parse_mapping(lines, pos, indent, source)


def _parse_mapping(lines, pos: int, indent: int, source: str):
    result: dict[str, Any] = {}
    while pos < len(lines):
        number, ind, content = lines[pos]
        where = f"{source}:{number}"
        if ind < indent:
            break
        if ind > indent:
            raise ConfigError(f"{where}: unexpected indentation")
        split = _split_key(content, where)
        if split is None:
            raise ConfigError(f"{where}: expected 'key: value', got {content!r}")
        key, rest = split
        if key in result:
            raise ConfigError(f"{where}: duplicate key {key!r}")
        pos += 1
        if rest:
            result[key] = parse_scalar(rest, where)
            continue
        # nested block: more indented lines, or a sequence at the same indentation
        if pos < len(lines) and (
            lines[pos][1] > indent or (lines[pos][1] == indent and lines[pos][2].startswith("-"))
        ):
            value, pos = _parse_block(lines, pos, lines[pos][1], source)
            result[key] = value
        else:
            result[key] = None
    return result, pos


def _parse_sequence(lines, pos: int, indent: int, source: str):
    result: list[Any] = []
    while pos < len(lines):
        number, ind, content = lines[pos]
        where = f"{source}:{number}"
        if ind != indent or not (content.startswith("- ") or content == "-"):
            if ind > indent:
                raise ConfigError(f"{where}: only scalars are supported as sequence items")
            break
        item = content[1:].strip()
        if _split_key(item, where) is not None and not item.startswith(("'", '"', "[")):
            raise ConfigError(f"{where}: mappings inside sequences are not supported")
        result.append(parse_scalar(item, where))
        pos += 1
    return result, pos


def load(path) -> Any:
    """Read a YAML-subset file; a missing file raises ConfigError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return loads(text, str(path))


def format_scalar(value: Any) -> str:
    """Write a scalar so that :func:`parse_scalar` (and PyYAML) read it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"  # PyYAML needs a dot to read a float
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_scalar(v) for v in value) + "]"
    text = str(value)
    plain_ok = (
        text
        and text == text.strip()
        and isinstance(parse_scalar(text), str)
        and not any(c in text for c in ":#[]{},'\"\n\\")
        and text.lower() not in ("yes", "no", "on", "off", "y", "n")
        and not text.startswith(("-", "?"))
    )
    if plain_ok:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dumps(data: dict, indent: int = 0) -> str:
    """Write a nested dict of scalars and lists of scalars as block YAML."""
    out = []
    pad = " " * indent
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.append(f"{pad}{format_scalar(key)}:")
            out.append(dumps(value, indent + 2).rstrip("\n"))
        elif isinstance(value, dict):
            out.append(f"{pad}{format_scalar(key)}: {{}}")
        else:
            out.append(f"{pad}{format_scalar(key)}: {format_scalar(value)}")
    return "\n".join(out) + "\n"
