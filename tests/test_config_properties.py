"""Property-based: whatever values and types reach the config loader or the CLI's overrides, the outcome is
a valid config or one clear error (exit 2, one line), never a traceback."""

import pytest
from conftest import CONFIGS, run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cissl.config import Config, describe, load_config
from cissl.errors import CisslError

KEYS = [key for key, _, _ in describe(Config)]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True), TEXT)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(TEXT, SCALARS, max_size=3))
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k + ".x"), TEXT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEY, VALUES), min_size=1, max_size=4))
@example([("data.dataset", [])]).via("found in CI: the own-data check looked a list up as a data set name")
@example([("data.dataset", {"a": 1})])
def test_any_values_give_a_config_or_a_one_line_error(items):
    config = load_config(CONFIGS / "quickstart.yaml")
    try:
        config.replace(dict(items))
    except CisslError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), TEXT), min_size=1, max_size=3))
def test_cli_overrides_exit_0_or_2_with_one_line(capsys, items):
    overrides = [f"{key}={text}" for key, text in items]
    try:
        code, _, err = run_cli(["split", "--config", CONFIGS / "quickstart.yaml", "--counts-only", *overrides],
                               capsys)
    except SystemExit as exc:  # argparse's own refusal (e.g. a value that looks like an option)
        code, err = exc.code, capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err  # argparse adds a usage line


def test_the_properties_reach_errors():
    """The strategies above are not vacuous: they include values the loader refuses."""
    with pytest.raises(CisslError):
        load_config(CONFIGS / "quickstart.yaml").replace({"optim.lr": "fast"})


def test_found_by_the_properties():
    """A list where a registry name belongs (a TypeError before), a key with a line break (two lines before)."""
    config = load_config(CONFIGS / "quickstart.yaml")
    with pytest.raises(CisslError, match="unknown pseudo-label refiner"):
        config.replace({"algorithm.refiner.name": []})
    with pytest.raises(CisslError) as caught:
        config.replace({"a\nb": 1})
    assert "\n" not in str(caught.value) and "a\\nb" in str(caught.value)
