"""Which of our addresses a connection leaves from, known before anything is sent.

Owns: `SourceResolver` (the kernel's route choice, asked with a UDP socket's connect, which
sends nothing, and this host's addresses: both read by `vncaudit.admission`, with which the
early start of a connect scan keys its first grant) and the alternative loopback addresses a
local listener can be reached from.
Must not: open a TCP connection or send a packet.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

from vncaudit import admission

# Other loopback addresses a local listener can be reached from when 127.0.0.1's budget is
# spent: each is its own tally on the server, and no user of the listener comes from them.
ALTERNATE_LOOPBACK: Final = tuple(f"127.0.0.{n}" for n in range(2, 255))

class SourceResolver:
    """Which of our addresses a connection to a host leaves from, asked of the kernel without
    sending anything (a UDP socket's connect picks the route). Cached per /24 (IPv4) and /64
    (IPv6), as the SYN sweep does; loopback and this host's own addresses are exact."""

    HOSTS_KEPT: Final = 1 << 17  # answers remembered per address (a /15 of one scan)

    def __init__(self) -> None:
        self._routes: dict[bytes | str, str] = {}  # /24 ("a.b.c") or /64 prefix -> ours
        self._hosts: dict[str, str] = {}
        self._local: frozenset[str] | None = None

    def local_addresses(self) -> frozenset[str]:
        if self._local is None:
            self._local = frozenset(_canonical(a) for a in admission.interface_addresses())
        return self._local

    def is_this_host(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        return ip.is_loopback or str(ip) in self.local_addresses()

    def __call__(self, host: str) -> str:
        """Our address towards `host` ("" when there is no route, or `host` is no address)."""
        net, dot, last = host.rpartition(".")
        if dot and last.isdigit() and net.count(".") == 2 and not host.startswith("127."):
            # A dotted quad, as the target space writes them: its /24 decides, unless it is
            # one of our own addresses.
            known = self._routes.get(net)
            if known is not None and host not in self.local_addresses():
                return known
        known = self._hosts.get(host)
        if known is None:
            known = self._resolve(host)
            if len(self._hosts) < self.HOSTS_KEPT:
                self._hosts[host] = known
        return known

    def _resolve(self, host: str) -> str:
        try:
            packed = socket.inet_aton(host) if "." in host and ":" not in host else None
        except OSError:
            packed = None
        if packed is not None and socket.inet_ntoa(packed) == host:
            if packed[0] == 127:
                return admission.LOOPBACK_SOURCE
            family, prefix = socket.AF_INET, packed[:3]
        else:
            packed = None
            try:
                ip = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                return ""
            if ip.is_loopback:
                return "127.0.0.1" if ip.version == 4 else "::1"
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            prefix = ip.packed[:3] if ip.version == 4 else ip.packed[:8]
        canonical = socket.inet_ntoa(packed) if packed is not None else _canonical(host)
        if canonical in self.local_addresses():
            return canonical  # the kernel answers a local address from that address
        cached = self._routes.get(prefix)
        if cached is None:
            cached = _canonical(admission.route_source(host, family))
            if not cached:
                return ""  # no route: no connection will be made from anywhere
            self._routes[prefix] = cached
            if family == socket.AF_INET:
                self._routes[host.rpartition(".")[0]] = cached  # the fast path's key
        return cached


def _canonical(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


