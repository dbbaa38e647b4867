import math
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cissl import yamlio
from cissl.errors import ConfigError

DOC = """
# a comment
name: "quoted: value"   # trailing comment
data:
  dataset: cifar10
  labeled_head: 1500
  imbalance_ratio: 100.0
  unlabeled_imbalance_ratio: null
  flag: true
  other: False
  tilde: ~
  small: 5.0e-4
  negative: -3
  list: [1, 2.5, "x, y", 'it''s']
  empty: []
  mapping: {}
items:
  - a
  - 3
path: configs/x.yaml
"""


def test_loads_matches_pyyaml_on_common_subset():
    assert yamlio.loads(DOC) == yaml.safe_load(DOC)


def test_scalars_follow_yaml_1_2():
    assert yamlio.parse_scalar("5e-4") == 5e-4  # PyYAML (1.1) would give a string
    assert yamlio.parse_scalar("yes") == "yes"
    assert yamlio.parse_scalar(".inf") == math.inf
    assert math.isnan(yamlio.parse_scalar(".nan"))
    assert yamlio.parse_scalar("0.03") == 0.03
    assert yamlio.parse_scalar("'007'") == "007"
    assert yamlio.parse_scalar('"a\\"b"') == 'a"b'


@pytest.mark.parametrize("bad, fragment", [
    ("a: 1\na: 2\n", "duplicate key"),
    ("a:\n\tb: 1\n", "tabs"),
    ("a: [1, 2\n", "unterminated"),
    ("a: {b: 1}\n", "flow mappings"),
    ("a: &anchor 1\n", "not supported"),
    ("a: 1\n  b: 2\n", "indentation"),
    ("- a: 1\n", "mappings inside sequences"),
    ('a: "abc\n', "f.yaml:1: unterminated double-quoted string"),
    ("a: 'abc\n", "f.yaml:1: unterminated single-quoted string"),
    ('a: "x\\q"\n', "f.yaml:1: unsupported escape in"),
    ('a: "x"y"\n', "f.yaml:1: unescaped quote inside"),
    ("a: [[1], 2]\n", "f.yaml:1: nested flow collections are not supported"),
    ('a: ["x, 1]\n', "f.yaml:1: unterminated string in flow sequence"),
    (": 1\n", "f.yaml:1: empty key"),
    ("a: 1\nb\n", "f.yaml:2: expected 'key: value', got 'b'"),
    ("abc\nd: 1\n", "f.yaml:1: expected 'key: value', got 'abc'"),
    ("a:\n  - 1\n    - 2\n", "f.yaml:3: only scalars are supported as sequence items"),
    ("a: b: c\n", "f.yaml:1: a value cannot hold ': ' or end with ':' unless quoted; got 'b: c'"),
    ("a: b:\n", "f.yaml:1: a value cannot hold ': ' or end with ':' unless quoted; got 'b:'"),
    ('a: "\\x4"\n', "f.yaml:1: unsupported escape in"),
    ('a: "\\qA"\n', "f.yaml:1: unsupported escape in"),  # an unknown escape before a hex digit is no 1-digit code
    ("- [a: b]\n", "f.yaml:1: flow mappings are not supported"),  # a flow item of a sequence: not a block mapping
    ("a: [X'y # z', 1]\n", "f.yaml:1: unterminated flow sequence"),  # a quote inside a plain item opens nothing
    ("a: [\u00a0'x # y', 1]\n", "f.yaml:1: unterminated flow sequence"),  # a no-break space is no space
    # a quote after the flow sequence ends opens nothing
    ("a: [x], 'y # z'\n", "f.yaml:1: unterminated flow sequence \"\\[x\\], 'y\"$"),
    ("a:\n  b:\n    - 'x\n", "f.yaml:3: unterminated single-quoted string \"'x\"$"),  # keeps its indentation
    ("a: [: x]\n", "f.yaml:1: empty key"),
    ('a: "\\xzz1"\n', "f.yaml:1: unsupported escape in"),
    ('a: "\\U00110000"\n', "f.yaml:1: unsupported escape in"),
    ('a: "\\"\n', "f.yaml:1: unsupported escape in"),
    ("a: [a: b]\n", "f.yaml:1: flow mappings are not supported"),  # YAML reads [{a: b}]: refused, not misread
    ("a: [x, 'y': 1]\n", "f.yaml:1: flow mappings are not supported"),
    ("- [x:]\n", "f.yaml:1: flow mappings are not supported"),
    ('a: [1, "x\\q"]\n', "f.yaml:1: unsupported escape"),  # each error names its line, wherever it is found
    ('a: 1\nb:\n  - "x\\q"\n', "f.yaml:3: unsupported escape"),
    ('a: 1\n"k\\q": 1\n', "f.yaml:2: unsupported escape"),
    ('"x\\q"\n', "f.yaml:1: unsupported escape"),
    ("a: 1\nb: : x\n", "f.yaml:2: empty key"),
    ("a:\n- : x\n", "f.yaml:2: empty key"),
    ("  a: 1\nb: 2\n", "f.yaml:2: unexpected indentation"),
])
def test_rejects_what_it_does_not_support(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        yamlio.loads(bad, "f.yaml")


@pytest.mark.parametrize("text", [
    "a: it 's # x\n",  # a quote inside a plain scalar is a character; the comment after it still goes
    "a: x, 'y # z'\n",
    "- 'a # b' # c\n",
    "a: [1, '#', \"a # b\"] # c\n",
    'a: ["x\\"y", \'p\'\'q\'] # c\n',  # escaped quotes inside a flow sequence
    'a: "x\\" # y"  # c\n',  # an escaped quote, then '#', inside a double-quoted scalar
    "a: [it's, b]\n",  # a plain flow item holding a quote
    "a: x[1] 'y # z\n",
    "a: X 'y # z'\n",  # a quote after a plain word is a character, wherever the word ends
    "a: [X, 1]\n",
    "a: X # c\n",
    "a: X#y\n",  # '#' after a character other than a space or tab is part of the scalar
    "'a'': b': 1\n",  # a quoted key holding '' and ': '
    '"": 1\n',
    "a:\n- 1\n-\n",  # a sequence at its key's indentation, with a null item, ending the document
    'a: "\\x41\\u00e9\\U0001F600\\r\\a\\b\\e\\f\\v\\N\\_\\L\\P\\ \\/\\0\\t\\n"\n',  # YAML 1.2's escapes
    "---\na: 1\n...\n",
])
def test_reads_as_pyyaml_where_it_once_did_not(text):
    """Each of these was misread or refused before the reader scanned quoted scalars as YAML does."""
    assert yamlio.loads(text) == yaml.safe_load(text)


def test_writes_any_string_so_that_it_reads_back():
    """Strings that once broke dumps: a YAML indicator first ('@'), YAML 1.1 numbers that PyYAML would
    read as numbers, a trailing newline, a line separator, a control character."""
    for text in ["@x", "*a", "1_000", "1:30", "2001-12-14", "A\n", "a\u2028b", "\x01", "yes", "a #b"]:
        written = yamlio.format_scalar(text)
        assert written.startswith('"') and "\n" not in written, written
        assert yamlio.parse_scalar(written) == yaml.safe_load(written) == text
    assert yamlio.format_scalar({}) == "{}" and yamlio.format_scalar([]) == "[]"
    assert [yamlio.format_scalar(t) for t in ("cifar10", "configs/x.yaml", "/data/a b", "semi_v2")] == [
        "cifar10", "configs/x.yaml", "/data/a b", "semi_v2"]


def test_a_scalar_document_the_last_code_point_and_a_tab_inside_quotes_read_as_in_yaml():
    for text in ("hello\n", 'a: "\\U0010FFFF"\n', 'a: "x\ty"\n', "a: 'x\t# y'\n"):
        assert yamlio.loads(text) == yaml.safe_load(text)


def test_errors_without_a_source_name_a_value_or_a_string():
    with pytest.raises(ConfigError, match=r"^value: unterminated flow sequence '\[1'$"):
        yamlio.parse_scalar("[1")
    with pytest.raises(ConfigError, match=r"^<string>:1: unterminated flow sequence '\['$"):
        yamlio.loads("a: [")


def test_a_files_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "c.yaml").write_text("a: 1\nb: [\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / 'c.yaml'))}:2: unterminated flow sequence"):
        yamlio.load(tmp_path / "c.yaml")


