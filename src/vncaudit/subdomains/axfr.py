"""Zone transfers: AXFR from the domain's authoritative servers, and what the zone says.

Owns: `transfer` (one AXFR attempt over TCP, read by hand: partial data kept, record count
capped at MAX_AXFR_RECORDS, whole transfer bounded by AXFR_LIFETIME_FACTOR timeouts, outcome an
`AxfrStatus`), `Zone` (records merged from every transfer), `zone_hosts` (the zone's names as
hosts, CNAMEs that leave the zone chased by query) and `skip_after_transfer` (which wordlist
names a complete transfer already answered).

Must not: connect anywhere but an address of one of the domain's NS names, take more than one
`DnsSender.slot` per transfer, keep records outside the domain, raise for a failed transfer (it is a
status and an error line), or import anything of the package but `exceptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from vncaudit.subdomains.lookup import MAX_CNAME_CHAIN, Discovery
from vncaudit.subdomains.query import ADDRESS_TYPES, describe_error, name_text
from vncaudit.subdomains.results import SOURCE_AXFR_PREFIX, AxfrStatus

log = logging.getLogger(__name__)

MAX_AXFR_TARGETS: Final = 16  # NS addresses tried; more is a misconfiguration, not a zone
MAX_AXFR_RECORDS: Final = 250_000  # memory bound against a server that never ends a transfer
AXFR_LIFETIME_FACTOR: Final = 10  # a whole transfer may take this many per-read timeouts


@dataclass
class Zone:
    """Records of the domain's zone, merged from every transfer that gave some."""

    addresses: dict[dns.name.Name, list[str]] = field(default_factory=dict)
    cname: dict[dns.name.Name, dns.name.Name] = field(default_factory=dict)
    delegations: set[dns.name.Name] = field(default_factory=set)
    names: set[dns.name.Name] = field(default_factory=set)
    sources: dict[dns.name.Name, list[str]] = field(default_factory=dict)
    complete: bool = False  # at least one transfer ran to its closing SOA


async def transfer(run: Discovery, ns: str, address: str, zone: Zone) -> AxfrStatus:
    """Try AXFR from one server over TCP and merge what came into *zone*.

    Read by hand rather than with dns.asyncquery.inbound_xfr: this keeps partial data from
    an interrupted transfer, caps the record count, and tolerates zones that dnspython's
    Zone would reject (a scanner reads other people's mistakes)."""
    return await _Transfer(run, ns, address, zone).attempt()


