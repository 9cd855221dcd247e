"""Parse and stream scan targets and ports: expressions, input files, exclusions, policy.

Owns: the port syntax (`parse_ports`), target expressions (IPv4/IPv6 addresses, CIDRs, ranges,
hostnames, `-iL` lists, nmap XML, masscan output), exclusions, the table of special networks that
need `allow_special`, and the randomised, shardable walk over the (address, port) space
(`TargetSpace.iter_targets`, a zmap-style cyclic group permutation).

Must not: open sockets or send packets (its only I/O is reading the files the user named and
resolving the hostnames the user gave, once each, through an injectable resolver); materialise a
range (memory is flat in the size of a CIDR or range: a space stores one entry per merged
interval, never per address); import anything of the package but `models` and `exceptions`.
Every user-input error is a `UsageError` with one line that names the bad input.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import re
import secrets
import socket
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count as _counter
from pathlib import Path
from typing import IO, Any, Final, NoReturn
from xml.parsers import expat

from vncaudit.exceptions import UsageError
from vncaudit.models import Target

log = logging.getLogger(__name__)

DEFAULT_PORTS: Final = "5800,5900-5910"
VNC_DISPLAY_BASE: Final = 5900  # display :N listens on 5900 + N (5900: RFB's IANA port)
MAX_IPV6_EXPRESSION: Final = 2**24  # addresses; a bigger IPv6 expression is refused
PathLike = str | Path
Resolver = Callable[[str], list[str]]

# Networks refused unless allow_special=True: (network, why). Checked in this order; the first
# overlap not covered by an exclusion is named in the error. Loopback, private (RFC 1918, ULA),
# CGNAT, link-local and the benchmark range 198.18.0.0/15 are deliberately NOT here.
SPECIAL_NETWORKS: Final[tuple[tuple[str, str], ...]] = (
    ("0.0.0.0/8", "'this network', not a destination"),  # RFC 1122 §3.2.1.3
    ("255.255.255.255/32", "limited broadcast"),  # RFC 919
    ("224.0.0.0/4", "multicast"),  # RFC 5771
    ("240.0.0.0/4", "reserved"),  # RFC 1112 §4
    ("192.0.2.0/24", "documentation, TEST-NET-1"),  # RFC 5737
    ("198.51.100.0/24", "documentation, TEST-NET-2"),
    ("203.0.113.0/24", "documentation, TEST-NET-3"),
    ("::/128", "IPv6 unspecified address"),  # RFC 4291
    ("::ffff:0:0/96", "IPv4-mapped IPv6, give the IPv4 address instead"),
    ("100::/64", "IPv6 discard-only"),  # RFC 6666
    ("2001:db8::/32", "IPv6 documentation"),  # RFC 3849
    ("ff00::/8", "IPv6 multicast"),
)

# Addresses are handled as one integer "key" space: IPv4 keys are the address, IPv6 keys have bit
# 128 set. IPv4 sorts before IPv6 and the two never touch, so one interval list holds both.
_V6: Final = 1 << 128
_MASK128: Final = _V6 - 1
_PORT_BITS: Final = 16


def _err(message: str) -> UsageError:
    return UsageError(message.replace("\r", " ").replace("\n", " "))


def _show(text: str, limit: int = 80) -> str:
    """repr() of user input, shortened: one line whatever the input held."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


# --------------------------------------------------------------------------------------------
# Ports

_NUMBER = re.compile(r"[0-9]{1,7}")  # ASCII digits only, bounded (int() takes "٥" and "5_9")


def parse_ports(spec: str) -> tuple[int, ...]:
    """Parse a port list into sorted, unique ports.

    Items are comma-separated: `5900`, `5900-5999`, `5900-` (to 65535), `-100` (from 1),
    `-` / `all` (1-65535), and VNC displays `:0` (5900) or `:0-:9` / `:0-9` (5900-5909).
    """
    if not spec.strip():
        raise _err("empty port list; give ports like 5900-5910,5800 or displays like :0-:9")
    ports: set[int] = set()
    for item in spec.split(","):
        first, last = _port_item(item.strip(), spec)
        ports.update(range(first, last + 1))
    return tuple(sorted(ports))


