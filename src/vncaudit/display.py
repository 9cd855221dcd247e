"""How text a server sent is shown to a person: control characters escaped, length bounded.

Owns: the one rule every human-facing view (terminal tables and findings, the HTML report, the
web pages, finding and product evidence) applies to server-supplied strings such as failure
reasons and desktop names: a reason may be 64 KiB of binary (a server answering in the RFB 3.3
form with garbage), and a terminal or a table cell must show a short, inert line instead.
Must not: change stored data (the JSON/CSV/XML exports keep every byte the limits let through),
or import anything of the package.
"""

from __future__ import annotations

from typing import Final

SHOWN_CHARS: Final = 160  # what a table cell or an evidence line shows of a server's string


def escape(text: str) -> str:
    """`text` with every character a terminal would act on (control and format characters:
    ANSI escapes, bidi overrides, line breaks) written as a visible escape (\\x1b, \\u202e)."""
    if text.isprintable():  # the common case, checked in C: nothing to escape
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


def _cut(text: str, limit: int) -> tuple[str, int]:
    """The longest prefix of `text` whose escaped form fits `limit`, and how many characters
    were left out (never half an escape)."""
    if len(text) <= limit and text.isprintable():  # every character is its own escape
        return text, 0
    out: list[str] = []
    used = 0
    for i, c in enumerate(text):
        piece = escape(c)
        if used + len(piece) > limit:
            return "".join(out), len(text) - i
        out.append(piece)
        used += len(piece)
    return "".join(out), 0


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` escaped and at most about `limit` characters long; a longer one ends with
    "… (+N characters)" so the reader knows it was cut and by how much."""
    head, left = _cut(text, limit)
    return head if not left else f"{head}… (+{left} characters)"


def quoted(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` in double quotes (a quote or backslash in it escaped as JSON writes them, every
    control or format character as `escape` does), cut like `shown`."""
    head, left = _cut(text.replace("\\", "\\\\").replace('"', '\\"'), limit)
    return f'"{head}"' + (f"… (+{left} characters)" if left else "")
