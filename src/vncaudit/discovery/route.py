"""Which way each IPv4 destination leaves this host, read from the kernel's routing table once,
so the SYN sender can pick a path for thousands of destinations with one vector lookup.

Owns: dumping the IPv4 routes and policy rules over rtnetlink, cutting the address space into
segments that each have one route (the longest prefix, lowest metric, tables local, main and
default in that order, as the kernel looks them up when no other rule exists), the source
address of each route (the kernel's own choice, asked with a connected UDP socket, which sends
nothing), and the gateway's link-layer address from the neighbour table (/proc/net/arp).

A segment gets a `Path` with `link` set (Ethernet frames straight to the gateway) only when all
of that is exact: no policy rules, one unicast route with one gateway on an Ethernet interface
that is up, and the gateway's address resolved. Everything else (on-link destinations, policy
routing, multipath, blackholes, an unresolved gateway, a table too large to cut) goes to the
kernel: `link` None, and the kernel routes and resolves each packet itself.

Must not: send anything, or guess a route the kernel would not take.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Final

import numpy as np
import numpy.typing as npt

from vncaudit.rawsyn import kernel_source as kernel_source

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
MAX_ROUTES: Final = 4096  # beyond this (a full BGP table) every packet is left to the kernel
ADDRESS_END: Final = 1 << 32


@dataclass(frozen=True)
class Path:
    """How SYNs to one segment leave: the interface and source address the kernel would use,
    and, when exact, (our link-layer address, the gateway's) for frames sent straight out."""

    ifindex: int | None
    source: bytes  # 4 bytes; b"" when the kernel has no route (sending then fails, as it should)
    link: tuple[bytes, bytes] | None = None
    gateway: bytes = b""  # for a path that could go straight out once this neighbour resolves


@dataclass(frozen=True)
class Route:
    """One IPv4 route of the kernel's table: the addresses `first`-`last` it covers and what
    `best_route` and the path planning read of it."""

    first: int
    last: int
    prefix: int
    metric: int
    table: int
    kind: int
    ifindex: int | None
    gateway: bytes
    source: bytes
    flags: int
    multipath: bool


class RoutePlan:
    """Segments of the IPv4 space, one `Path` each; `paths_of(addresses)` indexes `paths`."""

    def __init__(self, starts: list[int], segment_paths: list[int], paths: list[Path]) -> None:
        self.starts = np.array(starts, dtype=np.uint64)
        self.segment_paths = np.array(segment_paths, dtype=np.intp)
        self.paths = paths

    def paths_of(self, addresses: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        index = np.searchsorted(self.starts, addresses, side="right") - 1
        out: npt.NDArray[np.intp] = self.segment_paths[index]
        return out

    @property
    def waiting(self) -> bool:
        """Some path would go straight out once its gateway's address is resolved."""
        return any(p.link is None and p.gateway for p in self.paths)

    def interfaces(self) -> set[int]:
        return {p.ifindex for p in self.paths if p.ifindex is not None}


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


def _routes() -> list[Route]:
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


def _only_default_rules() -> bool:
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


def neighbours() -> dict[tuple[bytes, int], bytes]:
    """(IPv4 address, ifindex) → link-layer address, for the resolved entries of the ARP
    table (flag ATF_COM)."""
    out: dict[tuple[bytes, int], bytes] = {}
    try:
        lines = FsPath("/proc/net/arp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or not int(fields[2], 16) & 0x2:
            continue
        with contextlib.suppress(OSError, ValueError):
            out[(socket.inet_aton(fields[0]), socket.if_nametoindex(fields[5]))] = \
                bytes.fromhex(fields[3].replace(":", ""))
    return out


def _ethernet_address(ifindex: int) -> bytes | None:
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


# ---------------------------------------------------------------------------------------------
# The plan


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


def plan(for_addresses: tuple[int, int] = (0, ADDRESS_END - 1)) -> RoutePlan:
    """The plan for the IPv4 space (only the segments meeting `for_addresses`, an inclusive
    range, get a real path; the rest is the kernel's), with fresh neighbour entries."""
    low, high = for_addresses
    try:
        routes = _routes()
        exact = _only_default_rules() and len(routes) <= MAX_ROUTES
    except OSError:
        routes, exact = [], False
    if not exact:
        return RoutePlan([0], [0], [Path(None, b"")])  # the kernel's, source asked per net
    cuts = {0, low, high + 1}
    for r in routes:
        cuts.update((r.first, r.last + 1))
    starts = sorted(c for c in cuts if c < ADDRESS_END)
    known = neighbours()
    paths = [Path(None, b"")]  # 0: outside the scan (never used), or the kernel's to decide
    by_route: dict[Route, int] = {}
    segment_paths: list[int] = []
    for i, start in enumerate(starts):
        end = (starts[i + 1] if i + 1 < len(starts) else ADDRESS_END) - 1
        if end < low or start > high:
            segment_paths.append(0)
            continue
        best = best_route(routes, start)
        if isinstance(best, Route):
            if best not in by_route:
                by_route[best] = len(paths)
                paths.append(_path(best, start + (end - start) // 2, known))
            segment_paths.append(by_route[best])
        else:
            segment_paths.append(len(paths))
            paths.append(Path(None, kernel_source(start + (end - start) // 2)))
    return RoutePlan(starts, segment_paths, paths)


def _path(route: Route, sample: int, known: dict[tuple[bytes, int], bytes]) -> Path:
    source = route.source or kernel_source(sample)
    if (route.kind != RTN_UNICAST or route.multipath or not route.gateway
            or route.ifindex is None or route.flags & (RTNH_F_DEAD | RTNH_F_LINKDOWN)
            or not source):
        return Path(route.ifindex, source)
    ours = _ethernet_address(route.ifindex)
    if ours is None:
        return Path(route.ifindex, source)
    theirs = known.get((route.gateway, route.ifindex))
    if theirs is None:
        return Path(route.ifindex, source, None, route.gateway)
    return Path(route.ifindex, source, (ours, theirs), route.gateway)
