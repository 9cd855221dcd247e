"""Option values converted without a pydantic model per option, with typer's own results.

Owns: `install()`, which gives every option of the commands that is a plain `str`,
`int`, `float`, `bool` or `Path` (or a list of them, or optional) a converter that does what typer's
does for ordinary input. typer 0.29 builds a pydantic `TypeAdapter` for each option the first
time a value passes through it: for `vncaudit scan`, about forty of them and the pydantic
import, the larger part of the time before the first packet. Whatever such a converter is not
sure of (a number with a sign, spaces or an exponent, a value out of range, an empty path,
anything not a string) goes to typer's own converter, built then as it would have been, which
gives typer's exact value or error message.

Must not: change a value or an error typer would give (tests/test_cli_startup.py compares them
for every option of every command), or be needed: with another typer (its private
`_runtime_param` hook absent) nothing is installed and typer converts as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_INT = re.compile(r"0|[1-9][0-9]{0,17}")
_FLOAT = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,15})?")


class _Unsure(Exception):
    """This value is typer's to convert."""


try:  # typer's coercion layer (private, typer 0.29): absent elsewhere, and then unused
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path
except ImportError:  # pragma: no cover - another typer
    RuntimeParam = None  # type: ignore[assignment,misc]


def _number(kind: type[Any], value: Any, low: Any, high: Any) -> Any:
    if isinstance(value, str):
        if not (_INT if kind is int else _FLOAT).fullmatch(value):
            raise _Unsure
        number = kind(value)
    elif isinstance(value, kind) and not isinstance(value, bool):
        number = value
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        number = float(value)
    else:
        raise _Unsure
    if (low is not None and number < low) or (high is not None and number > high):
        raise _Unsure  # typer words the range error
    return number


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class PlainConverter(RuntimeParam):
        """A plain option's converter; typer's own takes over for anything unusual."""

        kind: type[Any]
        many: bool

        def _one(self, value: Any, param: Any, ctx: Any) -> Any:
            kind, info = self.kind, self.parameter_info
            if kind is bool:
                if isinstance(value, bool):
                    return value
                raise _Unsure
            if kind is str:
                if isinstance(value, str):
                    return value
                raise _Unsure
            if kind is int or kind is float:
                return _number(kind, value, info.min, info.max)
            if isinstance(value, str) and value:
                return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
            if isinstance(value, Path):
                return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
            raise _Unsure

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if self.many:
                    items = value if isinstance(value, (list, tuple)) else [value]
                    return [self._one(item, param, ctx) for item in items]
                return self._one(value, param, ctx)
            except _Unsure:
                return build_runtime_param(param.type_descriptor)._coerce_value(value, param,
                                                                               ctx)


def plain_kind(param: Any) -> tuple[type[Any], bool] | None:
    """(element type, is a list) for an option `PlainConverter` can take, else None."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or descriptor.file_annotation is not None:
        return None
    info = descriptor.parameter_info
    if (getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None
            or getattr(info, "clamp", False)):
        return None
    annotation, many = descriptor.annotation, False
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        (annotation,) = annotation.__args__
        many = True
    if annotation in (str, int, float, bool):
        return annotation, many
    if annotation is Path and info.path_type is None:
        return Path, many
    return None


def install() -> bool:
    """From now on, typer builds a `PlainConverter` converter for every plain option (its converters
    are built lazily, on first use; the help option is made afresh per run), typer's own for
    the rest. Once per process; False with a typer that has no such hook."""
    if RuntimeParam is None:
        return False
    try:
        from typer.core import _TyperParameter
    except ImportError:  # pragma: no cover - another typer
        return False
    original = getattr(_TyperParameter, "get_runtime_param", None)
    if original is None:  # pragma: no cover - another typer
        return False
    if getattr(original, "plain", False):
        return True

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            kind = plain_kind(self)
            if kind is not None:
                descriptor = self.type_descriptor
                self._runtime_param = PlainConverter(descriptor.parameter_info,
                                                     descriptor.annotation, *kind)
        return original(self)

    get_runtime_param.plain = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]
    return True
