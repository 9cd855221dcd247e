"""Subdomain discovery: find the hosts of a DNS domain, so the scan can probe them.

Owns: validating a user's domain, the built-in label wordlist (`data/subdomain_labels.txt`),
every DNS query of the discovery (NS, A, AAAA, with CNAME chasing), zone-transfer attempts
(AXFR) on each of the domain's authoritative servers, wildcard-DNS detection, the concurrency
and rate limits of that DNS traffic, and `DiscoveryResult`, which records how each name was
found (`FoundHost.sources`). `to_target_expressions` and `to_resolver` hand the result to
`vncaudit.targets` without a second lookup.

Must not: probe VNC or open any connection but DNS (UDP/TCP to the chosen resolver; TCP to the
domain's own authoritative servers for AXFR); query the system resolver when a resolver was
given; import anything of the package but `exceptions`; print. Bad user input is a `UsageError`
with one line; a resolver that cannot answer for the domain at all is a `NetworkError`; every
other failure (a timeout on one name, a refused transfer) is recorded in the result, never
raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import string
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from vncaudit.exceptions import NetworkError, UsageError

log = logging.getLogger(__name__)

SOURCE_APEX: Final = "apex"  # the domain itself has addresses
SOURCE_NS: Final = "ns"  # an authoritative server's name, inside the domain
SOURCE_WORDLIST: Final = "wordlist"  # guessed from the built-in or the user's wordlist
SOURCE_AXFR_PREFIX: Final = "axfr:"  # + the NS name that gave the zone away

MAX_CNAME_CHAIN: Final = 8  # resolvers give up around here too (BIND: 16, Unbound: 11)
WILDCARD_PROBES: Final = 3
WILDCARD_LABEL_LENGTH: Final = 16
MAX_AXFR_TARGETS: Final = 16  # NS addresses tried; more is a misconfiguration, not a zone
MAX_AXFR_RECORDS: Final = 250_000  # memory bound against a server that never ends a transfer
AXFR_LIFETIME_FACTOR: Final = 10  # a whole transfer may take this many per-read timeouts
MAX_ERRORS: Final = 50  # the rest are counted: a dead resolver must not make 10 000 lines
EDNS_PAYLOAD: Final = 1232  # the DNS flag day 2020 size: no IP fragmentation

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_SOURCE_ORDER: Final = {SOURCE_APEX: 0, SOURCE_NS: 1, SOURCE_WORDLIST: 3}


class AxfrStatus(StrEnum):
    """Outcome of one zone-transfer attempt (a closed set, as stored)."""

    OK = "ok"  # the whole zone came: this server gives it to anyone
    REFUSED = "refused"  # rcode REFUSED: the expected, safe answer
    NOTAUTH = "notauth"  # rcode NOTAUTH: not authoritative, or wants TSIG
    CLOSED = "closed"  # the server closed the connection without answering
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # TCP connect failed
    ERROR = "error"  # another rcode, or a malformed or interrupted transfer
    TRUNCATED = "truncated"  # stopped at MAX_AXFR_RECORDS; what came is kept
    NO_ADDRESS = "no-address"  # the NS name has no A/AAAA record


@dataclass(frozen=True)
class FoundHost:
    """One discovered name: its addresses, the CNAME chain to them, and how it was found.

    `sources` holds "apex", "ns", "wordlist" and "axfr:<ns name>" entries. A name whose CNAME
    chain leads nowhere (dangling, looping) is kept with empty `addresses`: it is attack
    surface too (subdomain takeover), but nothing to scan.
    """

    name: str
    addresses: tuple[str, ...]
    cnames: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "addresses": list(self.addresses),
                "cnames": list(self.cnames), "sources": list(self.sources)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FoundHost:
        return cls(str(d["name"]), tuple(d.get("addresses", ())), tuple(d.get("cnames", ())),
                   tuple(d.get("sources", ())))


@dataclass(frozen=True)
class DiscoveryResult:
    """Everything one discovery learned. `axfr` maps "<ns name>@<address>" (or the NS name
    alone when it has no address) to an `AxfrStatus` value; `wildcard` is None when the domain
    has no wildcard, else the addresses random names resolved to (`wildcard_cnames`: the first
    CNAME target they got, if any); `queries` counts every DNS message sent, retries and zone
    transfers included; `errors` holds one line per problem (at most MAX_ERRORS, then a count).
    """

    domain: str
    hosts: tuple[FoundHost, ...]
    wildcard: tuple[str, ...] | None
    axfr: dict[str, str]
    queries: int
    errors: list[str]
    resolver: str = ""
    wildcard_cnames: tuple[str, ...] = ()
    wildcard_dropped: int = 0  # wordlist names dropped because they answered like the wildcard

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the store, the JSON report and the web API)."""
        return {
            "domain": self.domain,
            "resolver": self.resolver,
            "hosts": [h.to_dict() for h in self.hosts],
            "wildcard": None if self.wildcard is None else list(self.wildcard),
            "wildcard_cnames": list(self.wildcard_cnames),
            "axfr": {k: str(v) for k, v in self.axfr.items()},
            "queries": self.queries,
            "wildcard_dropped": self.wildcard_dropped,
            "errors": list(self.errors),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoveryResult:
        wildcard = d.get("wildcard")
        return cls(
            domain=str(d["domain"]),
            hosts=tuple(FoundHost.from_dict(h) for h in d.get("hosts", ())),
            wildcard=None if wildcard is None else tuple(wildcard),
            axfr={str(k): str(v) for k, v in d.get("axfr", {}).items()},
            queries=int(d.get("queries", 0)),
            errors=[str(e) for e in d.get("errors", ())],
            resolver=str(d.get("resolver", "")),
            wildcard_cnames=tuple(d.get("wildcard_cnames", ())),
            wildcard_dropped=int(d.get("wildcard_dropped", 0)),
        )


# --------------------------------------------------------------------------------------------
# Input validation


def _err(message: str) -> UsageError:
    return UsageError(message.replace("\r", " ").replace("\n", " "))


def _show(text: str, limit: int = 80) -> str:
    """repr() of user input, shortened: one line whatever the input held."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _ascii_labels(text: str, what: str) -> list[str]:
    """IDNA-encode *text* (lower case, no final dot) and check each label; UsageError if bad."""
    if not text:
        raise _err(f"empty {what}")
    labels = text.split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise _err(f"invalid {what} {_show(text)}: empty label")
        try:
            # Python's codec is IDNA 2003, the same as vncaudit.targets uses for host names.
            encoded = label.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _err(f"invalid {what} {_show(text)}: label {_show(label)}: {exc}") from None
        if len(encoded) > 63:
            raise _err(f"invalid {what} {_show(text)}: label {_show(label)} is longer "
                       "than 63 characters")
        if not _LABEL.fullmatch(encoded):
            raise _err(f"invalid {what} {_show(text)}: label {_show(label)} may hold only "
                       "letters, digits, '-' and '_', and may not start or end with '-'")
        out.append(encoded)
    return out


def normalize_domain(domain: str) -> str:
    """The domain as lower-case ASCII (IDNA) without a final dot; `UsageError` when it is not
    a plausible registered domain or subdomain (an IP address, a URL, a bare top-level
    domain, a bad label, over 253 characters)."""
    text = domain.strip().lower()
    if not text:
        raise _err("empty domain: give a domain name such as example.com")
    if "/" in text or "@" in text or " " in text:
        raise _err(f"invalid domain {_show(domain)}: give a bare domain name such as "
                   "example.com (no scheme, path, user or spaces)")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text.strip("[]"))
        raise _err(f"{_show(domain)} is an IP address, not a domain: scan it as a target")
    text = text.removesuffix(".")
    labels = _ascii_labels(text, "domain")
    name = ".".join(labels)
    if len(name) > 253:
        raise _err(f"invalid domain {_show(domain)}: longer than 253 characters")
    if not re.search("[a-z]", labels[-1]):
        raise _err(f"invalid domain {_show(domain)}: the last label must hold a letter")
    if len(labels) < 2:
        # Guessing names under a TLD ("vnc.com", "remote.com") would scan strangers' domains.
        raise _err(f"invalid domain {_show(domain)}: a top-level domain; give a domain "
                   "such as example.com")
    return name


def parse_resolver(text: str) -> tuple[str, int]:
    """Parse "IP", "IP:PORT", "IPv6" or "[IPv6]:PORT" into (ip, port); port defaults to 53.
    A host name is refused: resolving it would need another resolver."""
    raw = text.strip()
    host, port_text = raw, ""
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _err(f"invalid resolver {_show(text)}: use IP, IP:PORT or [IPv6]:PORT")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise _err(f"invalid resolver {_show(text)}: empty port")
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _err(f"invalid resolver {_show(text)}: give an IP address "
                   "(IP, IP:PORT or [IPv6]:PORT), not a host name") from None
    port = 53
    if port_text or raw.endswith(":"):
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _err(f"invalid resolver {_show(text)}: port must be 1-65535")
        port = int(port_text)
    return str(ip), port


def _format_server(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@cache
def builtin_wordlist() -> tuple[str, ...]:
    """The built-in host labels (vnc, remote, rdp, desktop, admin, dev, ...), in file order."""
    text = resources.files("vncaudit").joinpath("data/subdomain_labels.txt").read_text("utf-8")
    return tuple(_entries(text.splitlines()))


def _entries(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry


def read_wordlist(path: str | Path) -> list[str]:
    """The entries of a wordlist file (one label or relative name a line, '#' comments);
    `UsageError` when it cannot be read. Entries are checked by `discover`."""
    try:
        with open(path, encoding="utf-8") as fh:
            return list(_entries(fh))
    except (OSError, UnicodeError) as exc:
        raise _err(f"cannot read wordlist {path}: {exc}") from None


def _candidate(entry: str, domain: str) -> str | None:
    """The fully qualified name a wordlist entry names under *domain*, None for the apex."""
    text = entry.strip().lower().removesuffix(".")
    if text == domain:
        return None
    # A list made for this domain may hold full names; "vnc.example.com" means label "vnc".
    text = text.removesuffix("." + domain)
    labels = _ascii_labels(text, "wordlist entry")
    name = ".".join(labels) + "." + domain
    if len(name) > 253:
        raise _err(f"invalid wordlist entry {_show(entry)}: {name} is longer than 253 "
                   "characters")
    return name


# --------------------------------------------------------------------------------------------
# DNS traffic: one place that sends, limits and counts


class _QueryFailed(Exception):
    """No usable answer from the resolver (after retries); the text says why."""


class _Errors:
    """One line per problem, deduplicated, capped at MAX_ERRORS (the rest counted)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self.dropped = 0

    def add(self, line: str) -> None:
        if line in self._seen:
            return
        self._seen.add(line)
        log.debug("%s", line)
        if len(self.lines) < MAX_ERRORS:
            self.lines.append(line)
        else:
            self.dropped += 1

    def result(self) -> list[str]:
        more = [f"... and {self.dropped} more errors"] if self.dropped else []
        return self.lines + more


class _Dns:
    """Sends queries under one concurrency limit (in-flight messages) and one rate limit
    (messages per second, evenly spaced), and counts every message sent."""

    def __init__(self, servers: Sequence[tuple[str, int]], concurrency: int, rate: float | None,
                 timeout: float, retries: int) -> None:
        self.servers = list(servers)
        self._sem = asyncio.Semaphore(concurrency)
        self._interval = 1.0 / rate if rate else 0.0
        self._next_slot = 0.0
        self.timeout = timeout
        self._retries = retries
        self.queries = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the in-flight places, entered no earlier than the rate allows."""
        async with self._sem:
            # Reserve the send time synchronously (no await between read and write), so
            # concurrent callers get distinct, evenly spaced slots. Taking the semaphore first
            # means a freed place cannot release a burst of messages whose slots have passed.
            if self._interval:
                now = asyncio.get_running_loop().time()
                at = max(now, self._next_slot)
                self._next_slot = at + self._interval
                if at > now:
                    await asyncio.sleep(at - now)
            self.queries += 1
            yield

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
                    ) -> dns.message.Message:
        """The resolver's response (any rcode); `_QueryFailed` when none came after retries."""
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        why = "no answer"
        for attempt in range(self._retries + 1):
            # Rotate through the system's resolvers on failure; a given --resolver is alone.
            ip, port = self.servers[attempt % len(self.servers)]
            try:
                async with self.slot():
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        q, ip, timeout=self.timeout, port=port)
                return response
            except dns.exception.Timeout:
                why = f"timeout after {self.timeout:g} s"
            except (dns.exception.DNSException, OSError, EOFError) as exc:
                why = _describe(exc)
        raise _QueryFailed(why)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


