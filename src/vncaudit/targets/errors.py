"""One-line `UsageError`s for bad target input.

Owns: `_err` (a `UsageError` whose text is one line whatever the input held) and `_show` (user
input quoted and shortened for a message). Every module of `vncaudit.targets` reports bad input
through these two, so every message looks the same.

Must not: import anything of the package but `exceptions`, or do any I/O.
"""

from __future__ import annotations

from vncaudit.exceptions import UsageError


def _err(message: str) -> UsageError:
    return UsageError(message.replace("\r", " ").replace("\n", " "))


def _show(text: str, limit: int = 80) -> str:
    """repr() of user input, shortened: one line whatever the input held."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