def test_dump_round_trips_through_both_parsers():
    data = {"name": "x/y", "a": {"b": 1, "c": 0.0005, "d": None, "e": True, "f": [1, 2],
                                  "g": "true", "h": "1.5", "i": "yes", "j": "", "k": "a: b", "l": {}},
            "m": -0.25, "n": 1e20}
    text = yamlio.dumps(data)
    assert yamlio.loads(text) == data
    assert yaml.safe_load(text) == data


def test_dumps_writes_two_space_blocks_and_the_shortest_escapes():
    """The layout of a run's config.yaml, line by line: keys at column 0, nested blocks two spaces in and
    no blank line after one, booleans lower case, and each escape in the shortest form the reader takes."""
    data = {"train": {"model": {"depth": 28, "tag": "MAX"}, "amp": True, "off": False},
            "name": "\x01\u2028\U000e0001", "x": 1e-05}
    assert yamlio.dumps(data) == (
        "train:\n"
        "  model:\n"
        "    depth: 28\n"
        "    tag: MAX\n"
        "  amp: true\n"
        '  "off": false\n'  # a boolean to YAML 1.1 readers: quoted
        'name: "\\x01\\u2028\\U000e0001"\n'
        "x: 1.0e-05\n")
    assert yamlio.loads(yamlio.dumps(data)) == yaml.safe_load(yamlio.dumps(data)) == data