class _Transfer:
    """One AXFR attempt: the query, where it goes, and how far the answer got (records
    merged, whether the opening SOA came, how many SOAs were seen)."""

    def __init__(self, run: Discovery, ns: str, address: str, zone: Zone) -> None:
        self.run = run
        self.address = address
        self.zone = zone
        self.query = dns.message.make_query(run.origin, dns.rdatatype.AXFR)
        self.query.flags &= ~dns.flags.RD
        self.source = SOURCE_AXFR_PREFIX + ns
        self.where = f"AXFR {ns}@{address}"
        self.records = 0
        self.started = False
        self.soa_seen = 0

    async def attempt(self) -> AxfrStatus:
        """Connect within one slot, send the query, read the answer; every failure is a
        status and one error line."""
        run, where = self.run, self.where
        wire = self.query.to_wire()
        timeout = run.dns.timeout
        async with run.dns.slot():
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(timeout * AXFR_LIFETIME_FACTOR):
                    try:
                        reader, stream = await asyncio.wait_for(
                            asyncio.open_connection(self.address, run.axfr_port), timeout)
                    except OSError as exc:
                        run.errors.add(f"{where}: unreachable ({describe_error(exc)})")
                        return AxfrStatus.UNREACHABLE
                    writer = stream
                    stream.write(struct.pack("!H", len(wire)) + wire)
                    await stream.drain()
                    return await self._read(reader)
            except TimeoutError:
                run.errors.add(f"{where}: timeout" + (f" after {self.records} records"
                                                      if self.started else ""))
                return AxfrStatus.TIMEOUT
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                run.errors.add(f"{where}: {describe_error(exc)}")
                return AxfrStatus.ERROR
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> AxfrStatus:
        """Read length-prefixed messages until one ends the transfer."""
        timeout = self.run.dns.timeout
        while True:
            try:
                size = struct.unpack(
                    "!H", await asyncio.wait_for(reader.readexactly(2), timeout))[0]
                data = await asyncio.wait_for(reader.readexactly(size), timeout)
            except asyncio.IncompleteReadError:
                if not self.started:
                    self.run.errors.add(f"{self.where}: connection closed without an answer")
                    return AxfrStatus.CLOSED
                self.run.errors.add(f"{self.where}: connection closed mid-transfer after "
                                    f"{self.records} records")
                return AxfrStatus.ERROR
            message = dns.message.from_wire(data, xfr=True, one_rr_per_rrset=True)
            if message.id != self.query.id:
                raise ValueError("answer for another query id")
            status = self._take(message)
            if status is not None:
                return status

    def _take(self, message: dns.message.Message) -> AxfrStatus | None:
        """Merge one message's records into the zone; the status when it ends the transfer
        (an error code, no opening SOA, the closing SOA, too many records), else None."""
        run, where = self.run, self.where
        rcode = message.rcode()
        if rcode != dns.rcode.NOERROR:
            run.errors.add(f"{where}: {dns.rcode.to_text(rcode)}")
            if self.started:
                return AxfrStatus.ERROR
            return {dns.rcode.REFUSED: AxfrStatus.REFUSED,
                    dns.rcode.NOTAUTH: AxfrStatus.NOTAUTH}.get(rcode, AxfrStatus.ERROR)
        for rrset in message.answer:
            if not self.started and rrset.rdtype != dns.rdatatype.SOA:
                run.errors.add(f"{where}: transfer does not start with SOA")
                return AxfrStatus.ERROR
            self.started = True
            if rrset.rdtype == dns.rdatatype.SOA:
                self.soa_seen += 1
                if self.soa_seen >= 2:  # the closing SOA ends the transfer
                    self.zone.complete = True
                    log.info("%s: zone transfer allowed, %d records", where, self.records)
                    return AxfrStatus.OK
            self.records += len(rrset)
            _zone_rrset(run, self.zone, rrset, self.source)
        if self.records > MAX_AXFR_RECORDS:
            run.errors.add(f"{where}: stopped after {self.records} records")
            return AxfrStatus.TRUNCATED
        return None


def _zone_rrset(run: Discovery, zone: Zone, rrset: Any, source: str) -> None:
    name: dns.name.Name = rrset.name
    if not name.is_subdomain(run.origin):
        return  # a server may send anything; only the domain's own names count
    zone.names.add(name)
    zone.sources.setdefault(name, [])
    if source not in zone.sources[name]:
        zone.sources[name].append(source)
    if rrset.rdtype in ADDRESS_TYPES:
        known = zone.addresses.setdefault(name, [])
        known += [rd.address for rd in rrset if rd.address not in known]
    elif rrset.rdtype == dns.rdatatype.CNAME:
        zone.cname[name] = rrset[0].target
    elif rrset.rdtype == dns.rdatatype.NS and name != run.origin:
        zone.delegations.add(name)


async def zone_hosts(run: Discovery, zone: Zone) -> None:
    """Turn transferred records into hosts; CNAMEs leaving the zone are chased by query."""
    for name in sorted(zone.names):
        if "*" in name_text(name).split("."):
            continue  # a wildcard owner is no host (wildcard() reports it)
        if name not in zone.addresses and name not in zone.cname:
            continue  # NS, MX, TXT-only names: nothing to scan
        addresses = list(zone.addresses.get(name, ()))
        chain: list[dns.name.Name] = []
        current = name
        while not addresses and current in zone.cname:
            target = zone.cname[current]
            chain.append(target)
            if target in chain[:-1] or target == name or len(chain) > MAX_CNAME_CHAIN:
                run.errors.add("CNAME loop or overlong chain in zone: "
                               + " -> ".join(map(name_text, [name, *chain])))
                break
            current = target
            addresses = list(zone.addresses.get(current, ()))
        else:
            if not addresses and chain and current not in zone.names:
                found = await run.lookup(current)  # the chain leaves the zone
                addresses = list(found.addresses)
                chain += [dns.name.from_text(c) for c in found.cnames]
        for source in zone.sources[name]:
            run.add(name_text(name), addresses, map(name_text, chain), source)


def skip_after_transfer(zone: Zone, name: dns.name.Name) -> bool:
    """A complete transfer already answers for *name* unless it lies at or below a
    delegation (its records then live in the child zone, which was not transferred)."""
    if not zone.complete:
        return False
    return not any(name.is_subdomain(cut) for cut in zone.delegations)
