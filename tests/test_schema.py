"""The config schema on a small schema of its own: what a section builds from a mapping, the messages of
a refused value, how registry-chosen sections are built and merged, and what `describe` lists (the rows
of `cissl list`)."""

import re
from dataclasses import dataclass
from typing import Any

import pytest

from cissl.errors import ConfigError
from cissl.schema import (
    NamedConfig,
    Registry,
    build_section,
    choice,
    describe,
    first_doc_line,
    merge,
    merge_config,
    option,
    section,
)

COLOURS = Registry("colour", "colour.name")


@dataclass(frozen=True)
class RedConfig(NamedConfig):
    name: str = option("red")
    shade: float = option(0.5, min=0.0, max=1.0, help="how dark")


@dataclass(frozen=True)
class BlueConfig(NamedConfig):
    name: str = option("blue")
    depth: int = option(3, min=1)


class Red:
    pass


class Blue:
    pass


COLOURS.register("red", RedConfig, summary="a red")(Red)
COLOURS.register("blue", BlueConfig, preset={"depth": 5})(Blue)
COLOURS.register("navy", BlueConfig, preset={"depth": 9}, summary="a darker blue")(Blue)


@dataclass(frozen=True)
class BrushConfig:
    size: int = option(2, min=1, help="bristles")
    tags: list[str] = option(["a"], help="labels")


@dataclass(frozen=True)
class KitConfig:
    colour: NamedConfig = choice(COLOURS, "red")  # a choice without help, inside a plain section


@dataclass(frozen=True)
class PaintConfig:
    colour: NamedConfig = choice(COLOURS, "red", help="the colour")
    brush: BrushConfig = section(BrushConfig)
    ratio: float = option(0.5, min=0.0, min_exclusive=True)
    mode: str = option("a", choices=("a", "b"))
    note: str | None = option(None)
    sizes: list[int] | None = option(None)
    wet: bool = option(False)
    extra: dict = option({})
    anything: Any = option(None)
    shape: tuple[int, ...] = option((1, 2))
    kit: KitConfig = section(KitConfig)
    plain: int = 0  # a field declared without option(): no range, no help


def build(data):
    return build_section(PaintConfig, data, "")


def test_defaults_and_the_default_entry_with_its_preset():
    paint = build({})
    assert paint.colour == RedConfig() and paint.brush == BrushConfig() and paint.ratio == 0.5
    assert build({"colour": "navy"}).colour == BlueConfig(name="navy", depth=9)  # the entry's preset
    assert build({"colour": {"name": "blue", "depth": 4}}).colour == BlueConfig(name="blue", depth=4)
    assert build({"colour": {"shade": 0.25}}).colour == RedConfig(shade=0.25)  # no name: the default entry
    assert build({"colour": None}).colour == RedConfig()


@dataclass(frozen=True)
class NestedDefaultConfig:
    table: dict = option({"a": [1]})


def test_a_list_default_is_a_fresh_copy_for_each_section():
    first, second = BrushConfig(), BrushConfig()
    first.tags.append("b")
    assert second.tags == ["a"] and BrushConfig().tags == ["a"]
    assert PaintConfig().extra == {} and PaintConfig().extra is not PaintConfig().extra
    first, second = NestedDefaultConfig(), NestedDefaultConfig()
    first.table["a"].append(2)  # a nested list of a default: copied too
    assert second.table == {"a": [1]} and NestedDefaultConfig().table == {"a": [1]}


def test_values_are_coerced_to_the_declared_type():
    paint = build({"brush": {"size": 3.0, "tags": ["x", "y"]}, "ratio": 2, "note": "hi", "sizes": [1, 2.0],
                   "wet": True, "anything": [1, "a"]})
    assert paint.brush.size == 3 and type(paint.brush.size) is int
    assert paint.ratio == 2.0 and type(paint.ratio) is float
    assert paint.sizes == [1, 2] and all(type(s) is int for s in paint.sizes)
    assert (paint.note, paint.wet, paint.anything, paint.brush.tags) == ("hi", True, [1, "a"], ["x", "y"])
    assert build({"shape": [3, 4.0]}).shape == (3, 4)  # a tuple option stays a tuple
    assert build({"brush": None}).brush == BrushConfig()  # `brush:` with nothing under it: the defaults


@dataclass(frozen=True)
class NullFirstConfig:
    count: None | int = option(None)  # null written first: the other types are still tried


def test_a_union_written_with_null_first_takes_its_other_types():
    assert build_section(NullFirstConfig, {"count": 3}, "").count == 3
    assert build_section(NullFirstConfig, {"count": None}, "").count is None
    with pytest.raises(ConfigError, match=r"^config key 'count': expected an integer or null, got 'x'$"):
        build_section(NullFirstConfig, {"count": "x"}, "")