_ADDRESS_TYPES: Final = (dns.rdatatype.A, dns.rdatatype.AAAA)


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


@dataclass
class _Zone:
    """Records of the domain's zone, merged from every transfer that gave some."""

    addresses: dict[dns.name.Name, list[str]] = field(default_factory=dict)
    cname: dict[dns.name.Name, dns.name.Name] = field(default_factory=dict)
    delegations: set[dns.name.Name] = field(default_factory=set)
    names: set[dns.name.Name] = field(default_factory=set)
    sources: dict[dns.name.Name, list[str]] = field(default_factory=dict)
    complete: bool = False  # at least one transfer ran to its closing SOA


class _Discovery:
    """One run of `discover`: the state its steps share."""

    def __init__(self, domain: str, dns_: _Dns, axfr_port: int, errors: _Errors) -> None:
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
            except _QueryFailed as exc:
                out.error = f"{_text(current)} {rdtype.name}: {exc}"
                break
            rcode = response.rcode()
            if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                out.error = f"{_text(current)} {rdtype.name}: {dns.rcode.to_text(rcode)}"
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
                    out.error = "CNAME loop: " + " -> ".join(map(_text, [name, *chain]))
                    break
                if len(chain) > MAX_CNAME_CHAIN:
                    out.error = (f"{_text(name)}: CNAME chain longer than {MAX_CNAME_CHAIN}, "
                                 "not followed further")
                    break
                seen.add(target)
                current = target
            if out.error or current in found:
                out.addresses = tuple(found.get(current, ()))
                break
            if current == queried or rcode == dns.rcode.NXDOMAIN:
                break  # no data here, or the chain's last target does not exist
        out.cnames = tuple(map(_text, chain))
        return out

    async def lookup(self, name: dns.name.Name) -> _Lookup:
        """A and AAAA of *name* (both asked at once), CNAMEs chased; errors recorded."""
        v4, v6 = await asyncio.gather(*(self.chase(name, t) for t in _ADDRESS_TYPES))
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
        server = ", ".join(_format_server(ip, port) for ip, port in self.dns.servers)
        try:
            response = await self.dns.query(self.origin, dns.rdatatype.NS)
        except _QueryFailed as exc:
            raise NetworkError(f"resolver {server} gave no answer for {self.domain}: {exc}"
                               ) from None
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            raise _err(f"domain {self.domain} does not exist (NXDOMAIN from {server})")
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
            out[_text(ns)] = found.addresses
            if found.addresses and ns.is_subdomain(self.origin):
                self.add(_text(ns), found.addresses, found.cnames, SOURCE_NS)
        return out

    # -- wildcard ---------------------------------------------------------------------------

    async def wildcard(self) -> tuple[set[str], set[str]]:
        """(addresses, first CNAME targets) random labels resolve to; both empty: none."""
        alphabet = string.ascii_lowercase + string.digits
        labels = ["".join(secrets.choice(alphabet) for _ in range(WILDCARD_LABEL_LENGTH))
                  for _ in range(WILDCARD_PROBES)]
        probes = await asyncio.gather(
            *(self.lookup(dns.name.from_text(label, self.origin)) for label in labels))
        addresses = {a for p in probes for a in p.addresses}
        targets = {p.cnames[0] for p in probes if p.cnames}
        if addresses or targets:
            log.info("%s has wildcard DNS: random names resolve to %s", self.domain,
                     ", ".join(sorted(addresses | targets)))
        return addresses, targets

    # -- zone transfer ----------------------------------------------------------------------

    async def transfer(self, ns: str, address: str, zone: _Zone) -> AxfrStatus:
        """Try AXFR from one server over TCP and merge what came into *zone*.

        Read by hand rather than with dns.asyncquery.inbound_xfr: this keeps partial data from
        an interrupted transfer, caps the record count, and tolerates zones that dnspython's
        Zone would reject (a scanner reads other people's mistakes)."""
        query = dns.message.make_query(self.origin, dns.rdatatype.AXFR)
        query.flags &= ~dns.flags.RD
        wire = query.to_wire()
        source = SOURCE_AXFR_PREFIX + ns
        where = f"AXFR {ns}@{address}"
        timeout = self.dns.timeout
        records = 0
        started = False
        async with self.dns.slot():
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(timeout * AXFR_LIFETIME_FACTOR):
                    try:
                        reader, stream = await asyncio.wait_for(
                            asyncio.open_connection(address, self.axfr_port), timeout)
                    except OSError as exc:
                        self.errors.add(f"{where}: unreachable ({_describe(exc)})")
                        return AxfrStatus.UNREACHABLE
                    writer = stream
                    stream.write(struct.pack("!H", len(wire)) + wire)
                    await stream.drain()
                    soa_seen = 0
                    while True:
                        try:
                            size = struct.unpack(
                                "!H", await asyncio.wait_for(reader.readexactly(2), timeout))[0]
                            data = await asyncio.wait_for(reader.readexactly(size), timeout)
                        except asyncio.IncompleteReadError:
                            if not started:
                                self.errors.add(f"{where}: connection closed without an answer")
                                return AxfrStatus.CLOSED
                            self.errors.add(f"{where}: connection closed mid-transfer after "
                                            f"{records} records")
                            return AxfrStatus.ERROR
                        message = dns.message.from_wire(data, xfr=True, one_rr_per_rrset=True)
                        if message.id != query.id:
                            raise ValueError("answer for another query id")
                        rcode = message.rcode()
                        if rcode != dns.rcode.NOERROR:
                            text = dns.rcode.to_text(rcode)
                            self.errors.add(f"{where}: {text}")
                            if started:
                                return AxfrStatus.ERROR
                            return {dns.rcode.REFUSED: AxfrStatus.REFUSED,
                                    dns.rcode.NOTAUTH: AxfrStatus.NOTAUTH}.get(
                                        rcode, AxfrStatus.ERROR)
                        for rrset in message.answer:
                            if not started and rrset.rdtype != dns.rdatatype.SOA:
                                self.errors.add(f"{where}: transfer does not start with SOA")
                                return AxfrStatus.ERROR
                            started = True
                            if rrset.rdtype == dns.rdatatype.SOA:
                                soa_seen += 1
                                if soa_seen >= 2:  # the closing SOA ends the transfer
                                    zone.complete = True
                                    log.info("%s: zone transfer allowed, %d records", where,
                                             records)
                                    return AxfrStatus.OK
                            records += len(rrset)
                            self._zone_rrset(zone, rrset, source)
                        if records > MAX_AXFR_RECORDS:
                            self.errors.add(f"{where}: stopped after {records} records")
                            return AxfrStatus.TRUNCATED
            except TimeoutError:
                self.errors.add(f"{where}: timeout" + (f" after {records} records"
                                                       if started else ""))
                return AxfrStatus.TIMEOUT
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                self.errors.add(f"{where}: {_describe(exc)}")
                return AxfrStatus.ERROR
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    def _zone_rrset(self, zone: _Zone, rrset: Any, source: str) -> None:
        name: dns.name.Name = rrset.name
        if not name.is_subdomain(self.origin):
            return  # a server may send anything; only the domain's own names count
        zone.names.add(name)
        zone.sources.setdefault(name, [])
        if source not in zone.sources[name]:
            zone.sources[name].append(source)
        if rrset.rdtype in _ADDRESS_TYPES:
            known = zone.addresses.setdefault(name, [])
            known += [rd.address for rd in rrset if rd.address not in known]
        elif rrset.rdtype == dns.rdatatype.CNAME:
            zone.cname[name] = rrset[0].target
        elif rrset.rdtype == dns.rdatatype.NS and name != self.origin:
            zone.delegations.add(name)

    async def zone_hosts(self, zone: _Zone) -> None:
        """Turn transferred records into hosts; CNAMEs leaving the zone are chased by query."""
        for name in sorted(zone.names):
            if "*" in _text(name).split("."):
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
                    self.errors.add("CNAME loop or overlong chain in zone: "
                                    + " -> ".join(map(_text, [name, *chain])))
                    break
                current = target
                addresses = list(zone.addresses.get(current, ()))
            else:
                if not addresses and chain and current not in zone.names:
                    found = await self.lookup(current)  # the chain leaves the zone
                    addresses = list(found.addresses)
                    chain += [dns.name.from_text(c) for c in found.cnames]
            for source in zone.sources[name]:
                self.add(_text(name), addresses, map(_text, chain), source)

    def skip_after_transfer(self, zone: _Zone, name: dns.name.Name) -> bool:
        """A complete transfer already answers for *name* unless it lies at or below a
        delegation (its records then live in the child zone, which was not transferred)."""
        if not zone.complete:
            return False
        return not any(name.is_subdomain(cut) for cut in zone.delegations)


