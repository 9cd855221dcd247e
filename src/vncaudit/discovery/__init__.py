"""Discovery: which (host, port) pairs answer at all, found cheaply, before any RFB is spoken.

Owns the two sweeps behind `--discovery`, one interface (`Sweep.run()`, feeding a `Sink`), and
what they share (options, the verdict plumbing, the counters):

* `connect` (default, no root; `ConnectSweep`, here): non-blocking `connect()` on plain sockets
  watched by the event loop's writer callbacks, many in flight, no task or stream per attempt,
  so thousands of silent addresses cost a file descriptor and a deque entry each; the first
  may be the early start's (`vncaudit.connstart`), taken over with its start time. A connection
  that succeeds is handed, still open, to the sink: the probe then runs on *that* connection
  (one connection per port, docs/design.md "Probing etiquette"), with a deadline that starts
  when the connection exists.
* `syn` (root, IPv4; `discovery.syn`, imported only when asked for: it needs numpy): stateless
  SYNs with a keyed cookie as sequence number, built and sent in batches by sender threads under
  a shared rate cap, as zmap and masscan do; `discovery.wire` makes the bytes,
  `discovery.route` says which way each destination leaves. The kernel answers each SYN-ACK
  with a RST (it has no socket for our port): harmless, the probe opens a real connection
  afterwards. IPv6 and unresolved names are handed to the probe as they are.

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
import errno
import functools
import logging
import os
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, Union

from vncaudit.basics import State, Target
from vncaudit.connstart import claim_socket
from vncaudit.connstart import started as started_early
from vncaudit.exceptions import UsageError
from vncaudit.rawsyn import RATE_BURST_SECONDS as RATE_BURST_SECONDS
from vncaudit.rawsyn import rate_burst as rate_burst

log = logging.getLogger(__name__)

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
        """How many more sockets the sweep may hold open now (connect) / pairs it may add.
        The SYN sweep's sender threads call this too: it must stay a cheap read of counters."""


@functools.cache
def result_type() -> type[ServiceResult]:
    """`models.ServiceResult`, imported with the first verdict: the result types (and their
    payloads) are not needed before the sweep's first packet."""
    from vncaudit.models import ServiceResult

    return ServiceResult


@dataclass(frozen=True)
class Marks:
    """Closed or filtered verdicts for many IPv4 pairs at once (what a SYN sweep gives up on in
    one turn of its window): a consumer that records only (host, port, state) for these stores
    `keys` as they are (`Store.mark_done_packed`), instead of one `ServiceResult` or one row
    each. A sink opts in with a `finished_marks(marks)` method; to any other sink the sweep
    gives one `ServiceResult` per pair.

    `keys`: the pairs as address << 16 | port, little-endian unsigned 64 bits, ascending (the
    store's `PACKED_PAIR`), each pair once."""

    state: State
    error: str | None
    keys: bytes

    def __len__(self) -> int:
        return len(self.keys) // 8

    @property
    def pairs(self) -> list[tuple[str, int]]:
        """(host, port) of each pair, in `keys`' order."""
        out = []
        for (key,) in struct.iter_unpack("<Q", self.keys):
            address = key >> 16
            out.append((f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}."
                        f"{address & 255}", key & 0xFFFF))
        return out

    def results(self) -> Iterator[ServiceResult]:
        result = result_type()
        for host, port in self.pairs:
            yield result(host, port, self.state, error=self.error)


@dataclass(frozen=True)
class SweepStats:
    sent: int = 0  # attempts started, retries included
    live: int = 0
    closed: int = 0
    filtered: int = 0
    retried: int = 0


@dataclass
class SynCounters:
    """What the SYN sender did, live (the progress line reads it while the sweep runs)."""

    asked: float  # the rate cap, packets/s
    sent: int = 0  # SYNs the kernel took, retries included
    refused: int = 0  # times the kernel had no buffer for a SYN (each was sent again later)
    failed: int = 0  # SYNs it rejected for good (no route ...): filtered, with the reason
    dropped: int = 0  # packets the outgoing interfaces dropped while the sweep ran
    fresh: int = 0  # first SYNs (not retries) sent
    cpu: float = 0.0  # CPU seconds the sender threads used (their own and the kernel's for them)
    started: float = 0.0  # time.monotonic() when the first chunk of SYNs had gone out
    opening: int = 0  # SYNs in that chunk (the bucket's burst, at most)
    fresh_done: float = 0.0  # ... when the last first SYN had
    _marks: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=8))

    @property
    def send_rate(self) -> float:
        """First SYNs per second after the opening chunk (which the cap lets out at once), to
        the last one sent so far; 0 while that is too short to tell (under 50 ms)."""
        span = self.fresh_done - self.started
        return (self.fresh - self.opening) / span if span >= 0.05 else 0.0

    def recent_rate(self, now: float | None = None) -> float:
        """SYNs per second over the last second or so (for a progress line)."""
        now = time.monotonic() if now is None else now
        marks = self._marks
        if not marks or now - marks[-1][0] >= 0.25:
            marks.append((now, self.sent))
        then, count = marks[0]
        return (self.sent - count) / (now - then) if now - then > 0.2 else 0.0


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