def test_a_summary_is_the_first_line_of_a_docstring():
    class Documented:
        """  Two words.
        And a second line."""

    class Bare:
        pass

    assert first_doc_line(Documented) == "Two words." and first_doc_line(Bare) == ""


@pytest.mark.parametrize("data, message", [
    ({"brush": {"size": "x"}}, "config key 'brush.size': expected an integer, got 'x'"),
    ({"brush": {"size": 2.5}}, "config key 'brush.size': expected an integer, got 2.5"),
    ({"brush": {"size": True}}, "config key 'brush.size': expected an integer, got True"),
    ({"ratio": True}, "config key 'ratio': expected a number, got True"),
    ({"ratio": float("inf")}, "config key 'ratio': must be a finite number, got inf"),
    ({"wet": 1}, "config key 'wet': expected true/false, got 1"),
    ({"note": 3}, "config key 'note': expected a string or null, got 3"),
    ({"sizes": 3}, "config key 'sizes': expected list of an integer or null, got 3"),
    ({"sizes": [1, "b"]}, "config key 'sizes': expected list of an integer or null, got [1, 'b']"),
    ({"brush": {"tags": "a"}}, "config key 'brush.tags': expected a list, got 'a'"),
    ({"brush": {"tags": ["a", 1]}}, "config key 'brush.tags[1]': expected a string, got 1"),
    ({"brush": 3}, "config key 'brush': expected a mapping, got 3"),
    ({"ratio": 0}, "config key 'ratio': must be > 0.0, got 0.0"),
    ({"brush": {"size": 0}}, "config key 'brush.size': must be >= 1, got 0"),
    ({"colour": {"shade": 1.5}}, "config key 'colour.shade': must be <= 1.0, got 1.5"),
    ({"colour": {"shade": -0.5}}, "config key 'colour.shade': must be >= 0.0, got -0.5"),
    ({"mode": "c"}, "config key 'mode': must be one of a, b; got 'c'"),
    ({"colour": "green"}, "config key 'colour.name': unknown colour 'green'; allowed: blue, navy, red"),
    ({"colour": {"name": 3}}, "config key 'colour.name': unknown colour 3; allowed: blue, navy, red"),
    ({"colour": ["red", "blue"]}, "config key 'colour': one colour per run (a name or a mapping), got ['red', 'blue']"),
    ({"colour": 3}, "config key 'colour': expected a name or a mapping, got 3"),
    ({"colour": {"depth": 2}}, "unknown config key 'colour.depth'; allowed: name, shade"),
    ({"brsh": {}}, "unknown config key 'brsh' (did you mean 'brush'?); allowed: colour, brush, ratio, mode, note, "
                   "sizes, wet, extra, anything, shape, kit, plain"),
    ({"extra": [1]}, "config key 'extra': expected dict, got [1]"),
    ({"kit": {"colour": "green"}}, "config key 'kit.colour.name': unknown colour 'green'; allowed: blue, navy, red"),
])
def test_a_refused_value_names_its_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        build(data)


def test_range_edges_are_allowed_or_not_as_declared():
    assert build({"colour": {"shade": 0.0}}).colour.shade == 0.0  # min inclusive
    assert build({"colour": {"shade": 1.0}}).colour.shade == 1.0  # max inclusive
    assert build({"brush": {"size": 1}}).brush.size == 1
    assert build({"ratio": 1e-9}).ratio == 1e-9  # just above an exclusive min
    assert build({"note": None, "sizes": None}).note is None


def test_registry_entries_names_and_registration():
    assert COLOURS.names() == ["blue", "navy", "red"]
    navy = COLOURS.entry("navy")
    assert (navy.name, navy.target, navy.config_cls, navy.preset, navy.summary) == (
        "navy", Blue, BlueConfig, {"depth": 9}, "a darker blue")
    assert COLOURS.entry("blue").summary == "" and COLOURS.entry("red").preset == {}
    with pytest.raises(ValueError, match="^colour 'red' registered twice$"):
        COLOURS.register("red", RedConfig)(Red)
    preset = {"depth": 2}
    COLOURS.register("teal", BlueConfig, preset=preset)(Blue)
    try:
        preset["depth"] = 7  # the registry keeps its own copy
        teal = COLOURS.entry("teal")
        assert (teal.name, teal.target, teal.config_cls, teal.preset, teal.summary) == (
            "teal", Blue, BlueConfig, {"depth": 2}, "")
        assert build({"colour": "teal"}).colour == BlueConfig(name="teal", depth=2)
    finally:
        COLOURS.unregister("teal")
    assert "teal" not in COLOURS.names()
    with pytest.raises(ConfigError, match="^config key 'paint.colour.name': unknown colour 'teal'"):
        COLOURS.entry("teal", "paint.colour.name")


