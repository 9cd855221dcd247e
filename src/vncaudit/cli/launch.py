"""The process's entry (the console script `vncaudit.cli:run`, `python -m vncaudit`): a scan's
first packets first, then the program.

Owns: `run` (an early start when the command line allows it, then `cli.program.run`, which
parses it for real and runs it), and `preparse`, a strict reading of `vncaudit scan` command
lines that recognises a small, safe subset only: literal IPv4 addresses and CIDRs as targets
(none in a special network: `SPECIAL_V4`), `-p/--ports` as numbers and ranges, `--discovery
syn` or `connect` (the default), `--rate`, `--retries`, `--timeout`, `--concurrency`, `--db`,
and the output options that change nothing before the first packet (`-o table|json|jsonl`,
`--output-file` naming a new file, `--all`, `-q/--quiet`, `-v/--verbose`). Anything else
(another token, form or option, an option given twice, a value typer would read differently or
refuse, a special network, a completion request) and there is no early start: the program runs
exactly as it would without this module. The early start itself is `vncaudit.synstart` (which
needs raw-socket rights) or `vncaudit.connstart` (whose one connection is admitted by the
connection ledger's rule first).

Imports `os` and `sys` only until it has decided (and `vncaudit.synstart` or `connstart` when
it starts early): it runs before typer, asyncio, numpy and the store. Must not: accept a
command line that the full parse would refuse or read differently (tests/test_launch.py checks
it against typer's over generated command lines), print (but the one line of a Ctrl-C while
the early start's batches go out, or while the program loads), or fail: any error in the
early start means no early start.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Final

    from vncaudit.synstart import EarlyPlan

DEFAULT_PORTS: Final = ((5800, 5800), (5900, 5910))  # spec.DEFAULT_PORTS, as ranges
OUTPUTS: Final = ("table", "json", "jsonl")  # of cli.common.OUTPUTS: those without a file

# The IPv4 networks of targets.SPECIAL_NETWORKS (refused without --allow-special), as
# (first, last) addresses: a target that reaches one is left to the full parse, which refuses
# it with its own message (tests/test_launch.py checks the two tables agree).
SPECIAL_V4: Final = (
    (0x00000000, 0x00FFFFFF),  # 0.0.0.0/8
    (0xFFFFFFFF, 0xFFFFFFFF),  # 255.255.255.255/32
    (0xE0000000, 0xEFFFFFFF),  # 224.0.0.0/4
    (0xF0000000, 0xFFFFFFFF),  # 240.0.0.0/4
    (0xC0000200, 0xC00002FF),  # 192.0.2.0/24
    (0xC6336400, 0xC63364FF),  # 198.51.100.0/24
    (0xCB007100, 0xCB0071FF),  # 203.0.113.0/24
)

# option -> its name in the plan; those that take a value, and the flags
_VALUES: Final = {"-p": "ports", "--ports": "ports", "--rate": "rate", "--retries": "retries",
                  "--timeout": "timeout", "--discovery": "discovery", "--db": "db",
                  "--concurrency": "concurrency", "-o": "output", "--output": "output",
                  "--output-file": "output_file"}
_FLAGS: Final = {"--all": "all", "-q": "quiet", "--quiet": "quiet"}
_COUNTED: Final = ("-v", "--verbose")


def run() -> None:
    """The process's entry: the early start when `preparse` allows one, then the program."""
    try:
        plan = preparse(sys.argv[1:], os.environ)
        if plan is not None and plan.mode == "syn":
            from vncaudit import synstart

            try:
                synstart.start(plan)
            except KeyboardInterrupt:  # while its batches went out: they stop, nothing else ran
                early = synstart.claim()
                if early is not None:
                    early.close()
                sys.stderr.write("vncaudit: error: interrupted; nothing recorded\n")
                raise SystemExit(130) from None
        elif plan is not None:
            from vncaudit import connstart

            connstart.start(plan)
    except Exception:  # the program runs, and reports, as it would without an early start
        pass
    except KeyboardInterrupt:  # Ctrl-C before the program loaded: nothing to report yet
        raise SystemExit(130) from None
    try:
        from vncaudit.cli.program import run as run_program

        run_program()
    except KeyboardInterrupt:
        # Ctrl-C while the program loaded, before a command ran (a command's own Ctrl-C is
        # its one line and exit 130): an early start not taken over yet stops, unrecorded.
        loaded = sys.modules.get("vncaudit.synstart")
        early = loaded.claim() if loaded is not None else None
        if early is not None:
            early.close()
        sys.stderr.write("vncaudit: error: interrupted"
                         + ("; nothing recorded\n" if early is not None else "\n"))
        raise SystemExit(130) from None