# --------------------------------------------------------------------------------------------
# Public API


def _system_servers() -> list[tuple[str, int]]:
    """The system's resolvers (/etc/resolv.conf); used only when no resolver was given."""
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        raise NetworkError("no system DNS resolver configured; give --resolver IP[:PORT]"
                           ) from None
    servers: list[tuple[str, int]] = []
    for ns in resolver.nameservers:
        if isinstance(ns, str):
            servers.append((ns, resolver.nameserver_ports.get(ns, resolver.port)))
        elif isinstance(ns, dns.nameserver.Do53Nameserver):
            servers.append((ns.address, ns.port))
    if not servers:
        raise NetworkError("no usable system DNS resolver; give --resolver IP[:PORT]")
    return servers


def _check_limits(concurrency: int, rate: float | None, timeout: float, retries: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise _err(f"invalid DNS concurrency {concurrency!r}: must be a whole number >= 1")
    if rate is not None and not rate > 0:
        raise _err(f"invalid DNS rate {rate!r}: must be > 0 queries per second")
    if not timeout > 0:
        raise _err(f"invalid DNS timeout {timeout!r}: must be > 0 seconds")
    if retries < 0:
        raise _err(f"invalid DNS retries {retries!r}: must be >= 0")


async def discover(
    domain: str,
    *,
    resolver: str | None = None,
    wordlist: Iterable[str] | None = None,
    builtin: bool = True,
    concurrency: int = 50,
    rate: float | None = None,
    timeout: float = 3.0,
    retries: int = 1,
    axfr: bool = True,
    axfr_port: int = 53,
    progress: Callable[[int, int], None] | None = None,
) -> DiscoveryResult:
    """Find the hosts of *domain* through DNS and say how each was found.

    Steps: the domain's NS records (NXDOMAIN is a `UsageError`, no usable answer a
    `NetworkError`); the apex's own A/AAAA; wildcard detection (WILDCARD_PROBES random
    labels); a zone transfer (AXFR, TCP) from every address of every NS (when *axfr*); then
    A and AAAA of each wordlist name (the built-in labels unless *builtin* is False, plus
    *wordlist*: labels or names relative to the domain), CNAME chains followed. Wordlist
    names answering exactly like the wildcard are dropped; names a complete transfer already
    answered are not asked again.

    *resolver* is "IP[:PORT]" (default: the system's resolvers); all queries go there. Zone
    transfers go to the NS addresses on *axfr_port* (53; tests point it at their server).
    *concurrency* bounds the DNS messages in flight, *rate* their number per second (None:
    unlimited); *timeout* is per message (a transfer may take AXFR_LIFETIME_FACTOR of them);
    a query without answer is retried *retries* times. *progress(done, total)* is called
    after each wordlist name.
    """
    name = normalize_domain(domain)
    _check_limits(concurrency, rate, timeout, retries)
    if not 1 <= axfr_port <= 65535:
        raise _err(f"invalid AXFR port {axfr_port}: must be 1-65535")
    entries: list[str] = list(builtin_wordlist()) if builtin else []
    if wordlist is not None:
        if isinstance(wordlist, str):
            raise _err("wordlist must be a list of labels, not one string")
        entries += list(wordlist)
    candidates = list(dict.fromkeys(c for e in entries if (c := _candidate(e, name))))
    servers = [parse_resolver(resolver)] if resolver is not None else _system_servers()
    shown = ", ".join(_format_server(ip, port) for ip, port in servers)
    if resolver is None:
        shown = f"system ({shown})"

    errors = _Errors()
    run = _Discovery(name, _Dns(servers, concurrency, rate, timeout, retries), axfr_port, errors)
    log.info("discovering hosts of %s via %s: %d wordlist names, AXFR %s", name, shown,
             len(candidates), "on" if axfr else "off")
    ns_names = await run.apex_ns()
    if not ns_names:
        errors.add(f"{name} has no NS records (not a zone apex): no zone transfer tried")

    async def transfers() -> tuple[_Zone, dict[str, str]]:
        zone = _Zone()
        statuses: dict[str, str] = {}
        # NS names are resolved even without AXFR: in-domain ones are hosts (source "ns").
        ns_addresses = await run.ns_addresses(ns_names)
        if not axfr:
            return zone, statuses
        attempts: list[tuple[str, str]] = []
        for ns, addresses in ns_addresses.items():
            if not addresses:
                statuses[ns] = AxfrStatus.NO_ADDRESS
                errors.add(f"AXFR {ns}: the NS name has no address")
            attempts += [(ns, a) for a in addresses]
        if len(attempts) > MAX_AXFR_TARGETS:
            errors.add(f"{len(attempts)} NS addresses: zone transfer tried on the first "
                       f"{MAX_AXFR_TARGETS} only")
            attempts = attempts[:MAX_AXFR_TARGETS]
        results = await asyncio.gather(*(run.transfer(ns, a, zone) for ns, a in attempts))
        statuses.update({f"{ns}@{a}": s for (ns, a), s in zip(attempts, results, strict=True)})
        await run.zone_hosts(zone)
        return zone, statuses

    (zone, statuses), (wild_addresses, wild_targets), _ = await asyncio.gather(
        transfers(), run.wildcard(), run.apex())

    todo = [c for c in candidates if not run.skip_after_transfer(zone, dns.name.from_text(c))]
    if len(todo) < len(candidates):
        log.info("zone transfer answered %d wordlist names; not asked again",
                 len(candidates) - len(todo))
    dropped = 0
    done = 0
    names = iter(todo)

    async def worker() -> None:
        nonlocal dropped, done
        for fqdn in names:  # one shared iterator: next() cannot interleave between awaits
            found = await run.lookup(dns.name.from_text(fqdn))
            done += 1
            if progress is not None:
                progress(done, len(todo))
            if not (found.addresses or found.cnames):
                continue
            like_wildcard = (
                (bool(found.addresses) and set(found.addresses) <= wild_addresses)
                or (bool(found.cnames) and found.cnames[0] in wild_targets))
            if like_wildcard and fqdn not in run.hosts:
                dropped += 1  # indistinguishable from a random name: not evidence of a host
                continue
            run.add(fqdn, found.addresses, found.cnames, SOURCE_WORDLIST)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(todo))):
            group.create_task(worker())

    hosts = tuple(
        FoundHost(h.name, h.addresses, h.cnames, tuple(sorted(h.sources, key=_source_key)))
        for h in sorted(run.hosts.values(), key=lambda h: _name_key(h.name)))
    has_wildcard = bool(wild_addresses or wild_targets)
    log.info("%s: %d hosts, %d queries, %d wildcard-like names dropped", name, len(hosts),
             run.dns.queries, dropped)
    return DiscoveryResult(
        domain=name,
        hosts=hosts,
        wildcard=tuple(sorted(wild_addresses, key=_address_key)) if has_wildcard else None,
        axfr=statuses,
        queries=run.dns.queries,
        errors=errors.result(),
        resolver=shown,
        wildcard_cnames=tuple(sorted(wild_targets)),
        wildcard_dropped=dropped,
    )


