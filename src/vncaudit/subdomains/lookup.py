"""Name lookups of one discovery run: A and AAAA with CNAME chasing, the apex and its NS.

Owns: `Discovery`, the state one run of `discover` shares (the domain, the `DnsSender`, the errors,
the hosts found so far, merged by `add`), `chase` (one record type, CNAMEs followed through the
answer and by new queries, MAX_CNAME_CHAIN links at most, loops stopped), `lookup` (A and AAAA
together), the apex's NS records (NXDOMAIN is a `UsageError`, no usable answer a
`NetworkError`), the apex's own addresses and the addresses of its NS names.

Must not: send a query other than through `DnsSender.query`, raise for a failure on one name (it is
recorded in the errors), or import anything of the package but `exceptions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from vncaudit.exceptions import NetworkError
from vncaudit.subdomains.names import fail, format_server
from vncaudit.subdomains.query import ADDRESS_TYPES, DnsSender, ErrorLines, QueryFailed, name_text
from vncaudit.subdomains.results import SOURCE_APEX, SOURCE_NS, FoundHost

log = logging.getLogger(__name__)

MAX_CNAME_CHAIN: Final = 8  # resolvers give up around here too (BIND: 16, Unbound: 11)


@dataclass
class _Chain:
    """What one (name, A or AAAA) lookup found, CNAMEs followed."""

    exists: bool = False
    addresses: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class _Lookup:
    """A and AAAA of one name together."""

    exists: bool
    addresses: tuple[str, ...]
    cnames: tuple[str, ...]


class Discovery:
    """One run of `discover`: the state its steps share."""

    def __init__(self, domain: str, dns_: DnsSender, axfr_port: int, errors: ErrorLines) -> None:
        self.domain = domain
        self.origin = dns.name.from_text(domain)
        self.dns = dns_
        self.axfr_port = axfr_port
        self.errors = errors
        self.hosts: dict[str, FoundHost] = {}

    # -- lookups -----------------------------------------------------------------------------

    async def chase(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Chain:
        """Addresses of *rdtype* for *name*, following CNAMEs through the answer and, where a
        chain leaves it (an authoritative server does not chase out of its zone), by new
        queries; at most MAX_CNAME_CHAIN links, a loop stops at the repeated name."""
        out = _Chain()
        chain: list[dns.name.Name] = []
        seen = {name}
        current = name
        while True:
            try:
                response = await self.dns.query(current, rdtype)
            except QueryFailed as exc:
                out.error = f"{name_text(current)} {rdtype.name}: {exc}"
                break
            rcode = response.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                out.error = f"{name_text(current)} {rdtype.name}: {dns.rcode.to_text(rcode)}"
                break
            cnames: dict[dns.name.Name, dns.name.Name] = {}
            found: dict[dns.name.Name, list[str]] = {}
            for rrset in response.answer:
                if rrset.rdclass != dns.rdataclass.IN:
                    continue
                if rrset.rdtype == dns.rdatatype.CNAME:
                    cnames[rrset.name] = rrset[0].target
                elif rrset.rdtype == rdtype:
                    found.setdefault(rrset.name, []).extend(rd.address for rd in rrset)
            if rcode == dns.rcode.NOERROR or cnames:
                out.exists = True  # NXDOMAIN after a CNAME is about the target, not the name
            queried = current
            while current in cnames and current not in found:
                target = cnames[current]
                chain.append(target)
                if target in seen:
                    out.error = "CNAME loop: " + " -> ".join(map(name_text, [name, *chain]))
                    break
                if len(chain) > MAX_CNAME_CHAIN:
                    out.error = (f"{name_text(name)}: CNAME chain longer than {MAX_CNAME_CHAIN}, "
                                 "not followed further")
                    break
                seen.add(target)
                current = target
            if out.error or current in found:
                out.addresses = tuple(found.get(current, ()))
                break
            if current == queried or rcode == dns.rcode.NXDOMAIN:
                break  # no data here, or the chain's last target does not exist
        out.cnames = tuple(map(name_text, chain))
        return out

    async def lookup(self, name: dns.name.Name) -> _Lookup:
        """A and AAAA of *name* (both asked at once), CNAMEs chased; errors recorded."""
        v4, v6 = await asyncio.gather(*(self.chase(name, t) for t in ADDRESS_TYPES))
        for part in (v4, v6):
            if part.error:
                self.errors.add(part.error)
        addresses = tuple(dict.fromkeys(v4.addresses + v6.addresses))
        cnames = v4.cnames if len(v4.cnames) >= len(v6.cnames) else v6.cnames
        return _Lookup(v4.exists or v6.exists, addresses, cnames)

    def add(self, name: str, addresses: Iterable[str], cnames: Iterable[str], source: str
            ) -> None:
        """Record *name* as found by *source*, merging with what is known of it already."""
        old = self.hosts.get(name)
        if old is None:
            self.hosts[name] = FoundHost(name, tuple(dict.fromkeys(addresses)),
                                         tuple(cnames), (source,))
            log.debug("found %s via %s", name, source)
            return
        merged = tuple(dict.fromkeys(old.addresses + tuple(addresses)))
        sources = old.sources if source in old.sources else (*old.sources, source)
        self.hosts[name] = FoundHost(name, merged, old.cnames or tuple(cnames), sources)

    # -- apex and NS ------------------------------------------------------------------------

    async def apex_ns(self) -> list[dns.name.Name]:
        """The domain's NS names; refuses a domain that does not exist (NXDOMAIN) or that the
        resolver cannot answer for at all."""
        server = ", ".join(format_server(ip, port) for ip, port in self.dns.servers)
        try:
            response = await self.dns.query(self.origin, dns.rdatatype.NS)
        except QueryFailed as exc:
            raise NetworkError(f"resolver {server} gave no answer for {self.domain}: {exc}"
                               ) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            raise fail(f"domain {self.domain} does not exist (NXDOMAIN from {server})")
        if rcode != dns.rcode.NOERROR:
            raise NetworkError(f"resolver {server} answered {dns.rcode.to_text(rcode)} for "
                               f"{self.domain}; choose another --resolver")
        names: list[dns.name.Name] = []
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.NS and rrset.name == self.origin:
                names += [rd.target for rd in rrset if rd.target not in names]
        return names

    async def apex(self) -> None:
        found = await self.lookup(self.origin)
        if found.addresses:
            self.add(self.domain, found.addresses, found.cnames, SOURCE_APEX)

    async def ns_addresses(self, ns_names: list[dns.name.Name]) -> dict[str, tuple[str, ...]]:
        """Addresses of each NS name; in-domain NS names become hosts (source "ns")."""
        lookups = await asyncio.gather(*(self.lookup(ns) for ns in ns_names))
        out: dict[str, tuple[str, ...]] = {}
        for ns, found in zip(ns_names, lookups, strict=True):
            out[name_text(ns)] = found.addresses
            if found.addresses and ns.is_subdomain(self.origin):
                self.add(name_text(ns), found.addresses, found.cnames, SOURCE_NS)
        return out
