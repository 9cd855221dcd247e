"""The target space: every validated (address, port) of a scan, and how to walk it.

Owns: `build_target_space` (validates every expression, input file and exclusion before
anything is sent; applies the special-network policy) and `TargetSpace` (exact counts,
membership, `iter_targets` in a seeded pseudo-random order, shards for the cluster).

Must not: open sockets or send packets, materialise a range (a space stores one entry per
merged interval, never per address), or import anything of the package but `models` and
`exceptions`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vncaudit.basics import Target
from vncaudit.targets.addresses import (
    PORT_BITS,
    Intervals,
    address_key,
    check_special,
    host_string,
    merge_blocks,
    subtract_blocks,
)
from vncaudit.targets.errors import fail, quote
from vncaudit.targets.expressions import (
    CachingResolver,
    Resolver,
    check_v6_size,
    default_resolver,
    ip_or_none,
    parse_at,
)
from vncaudit.targets.inputs import PathLike, expression_sources, read_masscan, read_nmap_xml
from vncaudit.targets.permutation import CyclicPermutation
from vncaudit.targets.ports import check_ports, format_ports

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

_V4_END = 1 << 32  # IPv4 keys are below this (see addresses.address_key)

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
        main = Intervals.of(blocks)
        extra = {key for key in (pair >> PORT_BITS for pair in pairs) if not main.covers(key, key)}
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
        ip = ip_or_none(item.host)
        if ip is None:
            return False
        key = address_key(ip)
        k = bisect_right(self._firsts, key) - 1
        if k >= 0 and key - self._firsts[k] < self._offsets[k + 1] - self._offsets[k]:
            i = bisect_left(self.ports, item.port)
            if i < len(self.ports) and self.ports[i] == item.port:
                return True
        pair = (key << PORT_BITS) | item.port
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
            raise fail(f"invalid shard {index!r}/{count!r}: need 0 <= index < count")
        perm = CyclicPermutation(self.count, self.seed if seed is None else seed)
        return map(self._target, perm.indices(index, count))

    def walk(self, seed: int | None = None, shard: tuple[int, int] | None = None,
             skip: Collection[tuple[str, int]] = ()) -> TargetWalk:
        """The walk of `iter_targets(seed, shard)` minus the (host, port) pairs in *skip* (those
        a resumed scan has done), readable one `Target` at a time or in blocks (`TargetWalk`)."""
        index, count = shard if shard is not None else (0, 1)
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise fail(f"invalid shard {index!r}/{count!r}: need 0 <= index < count")
        return TargetWalk(self, self.seed if seed is None else seed, (index, count), skip)

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
            key, port = pair >> PORT_BITS, pair & 0xFFFF
        host = host_string(key)
        zone = self._zones.get(key)
        return Target(f"{host}%{zone}" if zone else host, port, self._hostnames.get(key))


@dataclass(frozen=True)
class TargetBlock:
    """A stretch of a walk: its IPv4 targets as one array of `(address << 16) | port` (the
    order of the walk), every other target (IPv6) as a `Target`."""

    pairs: npt.NDArray[np.uint64]
    others: tuple[Target, ...]


class TargetWalk:
    """One walk over a `TargetSpace` (seed, shard), minus pairs already done.

    Iterating gives `Target`s (as `iter_targets`); `blocks()` gives the same targets in
    `TargetBlock`s, computed with numpy a block at a time, for a sender that handles thousands
    of targets per call and must not build an object per silent address. `target(pair)` turns
    an IPv4 pair of a block back into its `Target` (with the host name it was given by).
    """

    def __init__(self, space: TargetSpace, seed: int, shard: tuple[int, int],
                 skip: Collection[tuple[str, int]]) -> None:
        self.space = space
        self.seed = seed
        self.shard = shard
        self.skip = skip

    def __iter__(self) -> Iterator[Target]:
        targets = self.space.iter_targets(self.seed, self.shard)
        if not self.skip:
            return targets
        skip = self.skip
        return (t for t in targets if (t.host, t.port) not in skip)

    def __len__(self) -> int:
        """Targets of the whole space (not of the shard, nor minus the skipped ones)."""
        return self.space.count

    def target(self, pair: int) -> Target:
        key = pair >> PORT_BITS
        return Target(host_string(key), pair & 0xFFFF, self.space._hostnames.get(key))

    def blocks(self, size: int = 4096) -> Iterator[TargetBlock]:
        import numpy as np

        space = self.space
        perm = CyclicPermutation(space.count, self.seed)
        if perm.p >= 1 << 48:  # beyond the vector walk (huge IPv6 spaces): same order, slower
            yield from self._blocks_from_targets(size)
            return
        skip = self._skip_pairs()
        v4 = bisect_left(space._firsts, _V4_END)
        offsets = np.array(space._offsets[:v4 + 1], dtype=np.uint64)
        firsts = np.array(space._firsts[:v4], dtype=np.uint64)
        ports = np.array(space.ports or (0,), dtype=np.uint64)
        nports = np.uint64(max(1, len(space.ports)))
        v4_end = int(offsets[-1]) * len(space.ports)
        sixteen = np.uint64(PORT_BITS)
        for indices in perm.index_blocks(*self.shard, size=size):
            v4_mask = indices < np.uint64(v4_end)
            main = indices[v4_mask]
            rows = main // nports
            which = np.searchsorted(offsets, rows, side="right") - 1
            keys = firsts[which] + (rows - offsets[which])
            pairs = (keys << sixteen) | ports[main % nports]
            others: list[Target] = []
            if not v4_mask.all():
                # The rest: IPv6 (as Targets) and explicit pairs; IPv4 pairs keep their place.
                placed = np.zeros(len(indices), dtype=np.uint64)
                placed[v4_mask] = pairs
                keep = v4_mask.copy()
                for at in np.flatnonzero(~v4_mask).tolist():
                    i = int(indices[at])
                    pair = space._pairs[i - space._main] if i >= space._main else -1
                    if 0 <= pair < _V4_END << PORT_BITS:
                        placed[at] = pair
                        keep[at] = True
                    else:
                        others.append(space._target(i))
                pairs = placed[keep]
            if skip is not None and len(pairs):
                at = np.minimum(np.searchsorted(skip, pairs), len(skip) - 1)
                pairs = pairs[skip[at] != pairs]
            if self.skip and others:
                others = [t for t in others if (t.host, t.port) not in self.skip]
            if len(pairs) or others:
                yield TargetBlock(pairs, tuple(others))

    def _skip_pairs(self) -> npt.NDArray[np.uint64] | None:
        """The skipped IPv4 pairs, sorted, for a vector membership test (None when none)."""
        import numpy as np

        pairs: list[int] = []
        for host, port in self.skip:
            parts = host.split(".")
            if len(parts) == 4 and all(p.isdigit() for p in parts):
                a, b, c, d = (int(p) for p in parts)
                pairs.append((((a << 24) | (b << 16) | (c << 8) | d) << PORT_BITS) | port)
        if not pairs:
            return None
        out = np.array(pairs, dtype=np.uint64)
        out.sort()  # duplicates do no harm to the membership test
        return out

    def _blocks_from_targets(self, size: int) -> Iterator[TargetBlock]:
        import numpy as np

        pairs: list[int] = []
        others: list[Target] = []
        for target in self:
            ip = ip_or_none(target.host)
            if ip is not None and ip.version == 4:
                pairs.append((int(ip) << PORT_BITS) | target.port)
            else:
                others.append(target)
            if len(pairs) + len(others) >= size:
                yield TargetBlock(np.array(pairs, dtype=np.uint64), tuple(others))
                pairs, others = [], []
        if pairs or others:
            yield TargetBlock(np.array(pairs, dtype=np.uint64), tuple(others))


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
    ranges (`10.0.0.1-10.0.0.50`, `10.0.0.1-50`), nmap octet patterns (`10.0.0.*`,
    `10.0.0-1.1-254`, `10.0.0.1,3`), `hostname/prefix` or hostnames (resolved once through
    *resolve*, default `socket.getaddrinfo`; every address kept, each target carrying the
    name; `hostname/prefix` names only the name's own addresses). Their
    addresses are scanned on *ports*. *nmap_xml* and *masscan* files add their live hosts: with
    the (host, port) pairs they report open when they list ports, else on *ports*. *excludes*
    and *exclude_files* take the same syntax and are removed from everything. The same address
    and port is never yielded twice. Raises `UsageError` (one line) on any bad input, on a
    special network (see `SPECIAL_NETWORKS`) unless *allow_special*, on an IPv6 expression over
    2**24 addresses, and when no target is given or left.
    """
    resolver = CachingResolver(resolve or default_resolver)
    port_tuple = check_ports(ports)
    expressions = [expressions] if isinstance(expressions, str) else list(expressions)
    exclusions = _read_exclusions(excludes, exclude_files, resolver, allow_special)
    gathered = _Gathered()
    _gather_expressions(gathered, expressions, input_files, resolver, exclusions)
    _gather_scan_files(gathered, nmap_xml, masscan, exclusions)
    if not gathered.blocks and not gathered.pairs:
        if not (expressions or input_files or nmap_xml or masscan):
            raise fail("no targets given: name IPs, CIDRs, ranges or hostnames (or use -iL)")
        raise fail("no targets given: the input files list no target")
    if gathered.blocks and not port_tuple:
        raise fail("no ports given")
    space = _space(gathered, port_tuple, exclusions)
    log.debug("target space: %r", space)
    return space


