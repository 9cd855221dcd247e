"""The kernel's IPv4 routing table, read over rtnetlink, the source address it gives each part
of the address space, and the link-layer addresses of a route's two ends: what both SYN
senders need to checksum a segment the kernel then routes (the pseudo-header holds the source
address the kernel will put in), or to send whole Ethernet frames to the gateway.

Owns: `routes` (every IPv4 route, all tables), `only_default_rules` (no policy routing),
`best_route` (the route the kernel takes to an address when only the default rules exist),
`cuts` (where the route changes inside a range), `source_of` (one segment's source
address: the route's preferred source, else the kernel's answer for a sample address),
`neighbours` (the resolved entries of the neighbour table), `ethernet_address` (an interface's
own, when it is Ethernet and up), `link_of` (the (ours, the gateway's) link-layer
addresses of a route frames may go out on, when that is exact) and `tx_dropped` (what the
interfaces of the routes dropped on the way out). `discovery.route` plans the
sweep's paths with these; the early start (`vncaudit.synstart`, `vncaudit.synbulk`) its
sources and its frames.

Imports the standard library's `fcntl`, `os`, `socket` and `struct` and `rawsyn` only: the
early start reads it before numpy and the rest of the program are imported. Must not: send
anything, or guess a route the kernel would not take.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from vncaudit.rawsyn import kernel_source

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

NETLINK_ROUTE: Final = 0
RTM_NEWROUTE, RTM_GETROUTE, RTM_NEWRULE, RTM_GETRULE = 24, 26, 32, 34
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = \
    1, 4, 5, 6, 7, 9, 15
RTN_UNICAST = 1
RTNH_F_DEAD, RTNH_F_LINKDOWN = 0x1, 0x10
FRA_PRIORITY, FRA_TABLE, FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN, FRA_PROTOCOL = \
    6, 15, 13, 14, 21
FR_ACT_TO_TBL = 1
TABLE_LOCAL, TABLE_MAIN, TABLE_DEFAULT = 255, 254, 253
DEFAULT_RULES: Final = frozenset({(0, TABLE_LOCAL), (32766, TABLE_MAIN), (32767, TABLE_DEFAULT)})

ARPHRD_ETHER: Final = 1
SIOCGIFFLAGS, SIOCGIFHWADDR, IFF_UP = 0x8913, 0x8927, 0x1
ATF_COM: Final = 0x2  # a neighbour entry with its link-layer address resolved

MAX_ROUTES: Final = 4096  # beyond this (a full BGP table) every packet is left to the kernel
ADDRESS_END: Final = 1 << 32


class Route:
    """One IPv4 route of the kernel's table: the addresses `first`-`last` it covers and what
    `best_route` and the path planning read of it. A plain class, compared and hashed by its
    fields: `typing` and `dataclasses` cost more to import than the early start's batches
    wait for their sources (~20 ms in a virtual environment)."""

    __slots__ = ("first", "last", "prefix", "metric", "table", "kind", "ifindex", "gateway",
                 "source", "flags", "multipath")

    def __init__(self, first: int, last: int, prefix: int, metric: int, table: int,
                 kind: int, ifindex: int | None, gateway: bytes, source: bytes, flags: int,
                 multipath: bool) -> None:
        self.first = first
        self.last = last
        self.prefix = prefix
        self.metric = metric
        self.table = table
        self.kind = kind
        self.ifindex = ifindex
        self.gateway = gateway
        self.source = source
        self.flags = flags
        self.multipath = multipath

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Route(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


# ---------------------------------------------------------------------------------------------
# rtnetlink


def _dump(kind: int, header: bytes) -> list[tuple[int, bytes]]:
    """(message type, payload) of every answer to one dump request."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.settimeout(2.0)
        message = struct.pack("=LHHLL", 16 + len(header), kind, NLM_F_REQUEST | NLM_F_DUMP, 1,
                              0) + header
        sock.send(message)
        out: list[tuple[int, bytes]] = []
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, _seq, _pid = struct.unpack_from("=LHHLL", data, offset)
                if length < 16:
                    return out
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    raise OSError(-code, os.strerror(-code))
                out.append((mtype, data[offset + 16:offset + length]))
                offset += (length + 3) & ~3