def preparse(args: Sequence[str], environ: Mapping[str, str]) -> EarlyPlan | None:
    """The plan of a `vncaudit scan` command line inside the safe subset (see the module's
    docstring), or None."""
    if not args or args[0] != "scan" or any(k.startswith("_VNCAUDIT_COMPLETE") for k in environ):
        return None
    given: dict[str, str] = {}
    targets: list[tuple[int, int]] = []
    rest = iter(args[1:])
    for token in rest:
        if token in _COUNTED:
            continue
        if not token.startswith("-"):
            block = _network(token)
            if block is None:
                return None
            targets.append(block)
            continue
        name, equals, value = token.partition("=")
        if equals and not name.startswith("--"):
            return None  # -p=5900: click reads the value "=5900"
        if name in _FLAGS and not equals:
            key, value = _FLAGS[name], ""
        elif name in _VALUES:
            key = _VALUES[name]
            if not equals:
                value = next(rest, "")
            if not value or value.startswith("-"):
                return None
        else:
            return None
        if key in given:
            return None  # typer keeps the last; an early start does not guess
        given[key] = value
    return _plan(targets, given)


def _plan(targets: list[tuple[int, int]], given: dict[str, str]) -> EarlyPlan | None:
    mode = given.get("discovery", "connect")
    if not targets or mode not in ("syn", "connect"):
        return None
    if "output" in given and given["output"] not in OUTPUTS:
        return None
    ports = _ports(given["ports"]) if "ports" in given else expand_ports(DEFAULT_PORTS)
    rate = _decimal(given["rate"]) if "rate" in given else None
    timeout = _decimal(given["timeout"]) if "timeout" in given else 5.0
    retries = _whole(given["retries"]) if "retries" in given else None
    if (not ports or ("rate" in given and (rate is None or rate < 0.1))
            or timeout is None or timeout < 0.1 or ("retries" in given and retries is None)):
        return None
    if "concurrency" in given and not _whole(given["concurrency"]):
        return None
    if "db" in given and not _usable_db(given["db"]):
        return None
    if "output_file" in given and not _new_output_file(given["output_file"]):
        return None
    from vncaudit.targets.blocks import merge_blocks

    blocks = merge_blocks(targets)
    for first, last in blocks:
        for s_first, s_last in SPECIAL_V4:
            if first <= s_last and s_first <= last:
                return None
    from vncaudit.synstart import EarlyPlan

    return EarlyPlan(tuple(blocks), ports, rate, retries, timeout, mode, given.get("db"))


def _octets(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    address = 0
    for part in parts:
        number = _whole(part, 3)
        if number is None or number > 255:
            return None
        address = address << 8 | number
    return address


def _network(text: str) -> tuple[int, int] | None:
    """(first, last) of a literal IPv4 address or CIDR (`10.0.0.1`, `10.0.0.0/24`, host bits
    allowed as the target parser allows them), None for anything else."""
    address_text, slash, prefix_text = text.partition("/")
    address = _octets(address_text)
    if address is None:
        return None
    if not slash:
        return address, address
    prefix = _whole(prefix_text, 2)
    if prefix is None or prefix > 32:
        return None
    size = 1 << (32 - prefix)
    first = address & ~(size - 1) & 0xFFFFFFFF
    return first, first + size - 1


def _whole(text: str, digits: int = 9) -> int | None:
    """A number of ASCII digits without a leading zero (and not longer than `digits`)."""
    if not (0 < len(text) <= digits and text.isascii() and text.isdigit()):
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    return int(text)


def _decimal(text: str) -> float | None:
    """`12` or `1.5`: digits, no leading zero, at most one point with digits after it."""
    whole, point, fraction = text.partition(".")
    if _whole(whole, 12) is None:
        return None
    if point and not (0 < len(fraction) <= 9 and fraction.isascii() and fraction.isdigit()):
        return None
    return float(text)


def _ports(text: str) -> tuple[int, ...] | None:
    """A port list of numbers and ranges (`5900`, `5900-5910,5800`), sorted and unique."""
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        left, dash, right = item.partition("-")
        first = _whole(left, 5)
        last = _whole(right, 5) if dash else first
        if first is None or last is None or not 1 <= first <= last <= 65535:
            return None
        ranges.append((first, last))
    return expand_ports(tuple(ranges))


def expand_ports(ranges: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """The ports of (first, last) ranges, sorted and unique."""
    ports: set[int] = set()
    for first, last in ranges:
        ports.update(range(first, last + 1))
    return tuple(sorted(ports))


def _new_output_file(text: str) -> bool:
    """--output-file names a file that does not exist yet, in a directory that exists and
    that this process may write to: what the full command accepts (`check_output_file`)
    without asking which store or input it must not overwrite (a file that does not exist
    is none of them). Any other path (an existing file, `~`, a trailing slash, spaces around
    it) is left to it."""
    if text != text.strip() or text.startswith("~") or text.endswith("/"):
        return False
    if os.path.lexists(text):
        return False
    parent = os.path.dirname(text) or "."
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def _usable_db(text: str) -> bool:
    """--db names a file the store can open as the full command checks it (`open_store`): not
    a directory, in a directory that exists. A path that needs more reading (`~`, a trailing
    slash) is left to it."""
    if text == ":memory:":
        return True
    if text.startswith("~") or text.endswith("/") or os.path.isdir(text):
        return False
    return os.path.isdir(os.path.dirname(text) or ".")
