"""Address keys, merged key intervals, and the special networks a scan refuses by default.

Owns: the single integer key space of IPv4 and IPv6 addresses (`address_key`, `host_string`),
subtracting key intervals (`subtract_blocks`, `Intervals`; merging is `targets.blocks`'),
`SPECIAL_NETWORKS` and the check that refuses them (`check_special`) unless an exclusion covers
the overlap.

Must not: do any I/O, or hold one entry per address (intervals only: memory stays flat in the
size of a range); import anything of the package but `exceptions` (through `targets.errors`)
and `targets.blocks`.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Final

from vncaudit.targets.blocks import merge_blocks as merge_blocks
from vncaudit.targets.errors import fail

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
V6_BIT: Final = 1 << 128
_MASK128: Final = V6_BIT - 1
PORT_BITS: Final = 16
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_key(ip: IPAddress) -> int:
    return int(ip) | (V6_BIT if ip.version == 6 else 0)


def host_string(key: int) -> str:
    if key < V6_BIT:
        return f"{key >> 24}.{(key >> 16) & 255}.{(key >> 8) & 255}.{key & 255}"
    return str(ipaddress.IPv6Address(key & _MASK128))


def subtract_blocks(blocks: list[tuple[int, int]],
                    cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """*blocks* minus *cut*; both merged (see `merge_blocks`)."""
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
class Intervals:
    """Merged intervals with O(log n) membership."""

    firsts: list[int] = field(default_factory=list)
    lasts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, merged: list[tuple[int, int]]) -> Intervals:
        return cls([a for a, _ in merged], [b for _, b in merged])

    def covers(self, first: int, last: int) -> bool:
        k = bisect_right(self.firsts, first) - 1
        return k >= 0 and self.lasts[k] >= last


_SPECIAL: Final = tuple(
    (address_key(net.network_address), address_key(net.broadcast_address), f"{net} ({why})")
    for net, why in ((ipaddress.ip_network(n), w) for n, w in SPECIAL_NETWORKS)
)


def check_special(first: int, last: int, excluded: Intervals, where: str) -> None:
    for s_first, s_last, name in _SPECIAL:
        if first > s_last or last < s_first:  # the common case, without min/max calls: an
            continue                          # nmap pattern may bring 65,536 intervals
        lo, hi = max(first, s_first), min(last, s_last)
        if not excluded.covers(lo, hi):
            verb = "is in" if first == last else "overlaps"
            raise fail(f"{where} {verb} {name}; use --allow-special to scan it anyway")