@dataclass(frozen=True)
class _Exclusions:
    """What the exclusions cover (merged intervals, and the same for lookups), their
    normalised expressions, and whether special networks are let through."""

    merged: list[tuple[int, int]]
    intervals: Intervals
    norms: list[str]
    allow_special: bool

    def admit(self, first: int, last: int, where: str) -> None:
        """Raise UsageError when keys first..last reach a special network not excluded."""
        if not self.allow_special:
            check_special(first, last, self.intervals, where)


def _read_exclusions(excludes: Iterable[str], exclude_files: Sequence[PathLike],
                     resolver: CachingResolver, allow_special: bool) -> _Exclusions:
    blocks: list[tuple[int, int]] = []
    norms: dict[str, None] = {}
    for location, expr in expression_sources(excludes, exclude_files):
        parsed, _ = parse_at(location, expr, resolver, "exclusion")
        blocks += parsed.blocks
        norms[parsed.norm] = None
    merged = merge_blocks(blocks)
    return _Exclusions(merged, Intervals.of(merged), list(norms), allow_special)


@dataclass(frozen=True)
class _Gathered:
    """Everything the targets name, before exclusions: address intervals to scan on the -p
    ports, (address << 16 | port) pairs from scan files, the first name and IPv6 zone seen
    for an address key, and the normalised expressions in order (a dict as an ordered set)."""

    blocks: list[tuple[int, int]] = field(default_factory=list)
    pairs: set[int] = field(default_factory=set)
    hostnames: dict[int, str] = field(default_factory=dict)
    zones: dict[int, str] = field(default_factory=dict)
    described: dict[str, None] = field(default_factory=dict)


