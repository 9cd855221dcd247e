"""Indented JSON text, byte for byte what `json.dumps(obj, indent=2)` writes, at C speed.

The standard library's encoder has no C path for indented output: on a report of 10,000
services its pure-Python one is most of the report's cost. orjson indents in C and writes the
same text for plain values except in two ways: non-ASCII characters and DEL come out raw (here
escaped as `\\uXXXX`, surrogate pairs above the BMP, as `ensure_ascii` does), and floats
outside [1e-4, 1e16) take another exponent form (NaN and the infinities become null). A
document holding such a float, or anything but dicts, lists, tuples, str, int, bool, None and
float, is written by `json.dumps` itself, as are those orjson refuses (lone surrogates,
integers wider than 64 bits, keys that are not strings).

Owns: `dumps_indented`. Must not: know the report's schema (any JSON-compatible value).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["dumps_indented"]

_NOT_ASCII = re.compile(r"[^\n -~]")
# Dataclasses and datetimes are refused, as json.dumps refuses them, not written orjson's way.
_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps_indented(obj: Any) -> str:
    """`json.dumps(obj, indent=2)`, the same text."""
    if not _plain(obj):
        return json.dumps(obj, indent=2)
    try:
        text = orjson.dumps(obj, option=_OPTIONS).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(obj, indent=2)
    if not text.isascii() or "\x7f" in text:
        # Outside strings orjson writes only ASCII, and inside them it escapes the controls
        # (newline included) as json does: what is left raw is in a string.
        text = _NOT_ASCII.sub(_escaped, text)
    return text


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
