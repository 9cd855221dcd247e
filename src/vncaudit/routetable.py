"""The kernel's IPv4 routing table, read over rtnetlink, and the source address it gives each
part of the address space: what both SYN senders need to checksum a segment the kernel then
routes (the pseudo-header holds the source address the kernel will put in).

Owns: `routes` (every IPv4 route, all tables), `only_default_rules` (no policy routing),
`best_route` (the route the kernel takes to an address when only the default rules exist),
`cuts` (where the route changes inside a range) and `source_of` (one segment's source
address: the route's preferred source, else the kernel's answer for a sample address).
`discovery.route` plans the sweep's paths with these; the early start (`vncaudit.synstart`)
its sources.

Imports the standard library's `os`, `socket` and `struct` and `rawsyn` only: the
early start reads it before numpy and the rest of the program are imported. Must not: send
anything, or guess a route the kernel would not take.
"""

from __future__ import annotations

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
