"""Where a service can be reached from, and how that moves a severity.

Owns: `Exposure`, `exposure_of()` (an address → loopback / private / public / all interfaces /
unknown) and `shift()`. Must not: resolve names or look at interfaces (the local audit decides
ALL_INTERFACES for a listener and passes it in).
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from functools import lru_cache
from typing import Final

from vncaudit.models import Severity


class Exposure(StrEnum):
    LOOPBACK = "loopback"
    PRIVATE = "private"
    PUBLIC = "public"
    ALL_INTERFACES = "all-interfaces"  # a local listener bound to 0.0.0.0 / ::
    UNKNOWN = "unknown"


def exposure_of(host: str) -> Exposure:
    """Classify an address; a host name (no address) is UNKNOWN."""
    return _exposure_of(host)


# A scan grades each host once per open port: the last few thousand answers are kept.
@lru_cache(maxsize=4096)
def _exposure_of(host: str) -> Exposure:
    text = host.strip().strip("[]").split("%", 1)[0]  # IPv6 zone ids carry no reach
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return Exposure.UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return Exposure.ALL_INTERFACES
    if ip.is_loopback:
        return Exposure.LOOPBACK
    if ip.is_global:
        return Exposure.PUBLIC
    return Exposure.PRIVATE


# Steps an exposure-sensitive finding moves: reachable from the internet is worse than the
# base (a network), reachable only from this host is better.
EXPOSURE_STEP: Final[dict[Exposure, int]] = {
    Exposure.LOOPBACK: -1,
    Exposure.PRIVATE: 0,
    Exposure.ALL_INTERFACES: 0,
    Exposure.UNKNOWN: 0,
    Exposure.PUBLIC: 1,
}

_BY_RANK: Final = sorted(Severity, key=lambda s: s.rank)


def shift(severity: Severity, steps: int) -> Severity:
    """`severity` moved `steps` up (positive) or down, clamped to info..critical."""
    rank = min(max(severity.rank + steps, 0), len(_BY_RANK) - 1)
    return _BY_RANK[rank]
