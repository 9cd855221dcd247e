"""jsontext.py: its JSON is the standard library's text, byte for byte."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit.jsontext import dumps_both, dumps_compact, dumps_indented, loads

_SCALARS = (
    st.none() | st.booleans() | st.text() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=1e-4, max_value=1e16)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(_VALUES)
def test_same_text_as_json_dumps(value: Any) -> None:
    assert dumps_indented(value) == json.dumps(value, indent=2)
    expected: str | None = None
    try:
        expected = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError):
            dumps_compact(value)
    else:
        assert dumps_compact(value) == expected
    # Both at once: the same two texts, the compact one None where dumps_compact raises.
    assert dumps_both(value) == (expected, json.dumps(value, indent=2))


def test_hostile_strings_and_edge_values() -> None:
    text = "".join(chr(c) for c in range(0x100)) + "\u2028\U0001f600\ud800"
    for value in (
        {"desktop": text[:-1], "n": [1.5, 0.0001, 1e-05, 1e16, -0.0, 2**63, 2**64]},
        {"desktop": text}, [math.nan], [math.inf], {1: "int key"}, (1, 2), [], {}, "x", 5,
    ):
        assert dumps_indented(value) == json.dumps(value, indent=2)
        if value not in ([math.nan], [math.inf]):
            assert dumps_compact(value) == json.dumps(value, separators=(",", ":"))
            assert dumps_both(value) == (dumps_compact(value), dumps_indented(value))
        else:
            assert dumps_both(value) == (None, json.dumps(value, indent=2))


@settings(max_examples=400, deadline=None)
@given(_VALUES)
def test_loads_reads_what_json_loads_reads(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=2), json.dumps(value,
                                                                          ensure_ascii=False)):
        expected = json.loads(text)
        got = loads(text)
        # NaN is not equal to itself: compare the texts they make again.
        assert json.dumps(got) == json.dumps(expected)
        assert type(got) is type(expected)


def test_loads_fails_as_json_loads_fails() -> None:
    for text in ('{"a": ', "[1,]", "", "nul"):
        with pytest.raises(json.JSONDecodeError):
            loads(text)
    assert math.isnan(loads("[NaN]")[0]) and loads('"\\ud800"') == "\ud800"
    assert loads(str(2**70)) == 2**70