def test_a_key_without_value_is_null_as_in_yaml():
    assert yamlio.loads("a:\nb: 1\n") == yaml.safe_load("a:\nb: 1\n") == {"a": None, "b": 1}


def test_non_finite_numbers_are_written_as_yaml_reads_them():
    assert [yamlio.format_scalar(v) for v in (math.inf, -math.inf)] == [".inf", "-.inf"]
    assert yamlio.format_scalar(math.nan) == ".nan" and math.isnan(yaml.safe_load(yamlio.format_scalar(math.nan)))
    assert yamlio.loads(yamlio.dumps({"a": -math.inf})) == yaml.safe_load(yamlio.dumps({"a": -math.inf}))


def test_a_file_that_is_not_text_names_it(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00a: 1")
    with pytest.raises(ConfigError, match="cannot read config file .*binary.yaml"):
        yamlio.load(tmp_path / "binary.yaml")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        yamlio.load(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- against a full parser
# Documents drawn from the subset the reader supports (block mappings, block sequences at the key's
# indentation or deeper, flow sequences, the three scalar styles, comments, blank lines, document markers)
# must read exactly as PyYAML reads them. The scalars avoid the forms where YAML 1.1 (PyYAML) and 1.2
# (this reader) differ on purpose: numbers are written canonically, and yes/no/on/off/y/n are left out.

_YAML_1_1_WORDS = {"yes", "no", "on", "off", "y", "n"}
_WORD = st.text(alphabet="abcxyz", min_size=1, max_size=4).filter(lambda w: w.lower() not in _YAML_1_1_WORDS)
_PLAIN = st.builds(  # a plain scalar: a word, then words or the marks a plain scalar may hold inside
    lambda first, rest: (first + "".join(rest)).rstrip(),
    _WORD, st.lists(st.one_of(_WORD, st.sampled_from([" ", " '", "'", ' "', '"', "#", "-", ",", ":", " - "])),
                    max_size=5),
).filter(lambda s: ": " not in s and not s.endswith(":") and " #" not in s and s.lower() not in _YAML_1_1_WORDS)
_NUMBER = st.one_of(st.integers(-10**6, 10**6).map(str),
                    st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: repr(float(x))).filter(lambda s: "e" not in s),
                    st.sampled_from(["1.0e-3", "-2.5e+4", ".inf", "-.inf", "0.0"]))
_DOUBLE = st.lists(st.one_of(st.sampled_from(list("ab #:,'[]-")),
                             st.sampled_from(['\\"', "\\\\", "\\n", "\\t", "\\/", "\\0"])), max_size=6
                   ).map(lambda parts: '"' + "".join(parts) + '"')
_SINGLE = st.lists(st.sampled_from(list('ab #:,"[]-') + ["''"]), max_size=6).map(lambda p: "'" + "".join(p) + "'")
_CONSTANT = st.sampled_from(["true", "false", "null", "~", "True", "NULL"])
_SCALAR = st.one_of(_PLAIN, _NUMBER, _DOUBLE, _SINGLE, _CONSTANT)
_FLOW = st.lists(st.one_of(_WORD, _NUMBER, _DOUBLE, _SINGLE), max_size=4).flatmap(
    lambda items: st.sampled_from(["[" + ", ".join(items) + "]", "[" + ",".join(items) + (", ]" if items else "]")]))
_COMMENT = st.one_of(st.just(""), st.sampled_from(["  # note", " # it's \"x\" #2", "   # [a, b"]))
_KEY = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True).filter(lambda k: k not in _YAML_1_1_WORDS),
                 st.sampled_from(['"a key"', "'it''s'", '"x: y"', "'#k'"]))