class Pacer:
    """The connect sweep's rate cap: at most `burst` + rate × t SYNs in any t seconds, by the
    moments they leave. A start is let through on the clock read just before it (`ready`),
    and the bucket gains nothing until the clock read just after it (`sent`): the thread can
    be descheduled between the two, and a SYN let out late must not count as sent early."""

    def __init__(self, rate: float | None, now: float) -> None:
        self.rate = rate
        self.burst = rate_burst(rate) if rate else 0
        self.tokens = float(self.burst)
        self.last = now

    def allowed(self, now: float) -> int:
        if not self.rate:
            return 1 << 30
        if now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
            self.last = now
        return int(self.tokens)

    def ready(self, now: float) -> bool:
        """A token is there at `now` (taken by `sent`)."""
        return not self.rate or self.allowed(now) >= 1

    def sent(self, after: float) -> None:
        """One start went out at some moment up to `after`."""
        if self.rate:
            self.tokens -= 1
            self.last = max(self.last, after)

    def next_at(self) -> float:
        """When the next start is allowed."""
        assert self.rate
        return self.last + max(0.0, 1 - self.tokens) / self.rate


class BaseSweep:
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
        self.sink.finished(result_type()(target.host, target.port, state, error=error,
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


def _late_outcome(sock: socket.socket) -> int | None:
    """What a non-blocking connect came to by now: 0 connected, an errno refused or failed,
    None still in progress (SO_ERROR is 0 both while connecting and once connected; only a
    connected socket has a peer)."""
    try:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as exc:
        return exc.errno or errno.EIO
    if code:
        return code
    try:
        sock.getpeername()
    except OSError:
        return None
    return 0


def _literal_family(host: str) -> socket.AddressFamily | None:
    """AF_INET / AF_INET6 for an address literal, None for a name (inet_pton: C speed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        return None
    return family


class ConnectSweep(BaseSweep):
    """Non-blocking connects, watched by writer callbacks; at most `sink.room()` in flight."""

    def __init__(self, targets: Iterable[Target], sink: Sink, options: DiscoveryOptions) -> None:
        super().__init__(targets, sink, options)
        self.inflight: dict[int, _Attempt] = {}
        self.stalled_until = 0.0  # after a failed socket(): no new attempts before this
        self.window: deque[tuple[float, int, _Attempt]] = deque()  # (deadline, fd, attempt)
        self.early = started_early() is not None  # an early connect may be this sweep's

    async def run(self) -> SweepStats:
        loop = asyncio.get_running_loop()
        pacer = Pacer(self.options.rate, loop.time())
        try:
            while True:
                now = loop.time()
                expired_all = self._expire(now)
                room = min(self.sink.room() - len(self.inflight), pacer.allowed(now))
                batch = min(room, TURN_BATCH)
                clock = loop.time
                while batch > 0 and pacer.ready(clock()):
                    item = self.next_target()
                    if item is None:
                        break
                    batch -= self._start(loop, *item)
                    pacer.sent(clock())
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
        early = claim_socket(target.host, target.port) if made == 0 and self.early else None
        if early is not None:
            # The early start's connect to this pair (`vncaudit.connstart`), begun before the
            # event loop existed: its attempt, with its own start, is this one.
            self.early = False
            sock, code = early.sock, early.code
            started = loop.time() - max(0.0, time.monotonic() - early.started)
        else:
            started = loop.time()
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                # Out of descriptors or buffers: not the target's fault; try again later.
                log.warning("cannot open a socket for %s:%s: %s", target.host, target.port,
                            exc)
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
            code = _late_outcome(attempt.sock)
            if code is not None:
                # The kernel finished the handshake (or heard a refusal) while the loop was
                # late: a connection the server accepted, and counts, is one, however late.
                if self.inflight.pop(fd, None) is attempt:
                    loop.remove_writer(fd)
                self._settle(loop, attempt, code)
                continue
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


if TYPE_CHECKING:
    from vncaudit.discovery.syn import DEFAULT_SYN_RATE as DEFAULT_SYN_RATE
    from vncaudit.discovery.syn import SynSweep
    from vncaudit.models import ServiceResult

Sweep = Union[ConnectSweep, "SynSweep"]


def make_sweep(targets: Iterable[Target], sink: Sink, options: DiscoveryOptions) -> Sweep:
    """The sweep for `options.mode`; raises UsageError for syn without raw-socket rights."""
    if options.mode is Mode.SYN:
        check_syn_allowed()
        from vncaudit.discovery.syn import SynSweep

        return SynSweep(targets, sink, options)
    return ConnectSweep(targets, sink, options)


def __getattr__(name: str) -> object:
    # The SYN sweep needs numpy: imported when first asked for, not by a connect scan.
    if name in ("SynSweep", "DEFAULT_SYN_RATE"):
        from vncaudit.discovery import syn

        return getattr(syn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
