"""JSON text, byte for byte what the standard library writes, at orjson's speed.

`dumps_indented` is `json.dumps(obj, indent=2)` (the JSON report: the standard library has no
C path for indented output, and its pure-Python one is most of a 10,000-service report's cost);
`dumps_compact` is `json.dumps(obj, separators=(",", ":"), allow_nan=False)` (the store's
rows). orjson writes the same text for plain values except in two ways: non-ASCII characters
and DEL come out raw (here escaped as `\\uXXXX`, surrogate pairs above the BMP, as
`ensure_ascii` does: it also keeps lone surrogates from server strings encodable as UTF-8),
and floats outside [1e-4, 1e16) take another exponent form (NaN and the infinities become
null). A value holding such a float, or anything but dicts, lists, tuples, str, int, bool,
None and float, is written by the standard library itself, as are those orjson refuses (lone
surrogates, integers wider than 64 bits, keys that are not strings).

Owns: `dumps_indented`, `dumps_compact`, `dumps_both`, and `loads` (`json.loads`, the same
value, read by orjson when it can). Must not: know any schema (any JSON-compatible value).
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

__all__ = ["dumps_both", "dumps_compact", "dumps_indented", "loads"]

_NOT_ASCII = re.compile(r"[^\n -~]")
_LONG_DIGITS = re.compile(r"[0-9]{19}")


def dumps_indented(obj: Any) -> str:
    """`json.dumps(obj, indent=2)`, the same text."""
    if not _plain(obj):
        return json.dumps(obj, indent=2)
    import orjson  # on first use: not before a scan's packets

    try:
        text = orjson.dumps(obj, option=_options() | orjson.OPT_INDENT_2).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(obj, indent=2)
    if not text.isascii() or "\x7f" in text:
        # Outside strings orjson writes only ASCII, and inside them it escapes the controls
        # (newline included) as json does: what is left raw is in a string.
        text = _NOT_ASCII.sub(_escaped, text)
    return text


# One encoder for every call: json.dumps with options builds a new one each time.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def dumps_compact(obj: Any) -> str:
    """`json.dumps(obj, separators=(",", ":"), allow_nan=False)`, the same text (and the same
    ValueError for NaN or an infinity)."""
    if not _plain(obj):
        return _COMPACT.encode(obj)
    import orjson

    try:
        text = orjson.dumps(obj, option=_options()).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is one
        return _COMPACT.encode(obj)
    if not text.isascii() or "\x7f" in text:
        text = _NOT_ASCII.sub(_escaped, text)
    return text


def dumps_both(obj: Any) -> tuple[str | None, str]:
    """(`dumps_compact(obj)`, `dumps_indented(obj)`), `obj` looked through once; the compact
    text is None where `dumps_compact` would raise (NaN, an infinity, a type json refuses)."""
    if not _plain(obj):
        try:
            compact: str | None = _COMPACT.encode(obj)
        except (TypeError, ValueError):
            compact = None
        return compact, json.dumps(obj, indent=2)
    import orjson

    options = _options()
    try:
        compact = orjson.dumps(obj, option=options).decode("utf-8")
        indented = orjson.dumps(obj, option=options | orjson.OPT_INDENT_2).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is one
        try:
            compact = _COMPACT.encode(obj)
        except (TypeError, ValueError):
            compact = None
        return compact, json.dumps(obj, indent=2)
    if not compact.isascii() or "\x7f" in compact:
        compact = _NOT_ASCII.sub(_escaped, compact)
        indented = _NOT_ASCII.sub(_escaped, indented)
    return compact, indented


def loads(text: str) -> Any:
    """`json.loads(text)`, the same value: orjson reads it unless it refuses (NaN and the
    infinities, lone surrogates, anything not JSON), and then the standard library does, with
    its own errors. A text with a run of 19 digits anywhere goes to the standard library
    directly: orjson reads an integer outside 64 bits as a float."""
    if _LONG_DIGITS.search(text):
        return json.loads(text)
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


@cache
def _options() -> int:
    """Dataclasses and datetimes refused, as json.dumps refuses them, not written orjson's way."""
    import orjson

    return orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}"


def _plain(obj: Any) -> bool:
    """Only the JSON types, and no float that orjson writes unlike `repr` (exact types: a
    subclass such as an enum is left to json)."""
    stack = [obj]
    pop, extend = stack.pop, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            extend(value.values())
        elif kind is list or kind is tuple:
            extend(value)
        elif kind is str or kind is int or kind is bool or value is None:
            continue
        elif kind is float:
            if not (value == 0.0 or 1e-4 <= abs(value) < 1e16):  # NaN fails both
                return False
        else:
            return False
    return True
