"""A small reader and writer for the subset of YAML that cissl configs use.

The core package depends only on torch and numpy, so it does not pull in a YAML library.
Supported: block mappings (``key: value`` and nested blocks), block sequences of scalars
(``- item``), flow sequences of scalars (``[1, 2, "a"]``), the empty flow mapping ``{}``,
``#`` comments, and the YAML 1.2 core-schema scalars: ``null``/``~``, ``true``/``false``,
integers, floats (``0.03``, ``5e-4``, ``.inf``, ``.nan``) and plain, single- or double-quoted
strings (with every YAML 1.2 escape). Anything else (anchors, multi-line strings, flow mappings
with content, tabs for indentation, a plain value holding ``': '``) is rejected with a message
naming the file and line. Tests check that documents of this subset read as PyYAML reads them,
and that what :func:`dumps` writes reads back unchanged in both.

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
        items = _split_flow(inner, where)
        if any(_split_key(item.strip(), where) is not None for item in items):  # [a: b] is [{a: b}] in YAML
            raise ConfigError(f"{where}: flow mappings are not supported; use an indented block")
        return [parse_scalar(item, where) for item in items]
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


# YAML 1.2's escapes in double-quoted scalars (spec 5.7): one character, or \\x, \\u, \\U and hex digits
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", " ": " ", "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t",
            "n": "\n", "v": "\v", "f": "\f", "r": "\r", "e": "\x1b", "N": "\x85", "_": "\xa0",
            "L": "\u2028", "P": "\u2029"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_HEX = re.compile(r"[0-9a-fA-F]+")


def _unescape_double(body: str, where: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            code = body[i + 1:i + 2]
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
                i += 2
                continue
            width = _HEX_ESCAPES.get(code, 0)
            digits = body[i + 2:i + 2 + width]
            if width and len(digits) == width and _HEX.fullmatch(digits) and int(digits, 16) <= 0x10FFFF:
                out.append(chr(int(digits, 16)))
                i += 2 + width
                continue
            raise ConfigError(f"{where}: unsupported escape in {body!r}")
        if ch == '"':
            raise ConfigError(f"{where}: unescaped quote inside {body!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def _quoted_end(text: str, i: int) -> int | None:
    """The index just past the quoted scalar that opens at ``text[i]`` (None if it does not close):
    ``\\"`` escapes a quote in a double-quoted scalar, ``''`` in a single-quoted one."""
    quote, j = text[i], i + 1
    while j < len(text):
        if quote == '"' and text[j] == "\\":
            j += 2
        elif text[j] == quote and quote == "'" and text[j + 1:j + 2] == "'":
            j += 2
        elif text[j] == quote:
            return j + 1
        else:
            j += 1
    return None


def _split_flow(inner: str, where: str) -> list[str]:
    items, start, i = [], 0, 0
    while i < len(inner):
        ch = inner[i]
        if ch in "\"'" and not inner[start:i].strip():  # a quote opens only an item's scalar
            end = _quoted_end(inner, i)
            if end is None:
                raise ConfigError(f"{where}: unterminated string in flow sequence")
            i = end
            continue
        if ch == ",":
            items.append(inner[start:i])
            start = i + 1
        elif ch in "[]{}":
            raise ConfigError(f"{where}: nested flow collections are not supported")
        i += 1
    items.append(inner[start:])
    if not items[-1].strip():  # trailing comma
        items.pop()
    return items


def _strip_comment(line: str) -> str:
    """The line without its comment: a ``#`` at the line start or after a space, outside quotes.

    A quote opens a quoted scalar only where a scalar starts (the line start, after ``key:`` or a
    sequence's ``-``, or after ``[`` / ``,`` in a flow sequence); inside a plain scalar (``it 's``)
    it is an ordinary character, as in YAML.
    """
    in_flow, i = False, 0
    while i < len(line):
        ch = line[i]
        if ch in "\"'" and _starts_scalar(line, i, in_flow):
            end = _quoted_end(line, i)
            if end is None:  # unterminated: left for the scalar's reader to name
                return line.rstrip()
            i = end
            continue
        if ch == "[" and _starts_scalar(line, i, in_flow):  # flow sequences do not nest here
            in_flow = True
        elif ch == "]":
            in_flow = False
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


def _starts_scalar(line: str, i: int, in_flow: bool) -> bool:
    before = line[:i].rstrip(" \t")
    if not before or (in_flow and before[-1] in "[,"):
        return True
    return line[i - 1] in " \t" and (before[-1] == ":" or before.lstrip() == "-")


def _split_key(content: str, where: str) -> tuple[str, str] | None:
    """Split ``key: rest`` at the first colon followed by a space or the line end (a quoted key may
    hold such a colon)."""
    i = 0
    if content.startswith(("'", '"')):
        i = _quoted_end(content, 0) or len(content)
    while i < len(content):
        if content[i] == ":" and (i + 1 == len(content) or content[i + 1] == " "):
            key = content[:i].strip()
            if not key:
                raise ConfigError(f"{where}: empty key")
            if key.startswith(("'", '"')):
                key = parse_scalar(key, where)
            return str(key), content[i + 1:].strip()
        i += 1
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
            if not rest.startswith(("[", "{")) and _split_key(rest, where) is not None:
                raise ConfigError(f"{where}: a value cannot hold ': ' or end with ':' unless quoted; got {rest!r}")
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
        if not item.startswith("[") and _split_key(item, where) is not None:
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


# Written plain: a string that starts with a letter, "_" or "/" and holds only these characters, which
# YAML 1.2 and 1.1 readers (PyYAML) both read as that string; anything else is double-quoted.
_PLAIN_SAFE = re.compile(r"[A-Za-z_/]([A-Za-z0-9_./ -]*[A-Za-z0-9_./-])?")
_YAML_1_1_WORDS = {"yes", "no", "on", "off", "y", "n"}  # booleans to YAML 1.1, strings to 1.2
_WRITE_ESCAPES = {_ESCAPES[code]: "\\" + code for code in '\\"ntr0'}  # the reader's, for these characters


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
    if isinstance(value, dict) and not value:
        return "{}"
    text = str(value)
    if _PLAIN_SAFE.fullmatch(text) and text.lower() not in _YAML_1_1_WORDS and isinstance(parse_scalar(text), str):
        return text
    return '"' + "".join(_escape(ch) for ch in text) + '"'


def _escape(ch: str) -> str:
    if ch in _WRITE_ESCAPES:
        return _WRITE_ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)  # control characters and line or paragraph separators, which would break the line
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
