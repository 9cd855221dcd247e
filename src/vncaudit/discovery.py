"""Discovery: which (host, port) pairs answer at all, found cheaply, before any RFB is spoken.

Owns the two sweeps behind `--discovery`, one interface (`Sweep.run()`, feeding a `Sink`):

* `connect` (default, no root): non-blocking `connect()` on plain sockets watched by the event
  loop's writer callbacks, many in flight, no task or stream per attempt, so thousands of silent
  addresses cost a file descriptor and a deque entry each. A connection that succeeds is handed,
  still open, to the sink: the probe then runs on *that* connection (one connection per port,
  DESIGN.md "Probing etiquette"), with a deadline that starts when the connection exists.
* `syn` (root, IPv4): a stateless SYN sender and SYN-ACK/RST receiver on one raw socket
  (AF_INET, SOCK_RAW, IPPROTO_TCP; the kernel builds the IP header), as zmap and masscan do.
  One random source port per sweep; the SYN's sequence number is a keyed hash of the
  destination (address, port), so a reply is validated by recomputing it, with no table
  lookup for forged or stale packets. A BPF filter on the socket drops, in the kernel, every
  packet that is not a SYN-ACK or RST to our source port. The kernel answers each SYN-ACK
  with a RST (it has no socket for that port): harmless, the probe opens a real connection
  afterwards. IPv6 and unresolved names are handed to the probe as they are (it connects
  itself).

Both sweeps keep a window of attempts in flight (bounded by `--concurrency` for connect, by
rate × timeout for syn) so that every target ends with a verdict: live (handed on), `closed`
(RST / refused) or `filtered` (nothing after `retries` extra attempts), as a `ServiceResult`
the store records once per pair.

Must not: speak RFB, grade, store, render, or import rich/typer. It sends only to the targets
it is given; validating those is `targets`' job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import random
import resource
import socket
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from vncaudit.exceptions import UsageError
from vncaudit.models import ServiceResult, State, Target

log = logging.getLogger(__name__)

DEFAULT_SYN_RATE = 50_000.0  # packets/s when --rate is not given (zmap's default is ~15,000)
SYN_BATCH = 256  # packets sent between two turns of the event loop
TURN_BATCH = 256  # connects started (or given up) between two turns of the event loop
SYN_ERROR = "--discovery syn needs root (CAP_NET_RAW); use --discovery connect"
NO_ANSWER = "no answer to the connection attempt"


class Mode(StrEnum):
    CONNECT = "connect"
    SYN = "syn"


DEFAULT_RETRIES = {Mode.CONNECT: 0, Mode.SYN: 1}
# connect: the kernel already retransmits the SYN inside one --timeout (at 1 s, 3 s, ...);
# syn: nothing retransmits for us, so one more SYN to every silent pair by default.


@dataclass(frozen=True)
class DiscoveryOptions:
    mode: Mode = Mode.CONNECT
    timeout: float = 5.0  # seconds to wait for an answer to one attempt
    retries: int | None = None  # extra attempts for silent pairs; None: DEFAULT_RETRIES[mode]
    rate: float | None = None  # attempts (connect) or packets (syn) per second

    @property
    def attempts(self) -> int:
        retries = DEFAULT_RETRIES[self.mode] if self.retries is None else self.retries
        return 1 + max(0, retries)


class Sink(Protocol):
    """Where a sweep delivers its verdicts (the engine's pipeline)."""

    def found(self, target: Target, sock: socket.socket | None) -> None:
        """A live pair; `sock` is the connected socket (ownership passes) or None."""

    def finished(self, result: ServiceResult) -> None:
        """A final closed / filtered verdict."""

    def room(self) -> int:
        """How many more sockets the sweep may hold open now (connect) / pairs it may add."""


@dataclass(frozen=True)
class SweepStats:
    sent: int = 0  # attempts started, retries included
    live: int = 0
    closed: int = 0
    filtered: int = 0
    retried: int = 0


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def check_syn_allowed() -> None:
    """Raise UsageError (one line, SYN_ERROR) unless this process may open raw sockets."""
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except PermissionError:
        raise UsageError(SYN_ERROR) from None
    except OSError as exc:
        raise UsageError(f"{SYN_ERROR} ({exc.strerror or exc})") from None
    probe.close()


class _Pacer:
    """Token bucket without burst: the n-th start happens no earlier than n / rate."""

    def __init__(self, rate: float | None, now: float) -> None:
        self.rate = rate
        self.start = now
        self.used = 0

    def allowed(self, now: float) -> int:
        if not self.rate:
            return 1 << 30
        return max(0, int((now - self.start) * self.rate) + 1 - self.used)

    def next_at(self) -> float:
        assert self.rate
        return self.start + self.used / self.rate


class _Sweep:
    """What both sweeps share: the target source, retries queue, expiry window and pacing."""

    def __init__(self, targets: Iterable[Target], sink: Sink, options: DiscoveryOptions) -> None:
        self.source: Iterator[Target] = iter(targets)
        self.exhausted = False
        self.sink = sink
        self.options = options
        self.retry: deque[tuple[Target, int]] = deque()  # (target, attempts made so far)
        self.wakeup = asyncio.Event()
        self.sent = self.live = self.closed = self.filtered = self.retried = 0

    @property
    def stats(self) -> SweepStats:
        return SweepStats(self.sent, self.live, self.closed, self.filtered, self.retried)

    def wake(self) -> None:
        """Called by the sink when room frees up, and by our own callbacks."""
        self.wakeup.set()

    def next_target(self) -> tuple[Target, int] | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted:
            return None
        try:
            return next(self.source), 0
        except StopIteration:
            self.exhausted = True
            return None

    def silent(self, target: Target, made: int, error: str = NO_ANSWER) -> None:
        """No answer to attempt number `made`: try again or give the filtered verdict."""
        if made < self.options.attempts:
            self.retried += 1
            self.retry.append((target, made))
        else:
            self.verdict(target, State.FILTERED, error)

    def verdict(self, target: Target, state: State, error: str | None = None,
                elapsed: float = 0.0) -> None:
        if state is State.CLOSED:
            self.closed += 1
        else:
            self.filtered += 1
        self.sink.finished(ServiceResult(target.host, target.port, state, error=error,
                                         hostname=target.hostname, elapsed=elapsed))

    async def pause(self, until: float | None) -> None:
        """Sleep until `until` (loop time) or until woken."""
        loop = asyncio.get_running_loop()
        self.wakeup.clear()
        delay = None if until is None else max(0.0, until - loop.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.wakeup.wait()


# ---------------------------------------------------------------------------------------------
# connect


@dataclass
class _Attempt:
    target: Target
    sock: socket.socket
    made: int  # attempts made, this one included
    started: float
    done: bool = False


def _literal_family(host: str) -> socket.AddressFamily | None:
    """AF_INET / AF_INET6 for an address literal, None for a name (inet_pton: C speed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        return None
    return family


class ConnectSweep(_Sweep):
    """Non-blocking connects, watched by writer callbacks; at most `sink.room()` in flight."""

    def __init__(self, targets: Iterable[Target], sink: Sink, options: DiscoveryOptions) -> None:
        super().__init__(targets, sink, options)
        self.inflight: dict[int, _Attempt] = {}
        self.stalled_until = 0.0  # after a failed socket(): no new attempts before this
        self.window: deque[tuple[float, int, _Attempt]] = deque()  # (deadline, fd, attempt)

    async def run(self) -> SweepStats:
        loop = asyncio.get_running_loop()
        pacer = _Pacer(self.options.rate, loop.time())
        try:
            while True:
                now = loop.time()
                expired_all = self._expire(now)
                room = min(self.sink.room() - len(self.inflight), pacer.allowed(now))
                batch = min(room, TURN_BATCH)
                while batch > 0:
                    item = self.next_target()
                    if item is None:
                        break
                    pacer.used += 1
                    batch -= self._start(loop, *item)
                if self.exhausted and not self.retry and not self.inflight:
                    return self.stats
                if self.stalled_until > now:
                    await self.pause(self.stalled_until)
                    continue
                if not expired_all or (room > TURN_BATCH and (self.retry or not self.exhausted)):
                    # More to do right now, but the probes in flight get a turn of the loop
                    # first: a long burst of connects would eat their deadlines.
                    await asyncio.sleep(0)
                    continue
                until = self.window[0][0] if self.window else None
                if self.options.rate and (self.retry or not self.exhausted):
                    at = pacer.next_at()
                    until = at if until is None else min(until, at)
                await self.pause(until)
        finally:
            for attempt in list(self.inflight.values()):
                self._drop(loop, attempt)

    def _start(self, loop: asyncio.AbstractEventLoop, target: Target, made: int) -> int:
        """Begin one attempt; returns the sockets it holds (0 when it ended at once)."""
        family = _literal_family(target.host)
        self.sent += 1
        if family is None:
            # A name the target space did not resolve: the probe connects (and resolves) itself.
            self.live += 1
            self.sink.found(target, None)
            return 0
        started = loop.time()
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            # Out of descriptors or buffers: not the target's fault; try again a little later.
            log.warning("cannot open a socket for %s:%s: %s", target.host, target.port, exc)
            self.sent -= 1
            self.retry.appendleft((target, made))
            self.stalled_until = started + 0.05
            return 1 << 30  # stop starting more this turn
        sock.setblocking(False)
        code = sock.connect_ex((target.host, target.port))
        attempt = _Attempt(target, sock, made + 1, started)
        if code in (errno.EINPROGRESS, errno.EAGAIN):
            fd = sock.fileno()
            self.inflight[fd] = attempt
            self.window.append((started + self.options.timeout, fd, attempt))
            loop.add_writer(fd, self._writable, loop, fd)
            return 1
        self._settle(loop, attempt, code)
        return 0

    def _writable(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        attempt = self.inflight.pop(fd, None)
        loop.remove_writer(fd)
        if attempt is None or attempt.done:
            return
        try:
            code = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            code = exc.errno or errno.EIO
        self._settle(loop, attempt, code)
        self.wake()

    def _settle(self, loop: asyncio.AbstractEventLoop, attempt: _Attempt, code: int) -> None:
        attempt.done = True
        target = attempt.target
        if code == 0:
            self.live += 1
            self.sink.found(target, attempt.sock)  # the socket is the probe's now
            return
        attempt.sock.close()
        elapsed = loop.time() - attempt.started
        if code == errno.ECONNREFUSED:
            self.verdict(target, State.CLOSED, elapsed=elapsed)
        elif code in (errno.ETIMEDOUT, errno.EAGAIN):
            self.silent(target, attempt.made)
        else:
            # ICMP unreachable and friends: a definite answer, but not an open or closed port.
            self.verdict(target, State.FILTERED, os.strerror(code), elapsed)

    def _expire(self, now: float) -> bool:
        """Give up on attempts past their deadline, at most TURN_BATCH of them; False when
        more are due."""
        loop = asyncio.get_running_loop()
        window = self.window
        budget = TURN_BATCH
        while window and window[0][0] <= now:
            if budget == 0:
                return False
            _, fd, attempt = window.popleft()
            if attempt.done:
                continue
            budget -= 1
            self._drop(loop, attempt)
            self.silent(attempt.target, attempt.made)
        return True

    def _drop(self, loop: asyncio.AbstractEventLoop, attempt: _Attempt) -> None:
        attempt.done = True
        fd = attempt.sock.fileno()
        if self.inflight.get(fd) is attempt:
            del self.inflight[fd]
            loop.remove_writer(fd)
        attempt.sock.close()


# ---------------------------------------------------------------------------------------------
# syn

_TCP_SYN, _TCP_RST, _TCP_ACK = 0x02, 0x04, 0x10
_MSS_OPTION = struct.pack("!BBH", 2, 4, 1460)
_SYN_LEN = 24  # 20-byte header + the MSS option
_SYN_OFFSET_FLAGS = (6 << 12) | _TCP_SYN  # data offset 6 words, SYN
SO_ATTACH_FILTER = 26


def _bpf_replies_to(port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF for a raw IPv4 TCP socket: keep SYN-ACK and RST-ACK segments to `port`."""
    return [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)   x = IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]          TCP destination port
        (0x15, 0, 5, port),  # jeq #port, else drop
        (0x50, 0, 0, 13),  # ldb [x+13]        TCP flags
        (0x54, 0, 0, _TCP_SYN | _TCP_RST | _TCP_ACK),
        (0x15, 1, 0, _TCP_SYN | _TCP_ACK),  # SYN-ACK: keep
        (0x15, 0, 1, _TCP_RST | _TCP_ACK),  # RST-ACK: keep, else drop
        (0x06, 0, 0, 0xFFFF),
        (0x06, 0, 0, 0),
    ]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _source_port() -> int:
    """A random port outside the kernel's ephemeral range, so no local socket ever uses it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low, high = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if high < 65000:
        return random.randint(high + 1, 65535)
    return random.randint(1024, max(1025, low - 1))


class _SynAttempt:
    """One SYN in flight (a slotted class: tens of thousands are made per second)."""

    __slots__ = ("target", "made", "sent_at", "done")

    def __init__(self, target: Target, made: int, sent_at: float) -> None:
        self.target = target
        self.made = made
        self.sent_at = sent_at
        self.done = False


class SynSweep(_Sweep):
    """Stateless SYN scan: a cookie in the sequence number validates replies; a window of
    attempts in flight gives every silent pair its retries and its filtered verdict."""

    def __init__(self, targets: Iterable[Target], sink: Sink, options: DiscoveryOptions) -> None:
        super().__init__(targets, sink, options)
        self.port = _source_port()
        self.secret = os.urandom(16)
        self.pending: dict[tuple[bytes, int], _SynAttempt] = {}
        self.window: deque[tuple[float, tuple[bytes, int], _SynAttempt]] = deque()
        self.sources: dict[bytes, bytes] = {}  # destination /24 → our source address
        self._bases: dict[bytes, int] = {}  # source address → constant part of the checksum
        self.sock: socket.socket | None = None
        rate = options.rate or DEFAULT_SYN_RATE
        self.rate = rate

    def cookie(self, address: bytes, port: int) -> int:
        digest = hashlib.blake2b(address + port.to_bytes(2, "big"), key=self.secret,
                                 digest_size=4).digest()
        return int.from_bytes(digest, "big")

    def _source_for(self, address: bytes) -> bytes:
        net = address[:3]
        source = self.sources.get(net)
        if source is None:
            # The kernel picks the IP source address by route; ask it the same way (a UDP
            # connect sends nothing). One lookup per /24 is enough for any sane routing table.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.connect((socket.inet_ntoa(address), 9))
                source = socket.inet_aton(udp.getsockname()[0])
            self.sources[net] = source
        return source

    def packet(self, address: bytes, port: int) -> bytes:
        """The TCP segment of our SYN to (address, port); the kernel adds the IP header."""
        seq = self.cookie(address, port)
        src = self._source_for(address)
        base = self._bases.get(src)
        if base is None:
            # The checksum's constant part: source address, protocol and length, our port,
            # offset/flags, window and the MSS option (RFC 1071: a sum of 16-bit words).
            constant = src + struct.pack("!BBHHHHH", 0, socket.IPPROTO_TCP, _SYN_LEN,
                                         self.port, _SYN_OFFSET_FLAGS, 65535, 0) + _MSS_OPTION
            base = sum(struct.unpack(f"!{len(constant) // 2}H", constant))
            self._bases[src] = base
        d1, d2 = struct.unpack("!HH", address)
        total = base + d1 + d2 + port + (seq >> 16) + (seq & 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        return struct.pack("!HHIIHHHH", self.port, port, seq, 0, _SYN_OFFSET_FLAGS, 65535,
                           ~total & 0xFFFF, 0) + _MSS_OPTION

    async def run(self) -> SweepStats:
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except PermissionError:
            raise UsageError(SYN_ERROR) from None
        self.sock = sock
        try:
            sock.setblocking(False)
            for opt, size in ((getattr(socket, "SO_RCVBUFFORCE", 33), 32 << 20),
                              (getattr(socket, "SO_SNDBUFFORCE", 32), 8 << 20)):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
            _attach_filter(sock, _bpf_replies_to(self.port))
            with contextlib.suppress(BlockingIOError):
                while True:  # anything queued before the filter was attached
                    sock.recv(65535)
            loop.add_reader(sock.fileno(), self._readable)
            try:
                return await self._send_all(loop, sock)
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    async def _send_all(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> SweepStats:
        pacer = _Pacer(self.rate, loop.time())
        while True:
            now = loop.time()
            self._expire(now)
            tokens = pacer.allowed(now)
            room = self.sink.room()
            budget = min(tokens, SYN_BATCH, max(0, room))
            while budget > 0:
                item = self.next_target()
                if item is None:
                    break
                if not self._send(now, sock, *item):
                    self.retry.appendleft(item)
                    await asyncio.sleep(0.001)  # the device queue is full: let it drain
                    break
                pacer.used += 1
                budget -= 1
            more = bool(self.retry) or not self.exhausted
            if not more and not self.pending:
                return self.stats
            until = self.window[0][0] if self.window else None
            if more and room > 0:
                # Out of tokens or at the end of a batch: let replies and probes run, then go
                # on when the next token is due.
                at = pacer.next_at()
                until = at if until is None else min(until, at)
                if until <= loop.time():
                    await asyncio.sleep(0)
                    continue
            await self.pause(until)

    def _send(self, now: float, sock: socket.socket, target: Target, made: int) -> bool:
        try:
            address = socket.inet_aton(target.host) if ":" not in target.host else b""
        except OSError:
            address = b""
        if len(address) != 4:
            # IPv6 or a name: no raw path here; the probe connects to it itself.
            self.sent += 1
            self.live += 1
            self.sink.found(target, None)
            return True
        try:
            sock.sendto(self.packet(address, target.port), (target.host, 0))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return False
            self.sent += 1
            self.verdict(target, State.FILTERED, exc.strerror or str(exc))
            return True
        self.sent += 1
        key = (address, target.port)
        attempt = _SynAttempt(target, made + 1, now)
        self.pending[key] = attempt
        self.window.append((now + self.options.timeout, key, attempt))
        return True

    def _readable(self) -> None:
        assert self.sock is not None
        for _ in range(4096):  # bounded, so a flood cannot starve the loop
            try:
                data = self.sock.recv(128)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._reply(data)

    def _reply(self, data: bytes) -> None:
        if len(data) < 20:
            return
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 14:
            return
        sport, dport, _seq, ack = struct.unpack_from("!HHII", data, ihl)
        if dport != self.port:
            return
        address = data[12:16]
        if ack != (self.cookie(address, sport) + 1) & 0xFFFFFFFF:
            return  # not an answer to a SYN of ours (stale, forged, or another scan's)
        attempt = self.pending.pop((address, sport), None)
        if attempt is None or attempt.done:
            return  # duplicate, or an answer after its verdict
        attempt.done = True
        flags = data[ihl + 13]
        loop = asyncio.get_running_loop()
        if flags & _TCP_SYN:
            self.live += 1
            self.sink.found(attempt.target, None)
        else:
            self.verdict(attempt.target, State.CLOSED, elapsed=loop.time() - attempt.sent_at)
        self.wake()

    def _expire(self, now: float) -> None:
        window = self.window
        while window and window[0][0] <= now:
            _, key, attempt = window.popleft()
            if attempt.done:
                continue
            attempt.done = True
            if self.pending.get(key) is attempt:
                del self.pending[key]
            self.silent(attempt.target, attempt.made)


Sweep = ConnectSweep | SynSweep


def make_sweep(targets: Iterable[Target], sink: Sink, options: DiscoveryOptions) -> Sweep:
    """The sweep for `options.mode`; raises UsageError for syn without raw-socket rights."""
    if options.mode is Mode.SYN:
        check_syn_allowed()
        return SynSweep(targets, sink, options)
    return ConnectSweep(targets, sink, options)
