import math

import pytest
import yaml

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
])
def test_rejects_what_it_does_not_support(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        yamlio.loads(bad, "f.yaml")


def test_dump_round_trips_through_both_parsers():
    data = {"name": "x/y", "a": {"b": 1, "c": 0.0005, "d": None, "e": True, "f": [1, 2],
                                  "g": "true", "h": "1.5", "i": "yes", "j": "", "k": "a: b", "l": {}},
            "m": -0.25, "n": 1e20}
    text = yamlio.dumps(data)
    assert yamlio.loads(text) == data
    assert yaml.safe_load(text) == data


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
