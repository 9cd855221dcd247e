"""A real authoritative DNS server for tests, on loopback only (dnspython + asyncio).

Owns: serving `dns.zone.Zone` objects over UDP and TCP on one port of one or more loopback
addresses (127.0.0.x), so the zones' NS records can point at distinct servers that all live in
this process; AXFR over TCP per (zone, local address) policy; wildcard synthesis (RFC 4592);
CNAME chasing inside the zone (like BIND; switchable off to force the client to chase);
counting queries and the largest number in flight, so tests can check a client's limits.

Must not: bind or send to anything but loopback; recurse (names outside its zones get
REFUSED, as from a real authoritative-only server).

    zone = make_zone("example.test", '''
        @ NS ns1
        ns1 A 127.0.0.1
        vnc A 10.0.0.5
    ''')
    with DnsServer([zone], hosts=("127.0.0.1", "127.0.0.2"),
                   axfr={"example.test": {"127.0.0.1": "allow"}}) as server:
        discover("example.test", resolver=server.resolver, axfr_port=server.port)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

SOA_LINE = "@ 300 SOA ns1 hostmaster 1 3600 600 86400 300"
MAX_CHASE = 8
AXFR_CHUNK = 20  # rrsets per message: every transfer of a test zone spans several messages
SIOCGSTAMP = 0x8906  # linux/sockios.h: the kernel's receive time of a socket's last datagram


def make_zone(origin: str, records: str, *, soa: str = SOA_LINE) -> dns.zone.Zone:
    """A zone from master-file text (relative names, default TTL 300); a SOA is added."""
    text = f"$TTL 300\n{soa}\n{records}"
    return dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)


@dataclass
class Query:
    """One query the server received."""

    at: float  # time.monotonic() when the server read it
    name: str  # without the final dot
    rdtype: str
    transport: str  # "udp" | "tcp"
    local: str  # the server address it came in on
    # UDP: when the kernel received the datagram (time.time()'s clock), so a rate is measured
    # from the wire, not from this thread's turns (a loaded machine reads a backlog at once).
    arrived: float | None = None


@dataclass
class Stats:
    queries: list[Query] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def names(self, rdtype: str | None = None) -> list[str]:
        return [q.name for q in self.queries if rdtype is None or q.rdtype == rdtype]


class DnsServer:
    """Authoritative server for *zones* on `hosts` (loopback only), one port for UDP and TCP.

    *axfr* maps a zone origin to {local address: "allow" | "refuse" | "hang" | "close"}; the
    default is "refuse". *delay* holds every answer back (seconds), so a client's concurrency
    shows in `stats.max_in_flight`. *chase_cnames* False answers a CNAME alone (minimal
    responses). *silent* names (without final dot) get no answer at all (client timeouts).
    """

    def __init__(
        self,
        zones: Iterable[dns.zone.Zone],
        *,
        hosts: Iterable[str] = ("127.0.0.1",),
        axfr: Mapping[str, Mapping[str, str]] | None = None,
        delay: float = 0.0,
        chase_cnames: bool = True,
        silent: Iterable[str] = (),
    ) -> None:
        self.zones = list(zones)
        self.hosts = tuple(hosts)
        for host in self.hosts:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"test DNS server binds loopback only, not {host}")
        self.axfr = {dns.name.from_text(k): dict(v) for k, v in (axfr or {}).items()}
        self.delay = delay
        self.chase_cnames = chase_cnames
        self.silent = {s.lower().rstrip(".") for s in silent}
        self.port = 0
        self.stats = Stats()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closers: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Every owner name and its ancestors inside the zone: empty non-terminals exist
        # (NODATA), they are not NXDOMAIN and they block wildcard synthesis (RFC 4592 §2.2.2).
        self._existing: dict[dns.name.Name, set[dns.name.Name]] = {}
        for zone in self.zones:
            origin = _origin(zone)
            names: set[dns.name.Name] = set()
            for name in zone.nodes:
                while name.is_subdomain(origin):
                    names.add(name)
                    if name == origin:
                        break
                    name = name.parent()
            self._existing[origin] = names

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def resolver(self) -> str:
        """The "IP:PORT" to give vncaudit's --resolver."""
        return f"{self.hosts[0]}:{self.port}"

    def start(self) -> DnsServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            for task in list(self._tasks):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            for closer in self._closers:
                closer.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="test-dns-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(50):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind((self.hosts[0], 0))
            port = probe.getsockname()[1]
            probe.close()
            opened: list[Any] = []
            try:
                for host in self.hosts:
                    transport, _ = await loop.create_datagram_endpoint(
                        functools.partial(_Udp, self, host), local_addr=(host, port))
                    opened.append(transport)
                    server = await asyncio.start_server(
                        functools.partial(self._tcp, local=host), host, port)
                    opened.append(server)
            except OSError as exc:
                for item in opened:
                    item.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self.port = port
            self._closers = opened
            return
        raise OSError("no free port for the test DNS server")

    # -- transports -----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _enter(self, query: dns.message.Message, transport: str, local: str,
               arrived: float | None = None) -> None:
        question = query.question[0] if query.question else None
        with self._lock:
            self.stats.queries.append(Query(
                time.monotonic(),
                question.name.to_text(omit_final_dot=True).lower() if question is not None else "",
                dns.rdatatype.to_text(question.rdtype) if question is not None else "",
                transport, local, arrived))
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.stats.in_flight -= 1

    async def _udp_answer(self, transport: asyncio.DatagramTransport, data: bytes,
                          addr: Any, local: str, arrived: float | None) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - garbage is dropped, as a server would
            return
        self._enter(query, "udp", local, arrived)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self._is_silent(query):
                return
            if query.question and query.question[0].rdtype in (dns.rdatatype.AXFR,
                                                                dns.rdatatype.IXFR):
                response = self._error(query, dns.rcode.REFUSED)  # transfers need TCP
            else:
                response = self.answer(query)
            payload = query.payload if query.edns >= 0 else 512
            wire = response.to_wire(max_size=max(payload, 512))
            transport.sendto(wire, addr)
        except dns.exception.TooBig:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            transport.sendto(response.to_wire(), addr)
        finally:
            self._leave()

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   local: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # cancelled at stop(), like the UDP answers
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                query = dns.message.from_wire(await reader.readexactly(size))
                self._enter(query, "tcp", local)
                try:
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    if self._is_silent(query):
                        continue
                    for message in self._tcp_messages(query, local):
                        if message is None:  # "close" policy
                            return
                        if message == "hang":
                            await asyncio.sleep(3600)
                            return
                        wire = message.to_wire()
                        writer.write(struct.pack("!H", len(wire)) + wire)
                    await writer.drain()
                finally:
                    self._leave()
        except (asyncio.IncompleteReadError, ConnectionError, dns.exception.DNSException):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _tcp_messages(self, query: dns.message.Message, local: str) -> list[Any]:
        question = query.question[0] if query.question else None
        if question is None or question.rdtype not in (dns.rdatatype.AXFR,
                                                         dns.rdatatype.IXFR):
            return [self.answer(query)]
        zone = self.zones_by_origin().get(question.name)
        if zone is None:
            return [self._error(query, dns.rcode.NOTAUTH)]
        policy = self.axfr.get(_origin(zone), {}).get(local, "refuse")
        if question.rdtype == dns.rdatatype.IXFR:
            return [self._error(query, dns.rcode.NOTIMP)]
        if policy == "allow":
            return self._transfer(query, zone)
        if policy == "hang":
            return ["hang"]
        if policy == "close":
            return [None]
        return [self._error(query, dns.rcode.REFUSED)]

    def _is_silent(self, query: dns.message.Message) -> bool:
        return bool(query.question) and (
            query.question[0].name.to_text(omit_final_dot=True).lower() in self.silent)

    # -- answers ------------------------------------------------------------------------------

    def zones_by_origin(self) -> dict[dns.name.Name, dns.zone.Zone]:
        return {_origin(z): z for z in self.zones}

    def _zone_for(self, name: dns.name.Name) -> dns.zone.Zone | None:
        best: dns.zone.Zone | None = None
        for zone in self.zones:
            if name.is_subdomain(_origin(zone)) and (
                    best is None or len(_origin(zone)) > len(_origin(best))):
                best = zone
        return best

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode
               ) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response

    def _node(self, zone: dns.zone.Zone, name: dns.name.Name) -> tuple[Any, bool]:
        """(node or None, exists): wildcard synthesis for names that do not exist."""
        node = zone.get_node(name)
        if node is not None:
            return node, True
        existing = self._existing[_origin(zone)]
        if name in existing:
            return None, True  # empty non-terminal: NODATA
        encloser = name.parent()
        while encloser not in existing:
            encloser = encloser.parent()
        wild = zone.get_node(dns.name.Name((b"*",)).concatenate(encloser))
        return wild, wild is not None

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The authoritative answer to a normal query (RFC 1034 §4.3.2, minus delegations)."""
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA
        question = query.question[0]
        zone = self._zone_for(question.name)
        if zone is None or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        owner, rdtype = question.name, question.rdtype
        seen = {owner}
        for _ in range(MAX_CHASE + 1):
            node, exists = self._node(zone, owner)
            if not exists:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            if node is None:
                break
            rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
            if rdataset is not None:
                response.answer.append(_rrset(owner, rdataset))
                return response
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or rdtype == dns.rdatatype.CNAME:
                break
            response.answer.append(_rrset(owner, cname))
            target = cname[0].target
            if (not self.chase_cnames or target in seen
                    or not target.is_subdomain(_origin(zone))):
                return response
            seen.add(target)
            owner = target
        soa = zone.get_rdataset(_origin(zone), dns.rdatatype.SOA)
        response.authority.append(_rrset(_origin(zone), soa))
        return response

    def _transfer(self, query: dns.message.Message, zone: dns.zone.Zone
                  ) -> list[dns.message.Message]:
        soa = _rrset(_origin(zone), zone.get_rdataset(_origin(zone), dns.rdatatype.SOA))
        rrsets = [soa]
        for name, node in sorted(zone.nodes.items()):
            for rdataset in node:
                if rdataset.rdtype != dns.rdatatype.SOA:
                    rrsets.append(_rrset(name, rdataset))
        rrsets.append(soa)
        messages = []
        for i in range(0, len(rrsets), AXFR_CHUNK):
            message = dns.message.make_response(query)
            message.flags |= dns.flags.AA
            if i:
                message.question = []  # continuation messages carry no question
            message.answer = rrsets[i:i + AXFR_CHUNK]
            messages.append(message)
        return messages


def _origin(zone: dns.zone.Zone) -> dns.name.Name:
    assert zone.origin is not None  # make_zone always sets it
    return zone.origin


def _rrset(name: dns.name.Name, rdataset: Any) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, local: str) -> None:
        self.server = server
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint
        # The kernel stamps a socket's datagrams on arrival from its first SIOCGSTAMP on (that
        # call has no datagram to stamp yet and fails); before it, only when they are read.
        with contextlib.suppress(OSError):
            fcntl.ioctl(transport.get_extra_info("socket").fileno(), SIOCGSTAMP, bytes(16))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        arrived = _kernel_stamp(self.transport)
        with contextlib.suppress(RuntimeError):
            self.server._spawn(self.server._udp_answer(self.transport, data, addr, self.local,
                                                       arrived))


def _kernel_stamp(transport: asyncio.DatagramTransport) -> float | None:
    """When the kernel received the datagram just read from `transport`'s socket (the event
    loop reads one datagram per call before `datagram_received`), or None if it can't say."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        seconds, micros = struct.unpack("@ll", fcntl.ioctl(sock.fileno(), SIOCGSTAMP, bytes(16)))
    except OSError:
        return None
    return seconds + micros / 1e6
