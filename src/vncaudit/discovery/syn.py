"""SYN discovery (`--discovery syn`, root): a stateless sweep that sends as fast as the rate cap
and the machine allow, and turns the answers into verdicts.

Owns: `SynSweep`. Sender threads (`senders`; two on a machine with two or more cores when the
rate asks for more than one core sends) each take a block of targets (a `TargetWalk` block, or
Targets read from any iterable), compute its cookies and packets in one pass (`wire`), and hand
them to the kernel with sendmmsg in chunks as the shared token bucket allows: the kernel's work
per SYN (the larger part) runs outside the GIL, on both cores. The event loop's thread reads the
replies on a raw socket (a BPF filter keeps only SYN-ACK and RST segments to our port), checks
each acknowledgement against the cookie, and gives the verdicts: live (handed to the sink, the
probe connects), closed, or, when a window of `timeout` passes in silence, a retry or filtered.

What the threads share: `pending` (pairs taken and not yet answered or given up; a pair is in it
from the moment a thread takes it until its verdict, so a late answer still counts and a pair is
never in flight twice), `window` (the chunks sent, in send order, with their deadlines),
`retries` and the counters, under `lock` where a test and an update must go together.

The rate cap (`--rate`) is a token bucket shared by all senders: in any t seconds at most
rate × t + `burst` SYNs (burst: 20 ms worth, 1 to 4096). What the kernel refuses for lack of
buffer space is counted and sent again; what it rejects for good (no route) is a filtered
verdict with the reason; what the outgoing interfaces drop is read from their counters; the
rate achieved is measured (`SynCounters`). IPv6 and unresolved names go to the probe as they
are (it connects itself).

The early start (`vncaudit.synstart`, before the program loaded) may have sent the first pairs
of this very walk: the sweep then takes over its seed's pairs (pending, in the window from the
moment they went out), its cookie secret, source port and sockets, and walks on after them;
any other sweep only counts its SYNs in the bucket (`_adopt`).

Must not: speak RFB, block the event loop (sending happens in the threads), send before the
cap allows, or send to anything but the targets it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from vncaudit.basics import State, Target
from vncaudit.discovery import (
    NO_ANSWER,
    SYN_ERROR,
    BaseSweep,
    DiscoveryOptions,
    Marks,
    Sink,
    SweepStats,
    SynCounters,
    wire,
)
from vncaudit.discovery import route as routes
from vncaudit.exceptions import UsageError
from vncaudit.rawbatch import TokenBucket as TokenBucket
from vncaudit.rawbatch import send_granted
from vncaudit.rawsyn import DEFAULT_SYN_RATE as DEFAULT_SYN_RATE
from vncaudit.rawsyn import replies_socket, source_port
from vncaudit.routetable import tx_dropped
from vncaudit.synstart import ONE_THREAD_RATE as ONE_SENDER_RATE
from vncaudit.synstart import EarlyStart, claim

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]

EXPIRE_FLIGHTS: Final = 16  # chunks given up per turn of the event loop, so probes keep theirs
NEIGHBOUR_WAIT: Final = 0.5  # seconds to let the kernel resolve a gateway before frames go out


class TargetBlocks(Protocol):
    """A target source that can be read in blocks (`vncaudit.targets.TargetWalk`)."""

    def blocks(self, size: int = ...) -> Iterator[_Block]: ...

    def target(self, pair: int) -> Target: ...


class _Block(Protocol):
    @property
    def pairs(self) -> U64: ...

    @property
    def others(self) -> tuple[Target, ...]: ...


@dataclass(frozen=True)
class _Flight:
    deadline: float  # time.monotonic()
    pairs: U64
    made: int  # attempts made for these pairs, this one included


def _host(address: int) -> str:
    return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}"


def _close_all(txs: dict[tuple[int, bool], wire.KernelTx | wire.LinkTx]) -> None:
    for tx in txs.values():
        tx.close()
    txs.clear()


def default_senders(rate: float) -> int:
    return 2 if rate > ONE_SENDER_RATE and (os.cpu_count() or 1) >= 2 else 1


class SynSweep(BaseSweep):
    """Stateless SYN scan: a cookie in the sequence number validates replies; a window of chunks
    in flight gives every silent pair its retries and its filtered verdict."""

    def __init__(self, targets: Iterable[Target], sink: Sink, options: DiscoveryOptions,
                 senders: int | None = None) -> None:
        super().__init__(targets, sink, options)
        self.port = source_port()
        self.secret = os.urandom(16)
        self.cookies = wire.Cookies(self.secret)
        self.rate = options.rate or DEFAULT_SYN_RATE
        self.senders = senders or default_senders(self.rate)
        self.counters = SynCounters(asked=self.rate)
        self.bucket = TokenBucket(self.rate)
        self.walk: TargetBlocks | None = None
        if callable(getattr(targets, "blocks", None)) and callable(getattr(targets, "target",
                                                                           None)):
            self.walk = targets  # type: ignore[assignment]
        self.blocks: Iterator[_Block] | None = None
        self.named: dict[int, Target] = {}  # pairs of Targets from an iterable with a name
        self.repeats: dict[int, int] = {}  # a pair given again while still pending
        self.pending: set[int] = set()
        self.window: deque[_Flight] = deque()
        self.retries: deque[tuple[U64, int]] = deque()
        self.others: deque[Target] = deque()  # IPv6 / names, for the event loop to hand on
        self.failures: deque[tuple[int, str]] = deque()  # (pair, why the kernel refused it)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.busy = 0
        self.error: BaseException | None = None
        self.plan: routes.RoutePlan | None = None
        self.plan_lock = threading.Lock()
        self.primed: set[bytes] = set()
        self.sources: dict[int, int] = {}  # /24 → source word sum, when the plan has none
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rx: socket.socket | None = None
        self.marks = getattr(sink, "finished_marks", None)
        # The early start's (`vncaudit.synstart`), when this sweep took it over: the socket
        # that has read the answers since its first SYN, the sending one until a sender takes
        # it, and what is left of the walk's first block after its pairs.
        self.early_rx: socket.socket | None = None
        self.early_tx: socket.socket | None = None
        self.early_link: tuple[int, socket.socket] | None = None  # its frames' packet socket
        self.early_dropped = 0  # what the interface dropped of the early frames
        self.rest: U64 | None = None
        self.early_replies: list[bytes] = []  # what the early batch sender read meanwhile
        self.opened = False  # the sweep's own first chunk of fresh SYNs went out
        early = claim()
        if early is not None:
            self._adopt(early)

    def _adopt(self, early: EarlyStart) -> None:
        """Take over the early start when it sent the first pairs of this very sweep: its
        batch sender stops here; its seed, cookie secret and source port are then this
        sweep's, every pair it sent is pending in the window from the moment it went out
        (their verdicts are given as any other's, from the answers it kept and those that
        come), and the walk goes on after them. Otherwise its sockets are closed and its
        answers left unread; either way the rate cap counts its SYNs (the bucket the batch
        sender used is this sweep's when the rate is the same)."""
        early.finish()
        flights = early.flights()
        sent = sum(len(pairs) for _, pairs in flights)
        bulk = early.bulk
        if bulk is not None and bulk.bucket is not None and bulk.bucket.rate == self.rate:
            self.bucket = bulk.bucket
        else:
            with self.bucket.lock:  # what the bucket would hold had it let these out
                self.bucket.tokens = float(self.bucket.burst - sent)
                self.bucket.last = flights[-1][0]
        if bulk is not None:
            log.info("early start: %d SYNs sent before the sweep, %d of them in batches, %d "
                     "as frames (%d refused and sent again); the batches stopped at %s", sent,
                     bulk.sent, bulk.framed, bulk.refused,
                     bulk.why or "the walk's end or the sweep")
        walk = self.walk
        plan = early.plan
        taken, unsent = early.taken()
        mine = self._walk_start(len(taken)) if (
            walk is not None and getattr(walk, "seed", None) == early.seed
            and getattr(walk, "shard", None) == (0, 1) and not getattr(walk, "skip", ())
            and getattr(walk, "__len__", lambda: -1)() == plan.count
            and self.rate == (plan.rate or DEFAULT_SYN_RATE)
            and self.options.timeout == plan.timeout
            and self.options.retries == plan.retries) else None
        if mine is None or not np.array_equal(mine[:len(taken)],
                                              np.array(taken, dtype=np.uint64)):
            early.close()
            self.blocks = None
            return
        self.port = early.port
        self.secret = early.secret
        self.cookies = wire.Cookies(early.secret)
        self.early_rx, self.early_tx = early.rx, early.tx
        self.early_link = early.link_socket()
        if bulk is not None and bulk.dropped_from is not None:
            ifindex, before = bulk.dropped_from
            self.early_dropped = max(0, tx_dropped({ifindex}) - before)
        self.early_replies = bulk.replies if bulk is not None else []
        # What was taken and not sent goes first, in walk order, then the walk after it.
        rest = mine[len(taken):]
        self.rest = np.concatenate([np.array(unsent, dtype=np.uint64), rest]) if unsent \
            else rest
        for sent_at, pairs in flights:
            chunk = np.array(pairs, dtype=np.uint64)
            self.pending.update(pairs)
            self.window.append(_Flight(sent_at + self.options.timeout, chunk, 1))
        self.sent += sent
        counters = self.counters
        counters.sent = counters.fresh = sent
        counters.opening = len(early.pairs)
        counters.started = early.sent_at
        counters.fresh_done = flights[-1][0]
        if bulk is not None:
            counters.refused += bulk.refused
            counters.cpu += bulk.cpu
            # The rate is counted from the early start's first SYNs when its batches went on
            # after them; otherwise from the sweep's own first chunk.
            self.opened = len(flights) > 1

    def _walk_start(self, count: int) -> U64 | None:
        """The walk's first blocks, at least `count` pairs (all of them IPv4 pairs), with
        `self.blocks` left after them; None when the walk holds less or anything else."""
        assert self.walk is not None
        self.blocks = self.walk.blocks(wire.MAX_BATCH)
        parts: list[U64] = []
        total = 0
        while total < count:
            block = next(self.blocks, None)
            if block is None or block.others:
                return None
            parts.append(block.pairs)
            total += len(block.pairs)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # -- the event loop's side -------------------------------------------------------------

    @property
    def sending(self) -> bool:
        """Whether the sender threads still have SYNs to send (fresh ones, or a block of
        retries in hand). The engine holds back the probes of pairs found meanwhile, so the
        senders keep the cores (`_Pipeline.hold_probes`)."""
        return not self.exhausted or self.busy > 0

    @property
    def answers_only(self) -> bool:
        """Whether every SYN this sweep will send is out, retries included: what is left is
        the window of late answers (the engine's idle time, `iter_results`' `on_idle`)."""
        with self.lock:
            if not self.exhausted or self.busy or self.retries:
                return False
        attempts = self.options.attempts
        return all(flight.made >= attempts for flight in self.window)

    def cookie(self, address: bytes, port: int) -> int:
        """The sequence number of our SYN to (address, port)."""
        return self.cookies.cookie((int.from_bytes(address, "big") << 16) | port)

    async def run(self) -> SweepStats:
        loop = asyncio.get_running_loop()
        self.loop = loop
        rx = self.early_rx
        if rx is None:
            try:
                rx = replies_socket(self.port)
            except PermissionError:
                raise UsageError(SYN_ERROR) from None
        self.rx = rx
        threads: list[threading.Thread] = []
        try:
            loop.add_reader(rx.fileno(), self._readable)
            if self.early_rx is not None:
                # the answers to the early SYNs, before any is given up
                replies, self.early_replies = self.early_replies, []
                if replies:
                    self._replies(replies)
                self._readable()
            self.plan = routes.plan()
            interfaces = self.plan.interfaces()
            dropped_before = tx_dropped(interfaces)
            for i in range(self.senders):
                thread = threading.Thread(target=self._sender, name=f"vncaudit-syn-{i}",
                                          daemon=True)
                thread.start()
                threads.append(thread)
            try:
                await self._settle(loop, interfaces, dropped_before)
            finally:
                self.counters.dropped = max(0, tx_dropped(interfaces) - dropped_before) \
                    + self.early_dropped
            return self.stats
        finally:
            self.stopping.set()
            for thread in threads:
                thread.join(1.0)
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(rx.fileno())
            rx.close()
            with self.lock:
                unused, self.early_tx = self.early_tx, None
            if unused is not None:
                unused.close()
            self._close_early_link()

    async def _settle(self, loop: asyncio.AbstractEventLoop, interfaces: set[int],
                      dropped_before: int) -> None:
        """Hand on, expire and give verdicts until every target has its verdict."""
        next_count = time.monotonic() + 0.5
        sent_all = getattr(self.sink, "sent_all", None)
        last_window = getattr(self.sink, "last_window", None)
        while True:
            if self.error is not None:
                raise self.error
            if sent_all is not None and not self.sending:
                sent_all()
                sent_all = None
            if last_window is not None and sent_all is None and self.answers_only:
                last_window()
                last_window = None
            self._drain()
            now = time.monotonic()
            more = self._expire(now)
            if now >= next_count:
                self.counters.dropped = max(0, tx_dropped(interfaces) - dropped_before) \
                    + self.early_dropped
                next_count = now + 0.5
            if self._finished():
                return
            if more:
                await asyncio.sleep(0)
                continue
            until = min(self.window[0].deadline if self.window else now + 0.05, now + 0.05)
            await self.pause(loop.time() + max(0.0, until - time.monotonic()))

    def _finished(self) -> bool:
        with self.lock:
            return (self.exhausted and not self.retries and self.busy == 0 and not self.window
                    and not self.others and not self.failures)

    def _drain(self) -> None:
        while self.others:
            target = self.others.popleft()
            with self.lock:
                self.sent += 1
            self.live += 1
            self.sink.found(target, None)
        while self.failures:
            pair, why = self.failures.popleft()
            with self.lock:
                copies = 1 + self.repeats.pop(pair, 0)
            for _ in range(copies):
                self.verdict(self._target(pair), State.FILTERED, why)

    def _target(self, pair: int) -> Target:
        if self.walk is not None:
            return self.walk.target(pair)
        named = self.named.get(pair)
        return named if named is not None else Target(_host(pair >> 16), pair & 0xFFFF)

    def _expire(self, now: float) -> bool:
        """Give up on the chunks past their deadline (at most EXPIRE_FLIGHTS); True when more
        are due."""
        window = self.window
        given_up: list[U64] = []
        try:
            for _ in range(EXPIRE_FLIGHTS):
                if not window or window[0].deadline > now:
                    return False
                flight = window.popleft()
                keys = flight.pairs.tolist()
                final = flight.made >= self.options.attempts
                with self.lock:
                    pending = self.pending
                    if final and not self.repeats and pending.issuperset(keys):
                        # The common case, no pair of the chunk answered: no set is built.
                        pending.difference_update(keys)
                        if self.marks is not None:
                            given_up.append(flight.pairs)
                            continue
                        silent = set(keys)
                    else:
                        silent = pending.intersection(keys)
                        if not silent:
                            continue
                        if not final:
                            self.retries.append((np.fromiter(silent, np.uint64, len(silent)),
                                                 flight.made))
                            self.retried += len(silent)
                            continue
                        pending.difference_update(silent)
                    copies = {k: self.repeats.pop(k) for k in silent if k in self.repeats} \
                        if self.repeats else {}
                if copies or self.marks is None:
                    self._give_up_each(silent, copies)
                else:
                    given_up.append(np.fromiter(silent, np.uint64, len(silent)))
            return bool(window) and window[0].deadline <= now
        finally:
            if given_up:
                self._give_up(given_up)

    def _give_up(self, silent: list[U64]) -> None:
        """Filtered verdicts for pairs that never answered, as one `Marks`: no object or
        string per target (most of a large sweep ends here)."""
        assert self.marks is not None
        keys = np.sort(np.concatenate(silent)) if len(silent) > 1 else np.sort(silent[0])
        self.filtered += len(keys)
        self.marks(Marks(State.FILTERED, NO_ANSWER, keys.astype("<u8").tobytes()))

    def _give_up_each(self, silent: set[int], copies: dict[int, int]) -> None:
        """Filtered verdicts one result each: for a sink without `finished_marks`, and for
        pairs given more than once (each copy has its verdict)."""
        target = self._target
        for pair in silent:
            for _ in range(1 + copies.get(pair, 0)):
                self.verdict(target(pair), State.FILTERED, NO_ANSWER)

    def _readable(self) -> None:
        assert self.rx is not None
        packets: list[bytes] = []
        recv = self.rx.recv
        for _ in range(4096):  # bounded, so a flood cannot starve the loop
            try:
                packets.append(recv(128))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
        if packets:
            self._replies(packets)

    def _replies(self, packets: list[bytes]) -> None:
        pairs, acks, flags = wire.parse_replies(packets, self.port)
        if not pairs:
            return
        if len(pairs) <= 8:
            cookies = [self.cookies.cookie(p) for p in pairs]
        else:
            cookies = self.cookies.cookies(np.array(pairs, dtype=np.uint64)).tolist()
        answered = False
        for pair, ack, flag, cookie in zip(pairs, acks, flags, cookies, strict=True):
            if ack != (cookie + 1) & 0xFFFFFFFF:
                continue  # not an answer to a SYN of ours (stale, forged, or another scan's)
            with self.lock:
                if pair not in self.pending:
                    continue  # a duplicate, or an answer after its verdict
                self.pending.discard(pair)
                copies = 1 + self.repeats.pop(pair, 0)
            answered = True
            target = self._target(pair)
            for _ in range(copies):
                if flag & wire.TCP_SYN:
                    self.live += 1
                    self.sink.found(target, None)
                else:
                    self.verdict(target, State.CLOSED)
        if answered:
            self.wake()

    def _poke(self) -> None:
        """From a sender thread: let the event loop look at the queues now."""
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self.wake)

    # -- the sender threads' side ----------------------------------------------------------

    def _sender(self) -> None:
        txs: dict[tuple[int, bool], wire.KernelTx | wire.LinkTx] = {}
        bucket = self.bucket
        cpu = time.thread_time()
        poked = False
        try:
            while not self.stopping.is_set():
                work = self._take()
                if work is None:
                    if self.exhausted and not poked:
                        self._poke()  # the event loop may be waiting for the last block
                        poked = True
                    if self.exhausted and (txs or self.early_link is not None):
                        # Nothing to send until a retry (the tx is made again for it): the
                        # sockets close now, not after the window. Closing a packet socket
                        # waits for the kernel's RCU grace period: 7-8 ms each, measured.
                        _close_all(txs)
                        self._close_early_link()
                    self.stopping.wait(0.002)
                    continue
                poked = False
                pairs, made = work
                try:
                    self._send_block(pairs, made, txs, bucket)
                finally:
                    with self.lock:
                        self.busy -= 1
        except BaseException as exc:  # surfaced by the event loop's side
            self.error = exc
            self._poke()
        finally:
            _close_all(txs)
            with self.lock:
                self.counters.cpu += time.thread_time() - cpu

    def _take(self) -> tuple[U64, int] | None:
        """The next pairs to send (retries first) and the attempts already made for them; the
        pairs go into `pending` here, under the lock."""
        with self.lock:
            while self.retries:
                pairs, made = self.retries.popleft()
                keep = self.pending.intersection(pairs.tolist())  # answered late: no retry
                if keep:
                    self.busy += 1
                    return np.fromiter(keep, np.uint64, len(keep)), made
            while not self.exhausted:
                block = self._next_block()
                if block is None:
                    self.exhausted = True
                    break
                pairs, others = block
                if others:
                    self.others.extend(others)
                if len(pairs):
                    self.pending.update(pairs.tolist())
                    self.busy += 1
                    return pairs, 0
        return None

    def _next_block(self) -> tuple[U64, tuple[Target, ...]] | None:
        """Called under the lock."""
        if self.walk is not None:
            if self.rest is not None:  # the first block, after the early start's pairs
                rest, self.rest = self.rest, None
                return rest, ()
            if self.blocks is None:
                self.blocks = self.walk.blocks(wire.MAX_BATCH)
            block = next(self.blocks, None)
            return None if block is None else (block.pairs, block.others)
        pairs: list[int] = []
        others: list[Target] = []
        taken: set[int] = set()
        for target in self.source:
            try:
                packed = socket.inet_pton(socket.AF_INET, target.host)
            except OSError:
                others.append(target)  # IPv6 or a name: the probe connects itself
            else:
                pair = (int.from_bytes(packed, "big") << 16) | target.port
                if pair in self.pending or pair in taken:
                    self.repeats[pair] = self.repeats.get(pair, 0) + 1
                else:
                    taken.add(pair)
                    pairs.append(pair)
                    if target.hostname is not None:
                        self.named[pair] = target
            if len(pairs) + len(others) >= wire.MAX_BATCH:
                break
        if not pairs and not others:
            return None
        return np.array(pairs, dtype=np.uint64), tuple(others)

    def _send_block(self, pairs: U64, made: int,
                    txs: dict[tuple[int, bool], wire.KernelTx | wire.LinkTx],
                    bucket: TokenBucket) -> None:
        seqs = self.cookies.cookies(pairs)
        plan = self.plan
        assert plan is not None
        index = plan.paths_of(pairs >> np.uint64(16))
        low, high = int(index.min()), int(index.max())
        # (np.unique would do, but its first call imports numpy.ma: 0.1 s before the first SYN)
        groups = [low] if low == high else [g for g in range(low, high + 1)
                                             if (index == g).any()]
        for group in groups:
            chosen: slice | npt.NDArray[np.bool_] = (
                slice(None) if len(groups) == 1 else index == group)
            sel, sel_seqs = pairs[chosen], seqs[chosen]
            path = plan.paths[group]
            if path.link is None and path.gateway and path.gateway not in self.primed:
                sel, sel_seqs = self._prime(path, sel, sel_seqs, made, txs, bucket)
                if not len(sel):
                    continue
                path = self._replan(group)
            tx: wire.KernelTx | wire.LinkTx
            if path.link is not None:
                key = (group, True)
                if key not in txs:
                    assert path.ifindex is not None
                    txs[key] = wire.LinkTx(self.port, path.source, *path.link,
                                           sock=self._packet_socket(path.ifindex))
                tx = txs[key]
                tx.load(sel, sel_seqs, 0)
            else:
                tx = self._kernel_tx(txs)
                tx.load(sel, sel_seqs, self._source_sums(path, sel))
            self._send_loaded(tx, sel, made, bucket)

    def _packet_socket(self, ifindex: int) -> socket.socket:
        """A packet socket on `ifindex`: the early start's, when it sent frames there and no
        other sender took it yet."""
        with self.lock:
            link = self.early_link
            if link is not None and link[0] == ifindex:
                self.early_link = None
                return link[1]
        return wire.packet_socket(ifindex)

    def _close_early_link(self) -> None:
        with self.lock:
            link, self.early_link = self.early_link, None
        if link is not None:
            link[1].close()

    def _kernel_tx(self, txs: dict[tuple[int, bool], wire.KernelTx | wire.LinkTx]
                   ) -> wire.KernelTx | wire.LinkTx:
        if (-1, False) not in txs:
            with self.lock:
                sock, self.early_tx = self.early_tx, None
            txs[(-1, False)] = wire.KernelTx(self.port, sock or wire.raw_tcp_socket())
        return txs[(-1, False)]

    def _prime(self, path: routes.Path, pairs: U64, seqs: U64, made: int,
               txs: dict[tuple[int, bool], wire.KernelTx | wire.LinkTx],
               bucket: TokenBucket) -> tuple[U64, U64]:
        """The gateway of `path` is not resolved yet: send the first SYN through the kernel
        (which resolves it, as for any packet) and wait a little for the neighbour entry, so
        the rest can go out as frames. Returns the pairs still to send."""
        with self.plan_lock:
            if path.gateway in self.primed:
                return pairs, seqs
            self.primed.add(path.gateway)
        tx = self._kernel_tx(txs)
        tx.load(pairs[:1], seqs[:1], self._source_sums(path, pairs[:1]))
        self._send_loaded(tx, pairs[:1], made, bucket)
        deadline = time.monotonic() + NEIGHBOUR_WAIT
        while time.monotonic() < deadline and not self.stopping.is_set():
            if (path.gateway, path.ifindex) in routes.neighbours():
                break
            self.stopping.wait(0.002)
        return pairs[1:], seqs[1:]

    def _replan(self, group: int) -> routes.Path:
        with self.plan_lock:
            fresh = routes.plan()
            assert self.plan is not None
            if len(fresh.paths) == len(self.plan.paths):
                self.plan = fresh
            return self.plan.paths[group]

    def _source_sums(self, path: routes.Path, pairs: U64) -> U64 | int:
        """Word sums of our source address for each destination (the plan's, or the kernel's
        answer per /24 when the plan could not say)."""
        if path.source:
            return wire.word_sum(path.source)
        sums = []
        for net in (pairs >> np.uint64(24)).tolist():
            known = self.sources.get(net)
            if known is None:
                if len(self.sources) > 65536:
                    self.sources.clear()
                source = routes.kernel_source(net << 8 | 1)
                known = self.sources[net] = wire.word_sum(source) if source else 0
            sums.append(known)
        return np.array(sums, dtype=np.uint64)

    def _send_loaded(self, tx: wire.KernelTx | wire.LinkTx, pairs: U64, made: int,
                     bucket: TokenBucket) -> None:
        """Send the packets loaded in `tx` for `pairs`, in chunks the bucket allows, recording
        each chunk in the window."""
        n = len(pairs)
        i = 0
        counters = self.counters
        while i < n:
            while self.sink.room() <= 0 and not self.stopping.is_set():
                self.stopping.wait(0.001)  # the probes or the consumer are behind
            granted = bucket.grant(min(n - i, wire.MAX_CALL), self.stopping)
            if not granted:
                return
            done = refused = 0
            failed: list[tuple[int, str]] = []
            while done < granted and not self.stopping.is_set():
                sent, waits, code = send_granted(tx, i + done, granted - done, self.stopping)
                done += sent
                refused += waits
                if code:
                    failed.append((int(pairs[i + done]), os.strerror(code)))
                    done += 1
            now = time.monotonic()
            self.window.append(_Flight(now + self.options.timeout, pairs[i:i + done], made + 1))
            with self.lock:
                ok = done - len(failed)
                self.sent += ok
                counters.sent += ok
                counters.refused += refused
                counters.failed += len(failed)
                if not self.opened and made == 0:
                    # The rate is the sweep's own: counted from its first chunk, which the
                    # cap lets out at once, as are the early start's SYNs before it.
                    self.opened = True
                    counters.started = now
                    counters.opening = counters.fresh + ok
                if made == 0:
                    counters.fresh += ok
                    counters.fresh_done = now
                for pair, why in failed:
                    self.pending.discard(pair)
                    self.failures.append((pair, why))
            if failed:
                self._poke()
            i += done
