"""One-line `UsageError`s for bad target input.

Owns: `fail` (a `UsageError` whose text is one line whatever the input held) and `quote` (user
input quoted and shortened for a message). Every module of `vncaudit.targets` reports bad input
through these two, so every message looks the same.

Must not: import anything of the package but `exceptions`, or do any I/O.
"""

from __future__ import annotations

from vncaudit.exceptions import UsageError


def fail(message: str) -> UsageError:
    return UsageError(message.replace("\r", " ").replace("\n", " "))


def quote(text: str, limit: int = 80) -> str:
    """repr() of user input, shortened: one line whatever the input held."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
