"""DNS traffic: the one place that sends queries, limits them and counts them.

Owns: `DnsSender` (one concurrency limit on messages in flight, one evenly spaced rate limit,
retries rotating through the resolvers, the count of every message sent, AXFR included through
`slot`), `ErrorLines` (one line per problem, capped at MAX_ERRORS), the system resolver list
used when none was given (`system_servers`), and the check of the limits the user gave
(`check_limits`).

Must not: send to any server but the chosen resolvers (zone transfers take a `slot` here but
connect in `axfr`), interpret answers (that is `lookup` and `axfr`), or import anything of the
package but `exceptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Final

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from vncaudit.exceptions import NetworkError
from vncaudit.subdomains.names import fail

log = logging.getLogger(__name__)

MAX_ERRORS: Final = 50  # the rest are counted: a dead resolver must not make 10 000 lines
EDNS_PAYLOAD: Final = 1232  # the DNS flag day 2020 size: no IP fragmentation


class QueryFailed(Exception):
    """No usable answer from the resolver (after retries); the text says why."""


class ErrorLines:
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


class DnsSender:
    """Sends queries under one concurrency limit (in-flight messages) and one rate limit
    (messages per second, evenly spaced), and counts every message sent."""

    def __init__(self, servers: Sequence[tuple[str, int]], concurrency: int, rate: float | None,
                 timeout: float, retries: int) -> None:
        self.servers = list(servers)
        self._sem = asyncio.Semaphore(concurrency)
        self._interval = 1.0 / rate if rate else 0.0
        self._next_slot = 0.0
        self._last_out = float("-inf")  # when the last message left its slot
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
                loop = asyncio.get_running_loop()
                now = loop.time()
                at = max(now, self._next_slot)
                self._next_slot = at + self._interval
                # Then one interval after the last message that actually left: a loop woken
                # late (a loaded machine) wakes every caller whose slot has passed at once,
                # and a rate limit must not turn that into a burst.
                while (now := loop.time()) < max(at, self._last_out + self._interval):
                    await asyncio.sleep(max(at, self._last_out + self._interval) - now)
                self._last_out = now
                self._next_slot = max(self._next_slot, now + self._interval)
            self.queries += 1
            yield

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
                    ) -> dns.message.Message:
        """The resolver's response (any rcode); `QueryFailed` when none came after retries."""
        q = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        why = "no answer"
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeouts = 0
        for attempt in range(self._retries + 1):
            # Rotate through the system's resolvers on failure; a given --resolver is alone.
            ip, port = self.servers[attempt % len(self.servers)]
            try:
                async with self.slot():
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        q, ip, timeout=self.timeout, port=port)
                return response
            except dns.exception.Timeout:
                timeouts += 1
                # The real rule and the real time: each try waits `timeout`, retries add up,
                # and so does waiting for a slot under --dns-rate.
                tries = f"{timeouts} tr{'y' if timeouts == 1 else 'ies'}"
                why = (f"timeout: no answer to {tries} of {self.timeout:g} s each "
                       f"({loop.time() - started:.1f} s in all)")
            except (dns.exception.DNSException, OSError, EOFError) as exc:
                why = describe_error(exc)
        raise QueryFailed(why)


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


ADDRESS_TYPES: Final = (dns.rdatatype.A, dns.rdatatype.AAAA)


def system_servers() -> list[tuple[str, int]]:
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


def check_limits(concurrency: int, rate: float | None, timeout: float, retries: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise fail(f"invalid DNS concurrency {concurrency!r}: must be a whole number >= 1")
    if rate is not None and not rate > 0:
        raise fail(f"invalid DNS rate {rate!r}: must be > 0 queries per second")
    if not timeout > 0:
        raise fail(f"invalid DNS timeout {timeout!r}: must be > 0 seconds")
    if retries < 0:
        raise fail(f"invalid DNS retries {retries!r}: must be >= 0")