def _attributes(payload: bytes, offset: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = payload[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return attrs


def routes() -> list[Route]:
    out: list[Route] = []
    for mtype, payload in _dump(RTM_GETROUTE, struct.pack("=BBBBBBBBL", socket.AF_INET,
                                                          0, 0, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWROUTE or len(payload) < 12:
            continue
        family, dst_len, _src_len, tos, table, _proto, _scope, kind, flags = struct.unpack_from(
            "=BBBBBBBBL", payload)
        if family != socket.AF_INET or tos:
            continue
        attrs = _attributes(payload, 12)
        if RTA_TABLE in attrs:
            (table,) = struct.unpack("=L", attrs[RTA_TABLE][:4])
        dst = int.from_bytes(attrs.get(RTA_DST, b"\0\0\0\0")[:4], "big") if dst_len else 0
        size = 1 << (32 - dst_len)
        first = dst & ~(size - 1) & 0xFFFFFFFF
        oif = attrs.get(RTA_OIF)
        metric = attrs.get(RTA_PRIORITY)
        out.append(Route(
            first=first, last=first + size - 1, prefix=dst_len,
            metric=struct.unpack("=L", metric[:4])[0] if metric else 0, table=table, kind=kind,
            ifindex=struct.unpack("=i", oif[:4])[0] if oif else None,
            gateway=attrs.get(RTA_GATEWAY, b"")[:4], source=attrs.get(RTA_PREFSRC, b"")[:4],
            flags=flags, multipath=RTA_MULTIPATH in attrs))
    return out


def only_default_rules() -> bool:
    """True when the IPv4 policy rules are the kernel's three defaults and nothing else."""
    seen: set[tuple[int, int]] = set()
    known = {FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL, FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN}
    for mtype, payload in _dump(RTM_GETRULE, struct.pack("=BBBBBBBBL", socket.AF_INET,
                                                         0, 0, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWRULE or len(payload) < 12:
            continue
        family, dst_len, src_len, tos, table, _r1, _r2, action, _flags = struct.unpack_from(
            "=BBBBBBBBL", payload)
        if family != socket.AF_INET:
            continue
        attrs = _attributes(payload, 12)
        if dst_len or src_len or tos or action != FR_ACT_TO_TBL or set(attrs) - known:
            return False
        for kind in (FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN):
            if kind in attrs and struct.unpack("=i", attrs[kind][:4])[0] != -1:
                return False
        if FRA_TABLE in attrs:
            (table,) = struct.unpack("=L", attrs[FRA_TABLE][:4])
        priority = struct.unpack("=L", attrs[FRA_PRIORITY][:4])[0] if FRA_PRIORITY in attrs else 0
        seen.add((priority, table))
    return seen == DEFAULT_RULES


def best_route(routes: list[Route], address: int) -> Route | None | bool:
    """The route the kernel takes to `address` from `routes` (tables local, main, default);
    None when none matches, False when it cannot be told exactly."""
    for table in (TABLE_LOCAL, TABLE_MAIN, TABLE_DEFAULT):
        matching = [r for r in routes if r.table == table and r.first <= address <= r.last]
        if not matching:
            continue
        longest = max(r.prefix for r in matching)
        candidates = [r for r in matching if r.prefix == longest]
        lowest = min(r.metric for r in candidates)
        chosen = [r for r in candidates if r.metric == lowest]
        if len(chosen) != 1:
            return False
        return chosen[0]
    return None


def cuts(table: list[Route], low: int, high: int) -> list[int]:
    """The addresses in low..high (inclusive) where a segment begins: `low` and each first
    address, or one past a last address, of a route inside the range."""
    out = {low}
    for r in table:
        for edge in (r.first, r.last + 1):
            if low < edge <= high:
                out.add(edge)
    return sorted(out)


def source_of(best: Route | None | bool, start: int, end: int) -> bytes:
    """The source address of the segment start..end whose route is `best` (`best_route`'s
    answer): the route's preferred source, else the kernel's choice for the segment's middle
    address (b"" when the kernel has no route)."""
    if isinstance(best, Route) and best.source:
        return best.source
    return kernel_source(start + (end - start) // 2)


# ---------------------------------------------------------------------------------------------
# Link-layer addresses: where frames may go straight out


def neighbours() -> dict[tuple[bytes, int], bytes]:
    """(IPv4 address, ifindex) → link-layer address, for the resolved entries of the ARP
    table (flag ATF_COM; /proc/net/arp is this network namespace's)."""
    out: dict[tuple[bytes, int], bytes] = {}
    try:
        with open("/proc/net/arp", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return out
    indexes: dict[str, int] = {}
    for line in lines:
        fields = line.split()
        try:
            if len(fields) < 6 or not int(fields[2], 16) & ATF_COM:
                continue
            name = fields[5]
            if name not in indexes:
                indexes[name] = socket.if_nametoindex(name)
            out[(socket.inet_aton(fields[0]), indexes[name])] = \
                bytes.fromhex(fields[3].replace(":", ""))
        except (OSError, ValueError):
            continue
    return out


def ethernet_address(ifindex: int) -> bytes | None:
    """The interface's own link-layer address if it is an Ethernet interface that is up (asked
    with ioctls, which see this network namespace whatever /sys shows)."""
    try:
        name = socket.if_indextoname(ifindex).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            flags = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16s24x", name))
            if not struct.unpack_from("=H", flags, 16)[0] & IFF_UP:
                return None
            hw = fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("16s24x", name))
    except OSError:
        return None
    family = struct.unpack_from("=H", hw, 16)[0]
    return hw[18:24] if family == ARPHRD_ETHER else None


def frames_possible(route: Route, source: bytes) -> bool:
    """Whether frames could go straight out on `route` (one unicast gateway on a live
    interface, a known source) once the gateway's link-layer address is known."""
    return not (route.kind != RTN_UNICAST or route.multipath or not route.gateway
                or route.ifindex is None or route.flags & (RTNH_F_DEAD | RTNH_F_LINKDOWN)
                or not source)


def link_of(route: Route, source: bytes, known: dict[tuple[bytes, int], bytes],
            ours: bytes | None = None) -> tuple[bytes, bytes] | None:
    """(our link-layer address, the gateway's) for frames to the destinations of `route`
    from `source`, when that is exact (`frames_possible`, an Ethernet interface that is up,
    the gateway in `known`, a `neighbours` table); None otherwise (the kernel sends). `ours`:
    the interface's address when the caller has asked already."""
    if not frames_possible(route, source):
        return None
    assert route.ifindex is not None
    theirs = known.get((route.gateway, route.ifindex))
    if theirs is None:
        return None
    if ours is None:
        ours = ethernet_address(route.ifindex)
    return None if ours is None else (ours, theirs)


def tx_dropped(ifindexes: set[int]) -> int:
    """Packets the interfaces dropped on the way out, so far (/proc/net/dev: this network
    namespace's own view)."""
    names = set()
    for ifindex in ifindexes:
        try:
            names.add(socket.if_indextoname(ifindex))
        except OSError:
            continue
    total = 0
    try:
        with open("/proc/net/dev", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()[2:]
        for line in lines:
            name, _, numbers = line.partition(":")
            if name.strip() in names:
                total += int(numbers.split()[11])
    except (OSError, ValueError, IndexError):
        pass
    return total
