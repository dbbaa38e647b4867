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


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        yamlio.load(tmp_path / "nope.yaml")