def _block(depth):
    """A mapping's lines at indentation 0 (indented by its caller) and its keys' texts."""
    value = st.one_of(
        st.tuples(st.just("scalar"), st.one_of(_SCALAR, _FLOW), _COMMENT),
        st.tuples(st.just("sequence"), st.lists(st.one_of(_SCALAR, st.just("")), min_size=1, max_size=3),
                  st.sampled_from([0, 2])),
        st.tuples(st.just("empty"), _COMMENT),
        *([st.tuples(st.just("mapping"), st.deferred(lambda: _block(depth + 1)))] if depth < 2 else []))
    return st.lists(st.tuples(_KEY, value), min_size=1, max_size=4, unique_by=lambda kv: yaml.safe_load(kv[0]))


def _render(block, indent=0):
    pad, lines = " " * indent, []
    for key, (kind, *parts) in block:
        if kind == "scalar":
            lines.append(f"{pad}{key}: {parts[0]}{parts[1]}")
        elif kind == "empty":
            lines.append(f"{pad}{key}:{parts[0]}")
        elif kind == "sequence":
            items, deeper = parts
            lines.append(f"{pad}{key}:")
            lines += [f"{pad}{' ' * deeper}- {item}".rstrip() for item in items]
        else:
            lines.append(f"{pad}{key}:")
            lines += _render(parts[0], indent + 2)
    return lines


@settings(max_examples=400, deadline=None)
@given(_block(0), st.lists(st.sampled_from(["", "# a comment", "   ", "  # indented 'comment"]), max_size=3),
       st.booleans(), st.randoms(use_true_random=False))
def test_reads_the_supported_subset_as_pyyaml_does(block, extra, marker, rng):
    lines = _render(block)
    for text in extra:  # blank and comment-only lines anywhere
        lines.insert(rng.randrange(len(lines) + 1), text)
    text = ("---\n" if marker else "") + "\n".join(lines) + "\n"
    expected = yaml.safe_load(text)
    assert yamlio.loads(text) == expected, text


_ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
_DUMPED_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                           _ANY_TEXT, st.sampled_from(["yes", "Off", "1_000", "0x1F", "1:30", "2001-12-14", "<<", "=",
                                                       "@x", "*a", "~/data", "a - b", "-a", "? x", "a #b", ""]))
_DUMPED = st.recursive(st.dictionaries(_ANY_TEXT, st.one_of(_DUMPED_SCALAR, st.lists(_DUMPED_SCALAR, max_size=3)),
                                       max_size=4),
                       lambda inner: st.dictionaries(_ANY_TEXT, inner, max_size=3), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(_DUMPED)
def test_what_dumps_writes_both_parsers_read_back_unchanged(data):
    """config.yaml in a run folder is written by dumps and read back on resume: any string (control
    characters, line separators, quotes, YAML 1.1 look-alikes such as 'yes' or '1_000') comes back as it was."""
    text = yamlio.dumps(data)
    assert yamlio.loads(text) == data, text
    assert yaml.safe_load(text) == (data or None), text