def _gather_expressions(gathered: _Gathered, expressions: Iterable[str],
                        input_files: Sequence[PathLike], resolver: CachingResolver,
                        exclusions: _Exclusions) -> None:
    """The target expressions and the lines of the -iL files."""
    for location, expr in expression_sources(expressions, input_files):
        parsed, where = parse_at(location, expr, resolver, "target")
        check_v6_size(parsed, where)
        gathered.described[parsed.norm] = None
        for first, last in parsed.blocks:
            if parsed.hostname:
                exclusions.admit(first, last, f"{where} (resolves to {host_string(first)})")
                gathered.hostnames.setdefault(first, parsed.hostname)
            else:
                exclusions.admit(first, last, where)
            gathered.blocks.append((first, last))
        for key, zone in parsed.zones.items():
            gathered.zones.setdefault(key, zone)
        for key, name in parsed.names.items():
            gathered.hostnames.setdefault(key, name)


def _gather_scan_files(gathered: _Gathered, nmap_xml: Sequence[PathLike],
                       masscan: Sequence[PathLike], exclusions: _Exclusions) -> None:
    """The live hosts of nmap XML and masscan files: their open ports where they list ports,
    else the whole address (scanned on the -p ports)."""
    for path, reader in [*((p, read_nmap_xml) for p in nmap_xml),
                         *((p, read_masscan) for p in masscan)]:
        for host in reader(path):
            ip = ip_or_none(host.addr)
            if ip is None or (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id):
                raise fail(f"{path}: invalid host address {quote(host.addr)}")
            key = address_key(ip)
            exclusions.admit(key, key, f"{path}: host {ip}")
            if host.ports != []:
                gathered.described[str(ip)] = None
            if host.hostname:
                gathered.hostnames.setdefault(key, host.hostname)
            if host.ports is None:
                gathered.blocks.append((key, key))
            else:
                gathered.pairs.update((key << PORT_BITS) | port for port in host.ports)


def _space(gathered: _Gathered, port_tuple: tuple[int, ...],
           exclusions: _Exclusions) -> TargetSpace:
    """The space left once the exclusions are taken out; a pair a scan file gave is kept
    only where the intervals on the -p ports do not already hold it."""
    merged = subtract_blocks(merge_blocks(gathered.blocks), exclusions.merged)
    space_main = Intervals.of(merged)
    port_set = frozenset(port_tuple)
    excluded = exclusions.intervals

    def extra(pair: int) -> bool:
        key = pair >> PORT_BITS
        if excluded.covers(key, key):
            return False
        return not (space_main.covers(key, key) and (pair & 0xFFFF) in port_set)

    pairs = sorted(filter(extra, gathered.pairs))
    if not merged and not pairs:
        raise fail("no targets left: the exclusions cover every target given")
    # 64 bits from os.urandom, as secrets.randbits(64) reads them, without hmac and hashlib
    seed = int.from_bytes(os.urandom(8), "big")
    return TargetSpace(
        merged, port_tuple, pairs,
        {k: v for k, v in gathered.hostnames.items() if not excluded.covers(k, k)},
        gathered.zones, list(gathered.described), exclusions.norms, seed,
    )