def test_merge_config_merges_the_same_entry_and_replaces_another():
    base = {"colour": {"name": "navy", "depth": 7}, "brush": {"size": 3, "tags": ["x"]}, "extra": {"a": {"b": 1}},
            "ratio": 0.2}
    assert merge_config(PaintConfig, base, {"colour": {"depth": 8}})["colour"] == {"name": "navy", "depth": 8}
    assert merge_config(PaintConfig, base, {"colour": {"name": "navy"}})["colour"] == {"name": "navy", "depth": 7}
    assert merge_config(PaintConfig, base, {"colour": "blue"})["colour"] == {"name": "blue"}
    assert merge_config(PaintConfig, base, {"colour": {"name": "red", "shade": 0.1}})["colour"] == {
        "name": "red", "shade": 0.1}
    assert merge_config(PaintConfig, {}, {"colour": {"shade": 0.3}})["colour"] == {"shade": 0.3}
    # neither names one, or only one names the default: both are the default entry, merged
    assert merge_config(PaintConfig, {"colour": {"shade": 0.1}}, {"colour": {}})["colour"] == {"shade": 0.1}
    assert merge_config(PaintConfig, {"colour": {"shade": 0.1}}, {"colour": {"name": "red"}})["colour"] == {
        "shade": 0.1, "name": "red"}
    # a choice inside a plain section merges as a choice: another entry replaces the old one's options
    kit = merge_config(PaintConfig, {"kit": {"colour": {"name": "navy", "depth": 7}}}, {"kit": {"colour": "blue"}})
    assert kit["kit"] == {"colour": {"name": "blue"}}
    merged = merge_config(PaintConfig, base, {"brush": {"size": 4}, "extra": {"a": {"c": 2}}, "ratio": 0.3})
    assert merged["brush"] == {"size": 4, "tags": ["x"]} and merged["ratio"] == 0.3
    assert merged["extra"] == {"a": {"b": 1, "c": 2}}  # a plain mapping merges key by key, nested too
    assert merge_config(PaintConfig, base, {"brush": None})["brush"] is None  # not a mapping: replaces
    assert base["colour"] == {"name": "navy", "depth": 7} and base["brush"] == {"size": 3, "tags": ["x"]}


SHAPES = Registry("shape", "shape.name")


@dataclass(frozen=True)
class DotConfig(NamedConfig):
    name: str = option("dot")


@dataclass(frozen=True)
class RingConfig(NamedConfig):
    name: str = option("ring")
    colour: NamedConfig = choice(COLOURS, "red")  # a choice that only this entry's class holds


SHAPES.register("dot", DotConfig)(Red)
SHAPES.register("ring", RingConfig)(Blue)


@dataclass(frozen=True)
class CanvasConfig:
    shape: NamedConfig = choice(SHAPES, "dot")


def test_a_chosen_entry_merges_by_its_own_class_not_the_defaults():
    """Merged over a ring, the ring's colour is a choice (another colour replaces navy's options), which the
    default entry's class (dot) does not know."""
    base = {"shape": {"name": "ring", "colour": {"name": "navy", "depth": 7}}}
    merged = merge_config(CanvasConfig, base, {"shape": {"colour": {"name": "blue"}}})
    assert merged == {"shape": {"name": "ring", "colour": {"name": "blue"}}}
    assert build_section(CanvasConfig, merged, "").shape.colour == BlueConfig(name="blue", depth=5)


def test_describe_lists_every_key_with_its_default_and_help():
    assert describe(PaintConfig) == [
        ("colour.name", "red", "the colour (one of: blue, navy, red)"),
        ("colour.shade", "0.5", "how dark"),
        ("brush.size", "2", "bristles"),
        ("brush.tags", "[a]", "labels"),
        ("ratio", "0.5", ""),
        ("mode", "a", ""),
        ("note", "null", ""),
        ("sizes", "null", ""),
        ("wet", "false", ""),
        ("extra", "{}", ""),
        ("anything", "null", ""),
        ("shape", "[1, 2]", ""),
        ("kit.colour.name", "red", "(one of: blue, navy, red)"),
        ("kit.colour.shade", "0.5", "how dark"),
        ("plain", "0", ""),
    ]


def test_describe_follows_the_entry_an_instance_chose():
    paint = build({"colour": "navy", "brush": {"size": 7}})
    rows = describe(PaintConfig, "paint", paint)
    assert rows[:3] == [("paint.colour.name", "navy", "the colour (one of: blue, navy, red)"),
                        ("paint.colour.depth", "9", ""), ("paint.brush.size", "7", "bristles")]


def test_merge_replaces_what_is_not_a_mapping_on_either_side():
    assert merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}, "d": 1}
    assert merge({"a": {"b": 1}}, {"a": 3}) == {"a": 3}
    assert merge({"a": 3}, {"a": {"b": 1}}) == {"a": {"b": 1}}