def discover_sync(
    domain: str,
    *,
    resolver: str | None = None,
    wordlist: Iterable[str] | None = None,
    builtin: bool = True,
    concurrency: int = 50,
    rate: float | None = None,
    timeout: float = 3.0,
    retries: int = 1,
    axfr: bool = True,
    axfr_port: int = 53,
    progress: Callable[[int, int], None] | None = None,
) -> DiscoveryResult:
    """`discover` for callers without a running event loop (same options)."""
    return asyncio.run(discover(
        domain, resolver=resolver, wordlist=wordlist, builtin=builtin, concurrency=concurrency,
        rate=rate, timeout=timeout, retries=retries, axfr=axfr, axfr_port=axfr_port,
        progress=progress))


def _source_key(source: str) -> tuple[int, str]:
    return (_SOURCE_ORDER.get(source, 2), source)  # apex, ns, axfr:*, wordlist


def _name_key(name: str) -> tuple[str, ...]:
    return tuple(reversed(name.split(".")))  # the apex first, then each branch together


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


def is_external(host: FoundHost, domain: str) -> bool:
    """True when *host*'s CNAME chain ends outside *domain* (a CDN, a SaaS provider): its
    addresses belong to someone else, though the name is the domain's."""
    if not host.cnames:
        return False
    last = host.cnames[-1]
    return last != domain and not last.endswith("." + domain)