def _port_item(item: str, spec: str) -> tuple[int, int]:
    def bad(why: str) -> UsageError:
        return _err(f"invalid port list {_show(spec)}: {why}")

    def number(text: str, what: str) -> int:
        if not _NUMBER.fullmatch(text):
            raise bad(f"{_show(text)} is not a {what}")
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
        raise bad(f"range {_show(item)} is reversed")
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


def _check_ports(ports: Sequence[int]) -> tuple[int, ...]:
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise _err(f"invalid port {p!r}: ports are integers 1-65535")
    return tuple(sorted(set(ports)))


# --------------------------------------------------------------------------------------------
# Intervals of address keys

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _key(ip: IPAddress) -> int:
    return int(ip) | (_V6 if ip.version == 6 else 0)


def _host_string(key: int) -> str:
    if key < _V6:
        return f"{key >> 24}.{(key >> 16) & 255}.{(key >> 8) & 255}.{key & 255}"
    return str(ipaddress.IPv6Address(key & _MASK128))


def _merge(blocks: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent intervals covering the same keys."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(blocks):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def _subtract(blocks: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """*blocks* minus *cut*; both merged (see `_merge`)."""
    out: list[tuple[int, int]] = []
    j = 0
    for first, last in blocks:
        while j < len(cut) and cut[j][1] < first:
            j += 1
        cur = first
        k = j
        while k < len(cut) and cut[k][0] <= last and cur <= last:
            if cut[k][0] > cur:
                out.append((cur, cut[k][0] - 1))
            cur = max(cur, cut[k][1] + 1)
            k += 1
        if cur <= last:
            out.append((cur, last))
    return out


@dataclass
class _Intervals:
    """Merged intervals with O(log n) membership."""

    firsts: list[int] = field(default_factory=list)
    lasts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, merged: list[tuple[int, int]]) -> _Intervals:
        return cls([a for a, _ in merged], [b for _, b in merged])

    def covers(self, first: int, last: int) -> bool:
        k = bisect_right(self.firsts, first) - 1
        return k >= 0 and self.lasts[k] >= last


_SPECIAL: Final = tuple(
    (_key(net.network_address), _key(net.broadcast_address), f"{net} ({why})")
    for net, why in ((ipaddress.ip_network(n), w) for n, w in SPECIAL_NETWORKS)
)


def _check_special(first: int, last: int, excluded: _Intervals, where: str) -> None:
    for s_first, s_last, name in _SPECIAL:
        lo, hi = max(first, s_first), min(last, s_last)
        if lo <= hi and not excluded.covers(lo, hi):
            verb = "is in" if first == last else "overlaps"
            raise _err(f"{where} {verb} {name}; use --allow-special to scan it anyway")


# --------------------------------------------------------------------------------------------
# Target expressions


@dataclass
class _Parsed:
    norm: str  # normalised expression for describe()
    blocks: list[tuple[int, int]]  # key intervals
    hostname: str | None = None
    zones: dict[int, str] = field(default_factory=dict)  # IPv6 zone index, e.g. fe80::1%eth0


def default_resolver(name: str) -> list[str]:
    """Resolve *name* with `socket.getaddrinfo`: every IPv4 and IPv6 address, in its order."""
    out: list[str] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            addr = str(sockaddr[0])
            if addr not in out:
                out.append(addr)
    return out


class _CachingResolver:
    """Resolves each name once per build and turns every failure into a UsageError."""

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self._cache: dict[str, list[IPAddress]] = {}

    def __call__(self, name: str) -> list[IPAddress]:
        if name not in self._cache:
            try:
                raw = self._resolve(name)
            except (OSError, UnicodeError) as exc:
                raise _err(f"cannot resolve {name}: {exc}") from None
            addrs: list[IPAddress] = []
            for text in raw:
                ip = _ip_or_none(str(text))
                if ip is None:
                    raise _err(f"cannot resolve {name}: resolver returned {_show(str(text))}")
                if ip not in addrs:
                    addrs.append(ip)
            if not addrs:
                raise _err(f"cannot resolve {name}: no IPv4 or IPv6 address")
            log.debug("resolved %s to %s", name, ", ".join(map(str, addrs)))
            self._cache[name] = addrs
        return self._cache[name]


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HEX_GROUP = re.compile(r"[0-9a-fA-F]{1,4}")
_OCTET = re.compile(r"[0-9]{1,3}")


def _hostname(expr: str) -> str | None:
    """The lower-case hostname *expr* names, or None when it is not a plausible hostname."""
    name = expr.lower().removesuffix(".")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    # A top-level label always holds a letter; "10.1", "1-254" or "10.0.0.256" are broken
    # addresses, and must never reach getaddrinfo (which reads "10.1" as 10.0.0.1).
    if not re.search("[a-z]", labels[-1]):
        return None
    return name


def _check_v6_size(parsed: _Parsed, where: str) -> None:
    for first, last in parsed.blocks:
        size = last - first + 1
        if first >= _V6 and size > MAX_IPV6_EXPRESSION:
            shown = f"2**{size.bit_length() - 1}" if size & (size - 1) == 0 else str(size)
            raise _err(
                f"{where} spans {shown} IPv6 addresses; scanning that is meaningless, give a "
                f"smaller prefix (/104 or longer: at most 2**24 addresses per IPv6 expression)"
            )


def _parse_expression(expr: str, resolve: _CachingResolver) -> _Parsed:
    shown = _show(expr)
    if not expr:
        raise _err("empty target expression")
    if "/" in expr:
        try:
            net = ipaddress.ip_network(expr, strict=False)
        except ValueError as exc:
            raise _err(f"invalid network {shown}: {exc}") from None
        first, last = _key(net.network_address), _key(net.broadcast_address)
        norm = str(net.network_address) if first == last else str(net)
        return _Parsed(norm, [(first, last)])
    if "-" in expr:
        left, _, right = expr.partition("-")
        start = _ip_or_none(left)
        if start is not None:
            return _parse_range(expr, start, right.strip())
    bare = expr[1:-1] if expr.startswith("[") and expr.endswith("]") else expr
    ip = _ip_or_none(bare)
    if ip is not None:
        return _Parsed(str(ip), [(_key(ip), _key(ip))], zones=_zones([ip]))
    if ":" in expr:
        raise _err(f"invalid IPv6 address {shown}")
    name = _hostname(expr)
    if name is None:
        raise _err(f"invalid target {shown}: not an IP address, CIDR, range or hostname")
    addrs = resolve(name)
    return _Parsed(name, [(_key(a), _key(a)) for a in addrs], hostname=name, zones=_zones(addrs))


def _zones(addrs: Iterable[IPAddress]) -> dict[int, str]:
    return {
        _key(a): a.scope_id
        for a in addrs
        if isinstance(a, ipaddress.IPv6Address) and a.scope_id
    }


def _parse_range(expr: str, start: IPAddress, right: str) -> _Parsed:
    shown = _show(expr)
    if isinstance(start, ipaddress.IPv6Address) and start.scope_id:
        raise _err(f"invalid range {shown}: a zone index is allowed on a single address only")
    end = _ip_or_none(right)
    first = int(start)
    if end is not None:
        if end.version != start.version:
            raise _err(f"invalid range {shown}: mixes IPv4 and IPv6")
        if isinstance(end, ipaddress.IPv6Address) and end.scope_id:
            raise _err(f"invalid range {shown}: a zone index is allowed on a single address only")
        last = int(end)
    elif start.version == 4 and _OCTET.fullmatch(right) and int(right) <= 255:
        last = (first & ~0xFF) | int(right)  # 10.0.0.1-50: the last octet
    elif start.version == 6 and _HEX_GROUP.fullmatch(right):
        last = (first & ~0xFFFF) | int(right, 16)  # 2001:db8::1-ff: the last 16-bit group
    else:
        raise _err(f"invalid range {shown}: end {_show(right)} is not an address or last octet")
    if last < first:
        raise _err(f"invalid range {shown}: the end comes before the start")
    tag = _V6 if start.version == 6 else 0
    norm = _host_string(first | tag)
    if last != first:
        norm += "-" + _host_string(last | tag)
    return _Parsed(norm, [(first | tag, last | tag)])


# --------------------------------------------------------------------------------------------
# Input files


def _open_text(path: PathLike) -> IO[str]:
    if str(path) == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")  # closed by the caller
    except OSError as exc:
        raise _err(f"cannot read {path}: {exc.strerror or exc}") from None


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file, as UsageErrors on read or decode failure."""
    stream = _open_text(path)
    try:
        yield from enumerate(stream, 1)
    except OSError as exc:
        raise _err(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _err(f"cannot read {path}: not UTF-8 text") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _list_file(path: PathLike) -> Iterator[tuple[str, str]]:
    """("path:line: ", expression) for every expression of an -iL style file: several per line
    (whitespace-separated), `#` starts a comment, blank lines are skipped."""
    for lineno, line in _lines(path):
        for expr in line.split("#", 1)[0].split():
            yield f"{path}:{lineno}: ", expr


def _sources(
    expressions: Iterable[str], paths: Sequence[PathLike]
) -> Iterator[tuple[str, str]]:
    """(location, expression): location is "" for an argument, "path:line: " for a file."""
    for expr in expressions:
        yield "", expr
    for path in paths:
        yield from _list_file(path)


def _parse_at(
    location: str, expr: str, resolver: _CachingResolver, what: str
) -> tuple[_Parsed, str]:
    """Parse one expression; return it and its name for messages, e.g. "a.txt:3: target '…'"."""
    try:
        parsed = _parse_expression(expr.strip(), resolver)
    except UsageError as exc:
        raise _err(f"{location}{exc}") from None
    return parsed, f"{location}{what} {_show(expr.strip())}"


@dataclass
class _Host:
    """One host read from nmap or masscan output."""

    addr: str
    ports: list[int] | None  # None: no port information, scan the -p ports
    hostname: str | None = None


def _read_nmap_xml(path: PathLike) -> Iterator[_Host]:
    """Hosts that are up (or have no status, as in masscan -oX) and their open TCP ports.

    Parsed with expat, streamed in chunks. A bare `<!DOCTYPE nmaprun>` (nmap writes one) is
    accepted; any DTD with an internal subset or external id, and any entity declaration, is
    refused, so no entity is ever expanded or fetched.
    """
    done: list[_Host] = []
    state: dict[str, Any] = {"host": None, "status": None, "in_port": None, "root": None}

    def refuse(*_: object) -> NoReturn:
        raise _err(f"{path}: refusing XML with a DTD or entities (nmap XML needs neither)")

    def doctype(_name: str, sysid: str | None, pubid: str | None, subset: int) -> None:
        if sysid or pubid or subset:
            refuse()

    def start(tag: str, attrs: dict[str, str]) -> None:
        if state["root"] is None:
            state["root"] = tag
            if tag != "nmaprun":
                raise _err(f"{path}: not nmap XML (root element <{tag[:40]}>)")
        host: _Host | None = state["host"]
        if tag == "host":
            state["host"], state["status"] = _Host("", None), None
            state["addrs"] = []
        elif host is None:
            return
        elif tag == "status":
            state["status"] = attrs.get("state")
        elif tag == "address" and attrs.get("addrtype") in ("ipv4", "ipv6"):
            state["addrs"].append(attrs.get("addr", ""))
        elif tag == "hostname" and attrs.get("type") == "user" and host.hostname is None:
            host.hostname = _hostname(attrs.get("name", ""))
        elif tag == "ports":
            host.ports = host.ports or []
        elif tag == "port":
            state["in_port"] = (attrs.get("protocol"), attrs.get("portid", ""))
        elif tag == "state" and state["in_port"] is not None:
            proto, portid = state["in_port"]
            if proto == "tcp" and attrs.get("state") == "open":
                if host.ports is None:
                    host.ports = []
                host.ports.append(_file_port(portid, f"{path}: port"))

    def end(tag: str) -> None:
        if tag == "port":
            state["in_port"] = None
        elif tag == "host" and state["host"] is not None:
            host: _Host = state["host"]
            if state["status"] in (None, "up"):
                for addr in state["addrs"]:
                    done.append(_Host(addr, host.ports, host.hostname))
            state["host"] = None

    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise _err(f"cannot read {path}: {exc.strerror or exc}") from None
    with stream:
        while True:
            try:
                chunk = stream.read(1 << 16)
                parser.Parse(chunk, not chunk)
            except expat.ExpatError as exc:
                raise _err(f"{path}: not valid nmap XML: {exc}") from None
            except OSError as exc:
                raise _err(f"cannot read {path}: {exc.strerror or exc}") from None
            yield from done
            done.clear()
            if not chunk:
                break
    if state["root"] is None:
        raise _err(f"{path}: not nmap XML (empty document)")


def _file_port(value: object, where: str) -> int:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _err(f"{where} {_show(str(value))} is not a port number 1-65535")
    return value


def _read_masscan(path: PathLike) -> Iterator[_Host]:
    """Open TCP ports from masscan -oJ (JSON list), -oD (one object per line), -oL (list
    lines `open tcp 5900 1.2.3.4 1700000000`) or -oX (nmap-style XML) output."""
    first = ""
    for _, line in _lines(path):
        if line.strip():
            first = line.strip()[0]
            break
    if first == "<":
        yield from _read_nmap_xml(path)
    elif first and first in "[{":
        yield from _read_masscan_json(path)
    else:
        for lineno, line in _lines(path):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] in ("closed", "banner"):
                continue
            if fields[0] != "open" or len(fields) < 4:
                raise _err(f"{path}:{lineno}: not a masscan list line: {_show(line.strip())}")
            if fields[1] == "tcp":
                yield _Host(fields[3], [_file_port(fields[2], f"{path}:{lineno}: port")])


_MASSCAN_TRAILER = re.compile(r"\{\s*finished\s*:\s*1\s*\}")  # masscan 1.0 ends -oJ so


def _read_masscan_json(path: PathLike) -> Iterator[_Host]:
    # masscan writes one record per line (with "[", "]" and separating commas around them);
    # take that streaming path, and fall back to loading the whole document otherwise.
    try:
        for lineno, line in _lines(path):
            text = line.strip().removeprefix("[").removesuffix("]").strip().strip(",").strip()
            if text and not _MASSCAN_TRAILER.fullmatch(text):
                yield from _masscan_record(json.loads(text), f"{path}:{lineno}")
        return
    except ValueError:  # json.JSONDecodeError: not one record per line
        pass
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except OSError as exc:
        raise _err(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _err(f"{path}: not valid masscan JSON: {exc}") from None
    for i, record in enumerate(document if isinstance(document, list) else [document], 1):
        yield from _masscan_record(record, f"{path}: record {i}")


def _masscan_record(record: object, where: str) -> Iterator[_Host]:
    if not isinstance(record, dict):
        raise _err(f"{where}: masscan record is not a JSON object")
    if "ip" not in record:
        return  # e.g. the {"finished": 1} trailer of old masscan versions
    ip = record["ip"]
    entries = record.get("ports", [record])
    if not isinstance(ip, str) or not isinstance(entries, list):
        raise _err(f"{where}: masscan record needs a string 'ip' and a 'ports' list")
    for entry in entries:
        if not isinstance(entry, dict):
            raise _err(f"{where}: masscan port entry is not a JSON object")
        data = entry.get("data")
        status = entry.get("status", data.get("status") if isinstance(data, dict) else None)
        if entry.get("proto", "tcp") == "tcp" and status in (None, "open"):
            yield _Host(ip, [_file_port(entry.get("port"), f"{where}: port")])


# --------------------------------------------------------------------------------------------
# The zmap-style permutation

_SMALL_PRIMES: Final = tuple(
    n for n in range(2, 1000) if all(n % d for d in range(2, math.isqrt(n) + 1))
)
_MR_BASES: Final = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)  # exact below 3.3e24


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for q in _SMALL_PRIMES:
        if n % q == 0:
            return n == q
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_rho(n: int) -> int:
    """A non-trivial factor of the odd composite *n* (deterministic)."""
    for c in _counter(1):
        x = y = 2
        d = 1
        while d == 1:
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            d = math.gcd(x - y, n)
        if d != n:
            return d
    raise AssertionError("unreachable")  # pragma: no cover


def _prime_factors(n: int) -> set[int]:
    factors: set[int] = set()
    for q in _SMALL_PRIMES:
        if n % q == 0:
            factors.add(q)
            while n % q == 0:
                n //= q
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if _is_prime(m):
            factors.add(m)
        else:
            d = _pollard_rho(m)
            stack += [d, m // d]
    return factors


def _derive(seed: int, label: str, n: int = 0) -> int:
    """A 128-bit number from (seed, label, n): stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{label}:{n}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "big")


class _CyclicPermutation:
    """A permutation of range(n) without storing it, as zmap does (Adrian et al., 2014).

    p is the smallest prime > n; a primitive root g generates the multiplicative group of Z_p,
    so x, x*g, x*g**2, ... visits every value 1..p-1 exactly once. Each value v <= n stands for
    index v - 1; the (at most a few dozen, prime gaps being small) values above n are skipped.
    Shard i of k walks the cycle positions i, i+k, i+2k, ...: disjoint, together complete, and
    each spread over the whole space. g and the start come from the seed.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        p = n + 1
        while not _is_prime(p):
            p += 1
        self.p = p
        if p <= 3:
            self.g = p - 1
        else:
            factors = _prime_factors(p - 1)
            for attempt in _counter():
                g = 2 + _derive(seed, "generator", attempt) % (p - 3)
                if all(pow(g, (p - 1) // q, p) != 1 for q in factors):
                    self.g = g
                    break
        self.start = 1 + _derive(seed, "start") % (p - 1)

    def indices(self, index: int = 0, count: int = 1) -> Iterator[int]:
        p, n = self.p, self.n
        x = self.start * pow(self.g, index, p) % p
        step = pow(self.g, count, p)
        for _ in range(len(range(index, p - 1, count))):
            if x <= n:
                yield x - 1
            x = x * step % p


# --------------------------------------------------------------------------------------------
# The target space


class TargetSpace:
    """The validated set of (address, port) targets of a scan; build it with
    `build_target_space`.

    It holds merged address intervals (× the port list) plus explicit (address, port) pairs read
    from nmap/masscan output, so its size does not grow with the size of a range. Counts are
    exact: exclusions are subtracted interval by interval. Plain data only, so it pickles (to
    ship to Dask workers: give every worker the same space and `seed`, and its own shard).
    """

    def __init__(
        self,
        blocks: list[tuple[int, int]],
        ports: tuple[int, ...],
        pairs: list[int],
        hostnames: dict[int, str],
        zones: dict[int, str],
        described: list[str],
        excludes: list[str],
        seed: int,
    ) -> None:
        self.ports = ports
        self.seed = seed  # used when iter_targets() gets no seed: all shards share it
        self.excludes = tuple(excludes)  # normalised exclusion expressions, for the record
        self._firsts = [first for first, _ in blocks]
        self._offsets = [0]
        for first, last in blocks:
            self._offsets.append(self._offsets[-1] + last - first + 1)
        self._pairs = pairs  # sorted keys: (address key << 16) | port
        self._hostnames = hostnames
        self._zones = zones
        self._described = described
        self._main = self._offsets[-1] * len(ports)
        main = _Intervals.of(blocks)
        extra = {key for key in (pair >> _PORT_BITS for pair in pairs) if not main.covers(key, key)}
        self._addresses = self._offsets[-1] + len(extra)

    @property
    def count(self) -> int:
        """Number of (host, port) targets, after exclusions (exact)."""
        return self._main + len(self._pairs)

    def __len__(self) -> int:
        return self.count

    @property
    def addresses_count(self) -> int:
        """Number of distinct addresses, after exclusions (exact)."""
        return self._addresses

    def describe(self) -> list[str]:
        """The normalised target expressions (for the scan record); see also `excludes`."""
        return list(self._described)

    def __repr__(self) -> str:
        return (f"<TargetSpace {self.count} targets, {self.addresses_count} addresses, "
                f"ports {format_ports(self.ports) or '-'}>")

    def __iter__(self) -> Iterator[Target]:
        return self.iter_targets()

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, Target):
            return False
        ip = _ip_or_none(item.host)
        if ip is None:
            return False
        key = _key(ip)
        k = bisect_right(self._firsts, key) - 1
        if k >= 0 and key - self._firsts[k] < self._offsets[k + 1] - self._offsets[k]:
            i = bisect_left(self.ports, item.port)
            if i < len(self.ports) and self.ports[i] == item.port:
                return True
        pair = (key << _PORT_BITS) | item.port
        j = bisect_left(self._pairs, pair)
        return j < len(self._pairs) and self._pairs[j] == pair

    def iter_targets(
        self, seed: int | None = None, shard: tuple[int, int] | None = None
    ) -> Iterator[Target]:
        """Every target once, in a pseudo-random order fixed by *seed* (default: `self.seed`).

        *shard* = (index, count) yields only shard *index* of *count*: the shards of one seed
        are disjoint and together yield every target exactly once.
        """
        index, count = shard if shard is not None else (0, 1)
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise _err(f"invalid shard {index!r}/{count!r}: need 0 <= index < count")
        perm = _CyclicPermutation(self.count, self.seed if seed is None else seed)
        return map(self._target, perm.indices(index, count))

    def shard(self, index: int, count: int, seed: int | None = None) -> Iterator[Target]:
        """Shorthand for `iter_targets(seed, shard=(index, count))`."""
        return self.iter_targets(seed, (index, count))

    def _target(self, i: int) -> Target:
        if i < self._main:
            a, port_index = divmod(i, len(self.ports))
            k = bisect_right(self._offsets, a) - 1
            key = self._firsts[k] + (a - self._offsets[k])
            port = self.ports[port_index]
        else:
            pair = self._pairs[i - self._main]
            key, port = pair >> _PORT_BITS, pair & 0xFFFF
        host = _host_string(key)
        zone = self._zones.get(key)
        return Target(f"{host}%{zone}" if zone else host, port, self._hostnames.get(key))


def build_target_space(
    expressions: Iterable[str],
    ports: Sequence[int],
    *,
    input_files: Sequence[PathLike] = (),
    nmap_xml: Sequence[PathLike] = (),
    masscan: Sequence[PathLike] = (),
    excludes: Iterable[str] = (),
    exclude_files: Sequence[PathLike] = (),
    allow_special: bool = False,
    resolve: Resolver | None = None,
) -> TargetSpace:
    """Validate every target before anything is sent and return the `TargetSpace`.

    *expressions* and the lines of *input_files* (`-iL`; "-" reads stdin) are addresses, CIDRs,
    ranges (`10.0.0.1-10.0.0.50`, `10.0.0.1-50`) or hostnames (resolved once through *resolve*,
    default `socket.getaddrinfo`; every address kept, each target carrying the name). Their
    addresses are scanned on *ports*. *nmap_xml* and *masscan* files add their live hosts: with
    the (host, port) pairs they report open when they list ports, else on *ports*. *excludes*
    and *exclude_files* take the same syntax and are removed from everything. The same address
    and port is never yielded twice. Raises `UsageError` (one line) on any bad input, on a
    special network (see `SPECIAL_NETWORKS`) unless *allow_special*, on an IPv6 expression over
    2**24 addresses, and when no target is given or left.
    """
    resolver = _CachingResolver(resolve or default_resolver)
    port_tuple = _check_ports(ports)
    expressions = [expressions] if isinstance(expressions, str) else list(expressions)

    excluded_blocks: list[tuple[int, int]] = []
    excluded_norms: dict[str, None] = {}
    for location, expr in _sources(excludes, exclude_files):
        parsed, _ = _parse_at(location, expr, resolver, "exclusion")
        excluded_blocks += parsed.blocks
        excluded_norms[parsed.norm] = None
    excluded_merged = _merge(excluded_blocks)
    excluded = _Intervals.of(excluded_merged)

    def admit(first: int, last: int, where: str) -> None:
        if not allow_special:
            _check_special(first, last, excluded, where)

    blocks: list[tuple[int, int]] = []
    pair_set: set[int] = set()
    hostnames: dict[int, str] = {}
    zones: dict[int, str] = {}
    described: dict[str, None] = {}
    for location, expr in _sources(expressions, input_files):
        parsed, where = _parse_at(location, expr, resolver, "target")
        _check_v6_size(parsed, where)
        described[parsed.norm] = None
        for first, last in parsed.blocks:
            if parsed.hostname:
                admit(first, last, f"{where} (resolves to {_host_string(first)})")
                hostnames.setdefault(first, parsed.hostname)
            else:
                admit(first, last, where)
            blocks.append((first, last))
        for key, zone in parsed.zones.items():
            zones.setdefault(key, zone)

    for path, reader in [*((p, _read_nmap_xml) for p in nmap_xml),
                         *((p, _read_masscan) for p in masscan)]:
        for host in reader(path):
            ip = _ip_or_none(host.addr)
            if ip is None or (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id):
                raise _err(f"{path}: invalid host address {_show(host.addr)}")
            key = _key(ip)
            admit(key, key, f"{path}: host {ip}")
            if host.ports != []:
                described[str(ip)] = None
            if host.hostname:
                hostnames.setdefault(key, host.hostname)
            if host.ports is None:
                blocks.append((key, key))
            else:
                pair_set.update((key << _PORT_BITS) | port for port in host.ports)

    if not blocks and not pair_set:
        if not (expressions or input_files or nmap_xml or masscan):
            raise _err("no targets given: name IPs, CIDRs, ranges or hostnames (or use -iL)")
        raise _err("no targets given: the input files list no target")
    if blocks and not port_tuple:
        raise _err("no ports given")
    merged = _subtract(_merge(blocks), excluded_merged)
    space_main = _Intervals.of(merged)
    port_set = frozenset(port_tuple)

    def extra(pair: int) -> bool:
        key = pair >> _PORT_BITS
        if excluded.covers(key, key):
            return False
        return not (space_main.covers(key, key) and (pair & 0xFFFF) in port_set)

    pairs = sorted(filter(extra, pair_set))
    if not merged and not pairs:
        raise _err("no targets left: the exclusions cover every target given")
    space = TargetSpace(
        merged, port_tuple, pairs,
        {k: v for k, v in hostnames.items() if not excluded.covers(k, k)},
        zones, list(described), list(excluded_norms), secrets.randbits(64),
    )
    log.debug("target space: %r", space)
    return space
