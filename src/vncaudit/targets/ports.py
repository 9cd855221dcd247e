"""The port syntax: `parse_ports`, `format_ports`, and the check of a port sequence.

Owns: port list items (`5900`, `5900-5999`, `5900-`, `-100`, `-`, `all`), VNC displays (`:0`,
`:0-:9`), `DEFAULT_PORTS` and the display base 5900.

Must not: do any I/O or import anything of the package but `exceptions` (through
`targets.errors`). Every bad item is a one-line `UsageError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from vncaudit.exceptions import UsageError
from vncaudit.targets.errors import fail, quote

DEFAULT_PORTS: Final = "5800,5900-5910"
VNC_DISPLAY_BASE: Final = 5900  # display :N listens on 5900 + N (5900: RFB's IANA port)

PORT_NUMBER = re.compile(r"[0-9]{1,7}")  # ASCII digits only, bounded (int() takes "٥" and "5_9")


def parse_ports(spec: str) -> tuple[int, ...]:
    """Parse a port list into sorted, unique ports.

    Items are comma-separated: `5900`, `5900-5999`, `5900-` (to 65535), `-100` (from 1),
    `-` / `all` (1-65535), and VNC displays `:0` (5900) or `:0-:9` / `:0-9` (5900-5909).
    """
    if not spec.strip():
        raise fail("empty port list; give ports like 5900-5910,5800 or displays like :0-:9")
    ports: set[int] = set()
    for item in spec.split(","):
        first, last = _port_item(item.strip(), spec)
        ports.update(range(first, last + 1))
    return tuple(sorted(ports))


def _port_item(item: str, spec: str) -> tuple[int, int]:
    def bad(why: str) -> UsageError:
        return fail(f"invalid port list {quote(spec)}: {why}")

    def number(text: str, what: str) -> int:
        if not PORT_NUMBER.fullmatch(text):
            raise bad(f"{quote(text)} is not a {what}")
        return int(text)

    def port(text: str) -> int:
        value = number(text.strip(), "port number")
        if not 1 <= value <= 65535:
            raise bad(f"port {value} is outside 1-65535")
        return value

    def display(text: str) -> int:
        text = text.strip()
        value = number(text[1:] if text.startswith(":") else text, "display number")
        if VNC_DISPLAY_BASE + value > 65535:
            raise bad(f"display :{value} would be port {VNC_DISPLAY_BASE + value} > 65535")
        return VNC_DISPLAY_BASE + value

    if not item:
        raise bad("empty item")
    if item == "-" or item.lower() == "all":
        return 1, 65535
    left, dash, right = item.partition("-")
    if left.strip().startswith(":"):
        first = display(left)
        last = display(right) if dash else first
    else:
        first = port(left) if left.strip() else 1
        last = (port(right) if right.strip() else 65535) if dash else first
    if last < first:
        raise bad(f"range {quote(item)} is reversed")
    return first, last


def format_ports(ports: Iterable[int]) -> str:
    """The shortest port list string for *ports*: (5800, 5900, 5901, 5902) -> "5800,5900-5902"."""
    items: list[str] = []
    values = sorted(set(ports))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        items.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(items)


def check_ports(ports: Sequence[int]) -> tuple[int, ...]:
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise fail(f"invalid port {p!r}: ports are integers 1-65535")
    return tuple(sorted(set(ports)))
