"""Target expressions: addresses, CIDRs, ranges and hostnames, parsed into key intervals.

Owns: `_parse_expression` (one expression to a `_Parsed`), the range forms (`10.0.0.1-50`,
`2001:db8::1-ff`), nmap's IPv4 octet patterns (`10.0.0.*`, `10.0.0-1.1-254`, `10.0.0.1,3`) and
`hostname/prefix`, the hostname check that keeps broken addresses away from the resolver, IPv6
zone indexes, the IPv6 size limit (`MAX_IPV6_EXPRESSION`), and hostname resolution: the
injectable `Resolver`, `default_resolver` (getaddrinfo), `canonical_resolver` (the same with
the CNAME chain's last name) and `CachingResolver` (each name once per build, every failure a
`UsageError`).

Must not: open sockets other than through the resolver it is given, resolve a name twice in one
build, expand a range into addresses, or import anything of the package but `exceptions`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from vncaudit.exceptions import UsageError
from vncaudit.targets.addresses import V6_BIT, IPAddress, address_key, host_string
from vncaudit.targets.errors import fail, quote

log = logging.getLogger(__name__)

MAX_IPV6_EXPRESSION: Final = 2**24  # addresses; a bigger IPv6 expression is refused
# Intervals one octet pattern may split into: `10.*.*.1-254` is 65,536 of them (a few MB); a
# pattern such as `*.*.*.1` (16.7 million separate addresses) is refused, not materialised.
MAX_PATTERN_BLOCKS: Final = 2**16
Resolver = Callable[[str], list[str]]

@dataclass
class _Parsed:
    norm: str  # normalised expression for describe()
    blocks: list[tuple[int, int]]  # key intervals
    hostname: str | None = None  # every block is an address of this name
    zones: dict[int, str] = field(default_factory=dict)  # IPv6 zone index, e.g. fe80::1%eth0
    names: dict[int, str] = field(default_factory=dict)  # name of some addresses (name/prefix)


def default_resolver(name: str) -> list[str]:
    """Resolve *name* with `socket.getaddrinfo`: every IPv4 and IPv6 address, in its order."""
    out: list[str] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            addr = str(sockaddr[0])
            if addr not in out:
                out.append(addr)
    return out


class Resolution(list[str]):
    """A name's addresses (a list, as from `default_resolver`) with `canonical`: the name the
    resolver says owns them — the end of the CNAME chain — or None when it did not say."""

    canonical: str | None = None


def canonical_resolver(name: str) -> Resolution:
    """`default_resolver` that also reports the canonical name (AI_CANONNAME), from the same
    single getaddrinfo call, so a caller can tell whose addresses a CNAME led to."""
    out = Resolution()
    for family, _, _, canon, sockaddr in socket.getaddrinfo(
            name, None, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME):
        if canon and out.canonical is None:
            out.canonical = canon.lower().rstrip(".")
        if family in (socket.AF_INET, socket.AF_INET6):
            addr = str(sockaddr[0])
            if addr not in out:
                out.append(addr)
    return out


class CachingResolver:
    """Resolves each name once per build and turns every failure into a UsageError."""

    def __init__(self, resolve: Resolver) -> None:
        self._resolve = resolve
        self._cache: dict[str, list[IPAddress]] = {}

    def __call__(self, name: str) -> list[IPAddress]:
        if name not in self._cache:
            try:
                raw = self._resolve(name)
            except (OSError, UnicodeError) as exc:
                raise fail(f"cannot resolve {name}: {exc}") from None
            addrs: list[IPAddress] = []
            for text in raw:
                ip = ip_or_none(str(text))
                if ip is None:
                    raise fail(f"cannot resolve {name}: resolver returned {quote(str(text))}")
                if ip not in addrs:
                    addrs.append(ip)
            if not addrs:
                raise fail(f"cannot resolve {name}: no IPv4 or IPv6 address")
            log.debug("resolved %s to %s", name, ", ".join(map(str, addrs)))
            self._cache[name] = addrs
        return self._cache[name]


def ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_HEX_GROUP = re.compile(r"[0-9a-fA-F]{1,4}")
_OCTET = re.compile(r"[0-9]{1,3}")


def hostname_or_none(expr: str) -> str | None:
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


def check_v6_size(parsed: _Parsed, where: str) -> None:
    for first, last in parsed.blocks:
        size = last - first + 1
        if first >= V6_BIT and size > MAX_IPV6_EXPRESSION:
            shown = f"2**{size.bit_length() - 1}" if size & (size - 1) == 0 else str(size)
            raise fail(
                f"{where} spans {shown} IPv6 addresses; scanning that is meaningless, give a "
                f"smaller prefix (/104 or longer: at most 2**24 addresses per IPv6 expression)"
            )


def _parse_expression(expr: str, resolve: CachingResolver) -> _Parsed:
    shown = quote(expr)
    if not expr:
        raise fail("empty target expression")
    problem = target_form_problem(expr)
    if problem is not None and "://" in expr:
        raise fail(f"invalid target {shown}: {problem}")
    if "/" in expr:
        named = _named_network(expr, resolve)
        if named is not None:
            return named
        try:
            net = ipaddress.ip_network(expr, strict=False)
        except ValueError as exc:
            raise fail(f"invalid network {shown}: {_network_problem(expr, exc)}") from None
        first, last = address_key(net.network_address), address_key(net.broadcast_address)
        norm = str(net.network_address) if first == last else str(net)
        return _Parsed(norm, [(first, last)])
    if "-" in expr:
        left, _, right = expr.partition("-")
        start = ip_or_none(left)
        if start is not None and right.strip():  # 10.0.0.1- is nmap's 10.0.0.1-255: below
            return _parse_range(expr, start, right.strip())
    if _OCTET_PATTERN.fullmatch(expr):
        return _parse_octets(expr)
    bare = expr[1:-1] if expr.startswith("[") and expr.endswith("]") else expr
    ip = ip_or_none(bare)
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            _check_zone(ip.scope_id, shown)
        return _Parsed(str(ip), [(address_key(ip), address_key(ip))], zones=_zones([ip]))
    if ":" in expr:
        _refuse_host_port(expr, shown)
        raise fail(f"invalid IPv6 address {shown}")
    name = hostname_or_none(expr)
    if name is None:
        raise fail(f"invalid target {shown}: not an IP address, CIDR, range or hostname")
    addrs = resolve(name)
    return _Parsed(name, [(address_key(a), address_key(a)) for a in addrs], hostname=name,
                   zones=_zones(addrs))


_OCTET_PATTERN = re.compile(r"[0-9*,-]+(?:\.[0-9*,-]+){3}")


def _parse_octets(expr: str) -> _Parsed:
    """nmap's IPv4 octet pattern: each of the four octets a comma list of `N`, `N-M`, `-M`
    (0-M), `N-` (N-255) or `*` (0-255), e.g. `10.0.0-1.1-254`, `192.168.*.1,3`. The addresses
    are the product of the four octet sets; they are kept as intervals, never one by one."""
    shown = quote(expr)
    octets = [_octet_set(part, i, shown) for i, part in enumerate(expr.split("."), 1)]
    # Octets after `k` that are all 0-255 make each value of octet k one contiguous interval.
    k = 3
    while k > 0 and octets[k] == [(0, 255)]:
        k -= 1
    shift = 8 * (3 - k)
    leading = 1
    for values in octets[:k]:
        leading *= sum(hi - lo + 1 for lo, hi in values)
    count = leading * len(octets[k])
    if count > MAX_PATTERN_BLOCKS:
        raise fail(f"invalid target {shown}: it splits into {count:,} separate ranges (at most "
                   f"{MAX_PATTERN_BLOCKS:,} per expression); use fewer values in the first "
                   "octets, or a CIDR")
    prefixes = [0]
    for values in octets[:k]:
        prefixes = [(p << 8) | v for p in prefixes for lo, hi in values for v in range(lo, hi + 1)]
    blocks = [(((p << 8) | lo) << shift, (((p << 8) | hi) + 1 << shift) - 1)
              for p in prefixes for lo, hi in octets[k]]
    norm = ".".join(",".join("*" if (lo, hi) == (0, 255) else str(lo) if lo == hi
                             else f"{lo}-{hi}" for lo, hi in values) for values in octets)
    return _Parsed(norm, blocks)


def _octet_set(part: str, index: int, shown: str) -> list[tuple[int, int]]:
    """One octet of an nmap pattern as sorted, merged (low, high) runs."""
    runs: list[tuple[int, int]] = []
    for item in part.split(","):
        where = f"invalid target {shown}: octet {index}"
        if item == "*":
            runs.append((0, 255))
            continue
        low_text, dash, high_text = item.partition("-")
        if not item or item == "-" or not all(t.isdigit() or not t for t in (low_text,
                                                                            high_text)):
            raise fail(f"{where} has {quote(item)}; give N, N-M, -M, N- or *")
        for number in (low_text, high_text):
            if len(number) > 1 and number.startswith("0"):  # inet_aton reads 010 as 8
                raise fail(f"{where} has {number}: a leading zero is ambiguous (octal or "
                           "decimal?); write it without")
        low = int(low_text) if low_text else 0
        high = (int(high_text) if high_text else 255) if dash else low
        for value in (low, high):
            if value > 255:
                raise fail(f"{where}: {value} is over 255")
        if high < low:
            raise fail(f"{where}: {low}-{high} runs backwards")
        runs.append((low, high))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(runs):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _named_network(expr: str, resolve: CachingResolver) -> _Parsed | None:
    """`host.example/30` (nmap): the network of that prefix around each address of the name
    (its IPv4 addresses for a prefix up to 32, else its IPv6 ones). None when the part before
    the slash is no host name."""
    text, _, prefix = expr.rpartition("/")
    name = hostname_or_none(text)
    if name is None:
        return None
    shown = quote(expr)
    if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > 128:
        raise fail(f"invalid network {shown}: the prefix length must be a number 0-128, not "
                   f"{quote(prefix)}")
    bits = int(prefix)
    version = 4 if bits <= 32 else 6
    family = [a for a in resolve(name) if a.version == version]
    if not family:
        raise fail(f"invalid network {shown}: {name} has no IPv4 address (an IPv6 network "
                   "of a name needs a prefix of /33-/128)" if version == 4 else
                   f"invalid network {shown}: {name} has no IPv6 address, and /{bits} is "
                   "longer than an IPv4 prefix (/0-/32)")
    blocks: list[tuple[int, int]] = []
    for addr in family:
        kind = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        net = kind((int(addr), bits), strict=False)
        blocks.append((address_key(net.network_address), address_key(net.broadcast_address)))
    return _Parsed(f"{name}/{bits}", blocks, names={address_key(a): name for a in family},
                   zones=_zones(family))


def _check_zone(zone: str, shown: str) -> None:
    """The zone of fe80::1%eth0 names an interface of this machine (or is its index): one
    that does not exist would make every port of the address look filtered."""
    if zone.isdigit():
        return
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:  # the interface list cannot be read here: let the connect decide
        return
    if zone not in names:
        raise fail(f"invalid target {shown}: no network interface {quote(zone)} on this "
                   f"machine (interfaces: {', '.join(sorted(names))})")


def _network_problem(expr: str, exc: ValueError) -> str:
    """What is wrong with ADDRESS/PREFIX, in words (ipaddress only repeats the input)."""
    address, _, prefix = expr.partition("/")
    ip = ip_or_none(address)
    if ip is None:
        return f"{quote(address)} is not an IP address (a network is ADDRESS/PREFIX)"
    top = 32 if ip.version == 4 else 128
    if not (prefix.isascii() and prefix.isdigit()) or int(prefix) > top:
        return f"the prefix length must be a number 0-{top}, not {quote(prefix)}"
    return str(exc)


def _refuse_host_port(expr: str, shown: str) -> None:
    """HOST:PORT (or [IPv6]:PORT) is a common habit from other tools: say where the port goes
    instead of calling it a broken IPv6 address."""
    problem = target_form_problem(expr)
    if problem is not None:
        raise fail(f"invalid target {shown}: {problem}")


def target_form_problem(text: str, where: str = "-p", form: str = "{host} -p {port}"
                        ) -> str | None:
    """The words for a target written as a URL or as HOST:PORT (habits from other tools), or
    None when it is neither. `where` names where ports go and `form` shows the right way for
    the caller ("-p" and "{host} -p {port}" on the command line; the web form and the API say
    "ports"), so every interface explains the same mistake the same way."""
    if "://" in text:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(text.strip())
            url_host, url_port = parts.hostname, parts.port
        except ValueError:
            url_host, url_port = None, None
        if url_host and url_port:
            return f"give the host, not a URL ({form.format(host=url_host, port=url_port)})"
        return (f"give the host, not a URL ({url_host})" if url_host
                else "give the host, not a URL")
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()):
        return None
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else None
    ip = ip_or_none(bare if bare is not None else host)
    if (bare is not None and ip is not None) or (ip is not None and ip.version == 4) or (
            bare is None and ip is None and hostname_or_none(host) is not None):
        return (f"a port goes in {where}, not after the host "
                f"({form.format(host=bare or host, port=port)})")
    return None


def _zones(addrs: Iterable[IPAddress]) -> dict[int, str]:
    return {
        address_key(a): a.scope_id
        for a in addrs
        if isinstance(a, ipaddress.IPv6Address) and a.scope_id
    }


def _parse_range(expr: str, start: IPAddress, right: str) -> _Parsed:
    shown = quote(expr)
    if isinstance(start, ipaddress.IPv6Address) and start.scope_id:
        raise fail(f"invalid range {shown}: a zone index is allowed on a single address only")
    end = ip_or_none(right)
    first = int(start)
    if end is not None:
        if end.version != start.version:
            raise fail(f"invalid range {shown}: mixes IPv4 and IPv6")
        if isinstance(end, ipaddress.IPv6Address) and end.scope_id:
            raise fail(f"invalid range {shown}: a zone index is allowed on a single address only")
        last = int(end)
    elif start.version == 4 and _OCTET.fullmatch(right) and int(right) <= 255:
        last = (first & ~0xFF) | int(right)  # 10.0.0.1-50: the last octet
    elif start.version == 6 and _HEX_GROUP.fullmatch(right):
        last = (first & ~0xFFFF) | int(right, 16)  # 2001:db8::1-ff: the last 16-bit group
    else:
        raise fail(f"invalid range {shown}: end {quote(right)} is not an address or last octet")
    if last < first:
        raise fail(f"invalid range {shown}: the end comes before the start")
    tag = V6_BIT if start.version == 6 else 0
    norm = host_string(first | tag)
    if last != first:
        norm += "-" + host_string(last | tag)
    return _Parsed(norm, [(first | tag, last | tag)])

def parse_at(
    location: str, expr: str, resolver: CachingResolver, what: str
) -> tuple[_Parsed, str]:
    """Parse one expression; return it and its name for messages, e.g. "a.txt:3: target '…'"."""
    try:
        parsed = _parse_expression(expr.strip(), resolver)
    except UsageError as exc:
        raise fail(f"{location}{exc}") from None
    return parsed, f"{location}{what} {quote(expr.strip())}"
