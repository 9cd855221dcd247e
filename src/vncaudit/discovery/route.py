"""Which way each IPv4 destination leaves this host, read from the kernel's routing table once,
so the SYN sender can pick a path for thousands of destinations with one vector lookup.

Owns: dumping the IPv4 routes and policy rules over rtnetlink, cutting the address space into
segments that each have one route (the longest prefix, lowest metric, tables local, main and
default in that order, as the kernel looks them up when no other rule exists), the source
address of each route (the kernel's own choice, asked with a connected UDP socket, which sends
nothing), and the gateway's link-layer address from the neighbour table: the pieces are
`vncaudit.routetable`'s (the early start reads the same ones without numpy), the vector
look-up is this module's.

A segment gets a `Path` with `link` set (Ethernet frames straight to the gateway) only when all
of that is exact: no policy rules, one unicast route with one gateway on an Ethernet interface
that is up, and the gateway's address resolved. Everything else (on-link destinations, policy
routing, multipath, blackholes, an unresolved gateway, a table too large to cut) goes to the
kernel: `link` None, and the kernel routes and resolves each packet itself.

Must not: send anything, or guess a route the kernel would not take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vncaudit.rawsyn import kernel_source as kernel_source
from vncaudit.routetable import (
    ADDRESS_END,
    MAX_ROUTES,
    RTN_UNICAST,
    Route,
    best_route,
    cuts,
    ethernet_address,
    frames_possible,
    neighbours,
    only_default_rules,
    routes,
    source_of,
)

__all__ = ["ADDRESS_END", "RTN_UNICAST", "Path", "Route", "RoutePlan", "best_route",
           "kernel_source", "neighbours", "plan"]


@dataclass(frozen=True)
class Path:
    """How SYNs to one segment leave: the interface and source address the kernel would use,
    and, when exact, (our link-layer address, the gateway's) for frames sent straight out."""

    ifindex: int | None
    source: bytes  # 4 bytes; b"" when the kernel has no route (sending then fails, as it should)
    link: tuple[bytes, bytes] | None = None
    gateway: bytes = b""  # for a path that could go straight out once this neighbour resolves


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
# The plan


def plan(for_addresses: tuple[int, int] = (0, ADDRESS_END - 1)) -> RoutePlan:
    """The plan for the IPv4 space (only the segments meeting `for_addresses`, an inclusive
    range, get a real path; the rest is the kernel's), with fresh neighbour entries."""
    low, high = for_addresses
    try:
        table = routes()
        exact = only_default_rules() and len(table) <= MAX_ROUTES
    except OSError:
        table, exact = [], False
    if not exact:
        return RoutePlan([0], [0], [Path(None, b"")])  # the kernel's, source asked per net
    starts = cuts(table, 0, ADDRESS_END - 1)
    if high + 1 < ADDRESS_END and high + 1 not in starts:
        starts = sorted({*starts, high + 1})
    if low not in starts:
        starts = sorted({*starts, low})
    known = neighbours()
    paths = [Path(None, b"")]  # 0: outside the scan (never used), or the kernel's to decide
    by_route: dict[Route, int] = {}
    segment_paths: list[int] = []
    for i, start in enumerate(starts):
        end = (starts[i + 1] if i + 1 < len(starts) else ADDRESS_END) - 1
        if end < low or start > high:
            segment_paths.append(0)
            continue
        best = best_route(table, start)
        if isinstance(best, Route):
            if best not in by_route:
                by_route[best] = len(paths)
                paths.append(_path(best, source_of(best, start, end), known))
            segment_paths.append(by_route[best])
        else:
            segment_paths.append(len(paths))
            paths.append(Path(None, source_of(best, start, end)))
    return RoutePlan(starts, segment_paths, paths)


def _path(route: Route, source: bytes, known: dict[tuple[bytes, int], bytes]) -> Path:
    if not frames_possible(route, source) or route.ifindex is None:
        return Path(route.ifindex, source)
    ours = ethernet_address(route.ifindex)
    if ours is None:
        return Path(route.ifindex, source)
    theirs = known.get((route.gateway, route.ifindex))
    if theirs is None:
        return Path(route.ifindex, source, None, route.gateway)
    return Path(route.ifindex, source, (ours, theirs), route.gateway)