def to_target_expressions(result: DiscoveryResult, *, include_external: bool = False
                          ) -> list[str]:
    """The discovered names that have addresses, as target expressions for
    `vncaudit.targets.build_target_space`. Pass `to_resolver(result)` as its `resolve` so the
    names map to exactly the addresses discovery found (no second lookup through the system
    resolver), and each `Target` keeps its hostname. Names whose CNAME chain leaves the
    domain are left out unless *include_external*: scanning a CDN's or SaaS provider's
    addresses is scanning a third party."""
    return [h.name for h in result.hosts
            if h.addresses and (include_external or not is_external(h, result.domain))]


def to_resolver(result: DiscoveryResult,
                fallback: Callable[[str], list[str]] | None = None) -> Callable[[str], list[str]]:
    """A `vncaudit.targets.Resolver` answering the discovered names with their addresses;
    other names go to *fallback* (e.g. `targets.default_resolver`) or fail as unknown."""
    known = {h.name: list(h.addresses) for h in result.hosts if h.addresses}

    def resolve(name: str) -> list[str]:
        key = name.lower().removesuffix(".")
        if key in known:
            return list(known[key])
        if fallback is not None:
            return fallback(name)
        raise OSError(f"{name} was not found by the discovery of {result.domain}")

    return resolve


__all__ = [
    "MAX_CNAME_CHAIN",
    "SOURCE_APEX",
    "SOURCE_AXFR_PREFIX",
    "SOURCE_NS",
    "SOURCE_WORDLIST",
    "AxfrStatus",
    "DiscoveryResult",
    "FoundHost",
    "builtin_wordlist",
    "discover",
    "discover_sync",
    "is_external",
    "normalize_domain",
    "parse_resolver",
    "read_wordlist",
    "to_resolver",
    "to_target_expressions",
]
