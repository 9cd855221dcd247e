"""One subdomain discovery from start to end: `discover` and `discover_sync`.

Owns: the order of the steps (NS; apex, wildcard and zone transfers at once; then the wordlist
names through a pool of `concurrency` workers), dropping wordlist names that answer like the
wildcard, skipping names a complete transfer answered, progress callbacks, and the sorted
`DiscoveryResult`.

Must not: send DNS messages itself (every message goes through `query.DnsSender`), probe VNC, print,
or import anything of the package but `exceptions`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import dns.name

from vncaudit.subdomains.axfr import (
    MAX_AXFR_TARGETS,
    Zone,
    skip_after_transfer,
    transfer,
    zone_hosts,
)
from vncaudit.subdomains.lookup import Discovery
from vncaudit.subdomains.names import fail, format_server, normalize_domain, parse_resolver
from vncaudit.subdomains.query import DnsSender, ErrorLines, check_limits, system_servers
from vncaudit.subdomains.results import (
    SOURCE_APEX,
    SOURCE_NS,
    SOURCE_WORDLIST,
    AxfrStatus,
    DiscoveryResult,
    FoundHost,
)
from vncaudit.subdomains.wordlist import builtin_wordlist, candidate_name, wildcard

log = logging.getLogger(__name__)

_SOURCE_ORDER: Final = {SOURCE_APEX: 0, SOURCE_NS: 1, SOURCE_WORDLIST: 3}


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
    check_limits(concurrency, rate, timeout, retries)
    if not 1 <= axfr_port <= 65535:
        raise fail(f"invalid AXFR port {axfr_port}: must be 1-65535")
    candidates = _candidates(name, wordlist, builtin)
    servers = [parse_resolver(resolver)] if resolver is not None else system_servers()
    shown = ", ".join(format_server(ip, port) for ip, port in servers)
    if resolver is None:
        shown = f"system ({shown})"

    errors = ErrorLines()
    sender = DnsSender(servers, concurrency, rate, timeout, retries)
    run = Discovery(name, sender, axfr_port, errors)
    log.info("discovering hosts of %s via %s: %d wordlist names, AXFR %s", name, shown,
             len(candidates), "on" if axfr else "off")
    ns_names = await run.apex_ns()
    if not ns_names:
        errors.add(f"{name} has no NS records (not a zone apex): no zone transfer tried")
    transfers, (wild_addresses, wild_targets), _ = await asyncio.gather(
        _transfers(run, ns_names, axfr), wildcard(run), run.apex())
    wild = _Wildcard(frozenset(wild_addresses), frozenset(wild_targets))

    todo = [c for c in candidates
            if not skip_after_transfer(transfers.zone, dns.name.from_text(c))]
    if len(todo) < len(candidates):
        log.info("zone transfer answered %d wordlist names; not asked again",
                 len(candidates) - len(todo))
    dropped = await _ask_wordlist(run, todo, concurrency, wild, progress)

    hosts = tuple(
        FoundHost(h.name, h.addresses, h.cnames, tuple(sorted(h.sources, key=_source_key)))
        for h in sorted(run.hosts.values(), key=lambda h: _name_key(h.name)))
    log.info("%s: %d hosts, %d queries, %d wildcard-like names dropped", name, len(hosts),
             run.dns.queries, dropped)
    return DiscoveryResult(
        domain=name,
        hosts=hosts,
        wildcard=(tuple(sorted(wild.addresses, key=_address_key))
                  if wild.addresses or wild.targets else None),
        axfr=transfers.statuses,
        queries=run.dns.queries,
        errors=errors.result(),
        resolver=shown,
        wildcard_cnames=tuple(sorted(wild.targets)),
        wildcard_dropped=dropped,
    )


def _candidates(domain: str, wordlist: Iterable[str] | None, builtin: bool) -> list[str]:
    """The wordlist's names in the domain, once each, in order: the built-in labels (unless
    *builtin* is False), then *wordlist*."""
    entries: list[str] = list(builtin_wordlist()) if builtin else []
    if wordlist is not None:
        if isinstance(wordlist, str):
            raise fail("wordlist must be a list of labels, not one string")
        entries += list(wordlist)
    return list(dict.fromkeys(c for e in entries if (c := candidate_name(e, domain))))


@dataclass(frozen=True)
class _Transfers:
    """The zone merged from every transfer, and each attempt's status by "ns@address" (or by
    NS name when it has no address)."""

    zone: Zone
    statuses: dict[str, str]


async def _transfers(run: Discovery, ns_names: list[dns.name.Name], axfr: bool) -> _Transfers:
    """Resolve the NS names, then (when *axfr*) try a zone transfer from each address, at
    most MAX_AXFR_TARGETS of them, all at once."""
    zone = Zone()
    statuses: dict[str, str] = {}
    # NS names are resolved even without AXFR: in-domain ones are hosts (source "ns").
    ns_addresses = await run.ns_addresses(ns_names)
    if not axfr:
        return _Transfers(zone, statuses)
    attempts: list[tuple[str, str]] = []
    for ns, addresses in ns_addresses.items():
        if not addresses:
            statuses[ns] = AxfrStatus.NO_ADDRESS
            run.errors.add(f"AXFR {ns}: the NS name has no address")
        attempts += [(ns, a) for a in addresses]
    if len(attempts) > MAX_AXFR_TARGETS:
        run.errors.add(f"{len(attempts)} NS addresses: zone transfer tried on the first "
                       f"{MAX_AXFR_TARGETS} only")
        attempts = attempts[:MAX_AXFR_TARGETS]
    results = await asyncio.gather(*(transfer(run, ns, a, zone) for ns, a in attempts))
    statuses.update({f"{ns}@{a}": s for (ns, a), s in zip(attempts, results, strict=True)})
    await zone_hosts(run, zone)
    return _Transfers(zone, statuses)


@dataclass(frozen=True)
class _Wildcard:
    """What random labels resolve to: addresses and first CNAME targets (both empty: no
    wildcard)."""

    addresses: frozenset[str]
    targets: frozenset[str]

    def answers_like(self, addresses: Iterable[str], cnames: Sequence[str]) -> bool:
        """Whether an answer is indistinguishable from the wildcard's."""
        found = set(addresses)
        return ((bool(found) and found <= self.addresses)
                or (bool(cnames) and cnames[0] in self.targets))


async def _ask_wordlist(run: Discovery, todo: list[str], concurrency: int, wild: _Wildcard,
                        progress: Callable[[int, int], None] | None) -> int:
    """Look up each name through `concurrency` workers and add those that answer unlike the
    wildcard; return how many were dropped for answering like it."""
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
            if wild.answers_like(found.addresses, found.cnames) and fqdn not in run.hosts:
                dropped += 1  # indistinguishable from a random name: not evidence of a host
                continue
            run.add(fqdn, found.addresses, found.cnames, SOURCE_WORDLIST)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(todo))):
            group.create_task(worker())
    return dropped


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
