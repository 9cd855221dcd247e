"""The early start's batch senders: threads that walk on at the rate cap after the early
start's first SYNs, before the program has loaded, until the walk ends or the SYN sweep takes
over.

Owns: `BulkSender` (started by `vncaudit.synstart` for a plan whose rate the early threads are
asked to hold, `synstart.EARLY_BULK_RATE`; stopped and read by the sweep,
`discovery.syn.SynSweep._adopt`). Its threads take the walk's next pairs in order, a batch at
a time, send each batch in the chunks the scan's token bucket grants (`rawbatch.TokenBucket`,
the one the sweep then uses), and record each chunk with the moment it went out and the part
of each batch not sent (told to stop, or a SYN the kernel refused for good: the sweep sends
those first, and meets the same refusal). A batch goes out as whole Ethernet frames to the
gateway on an AF_PACKET socket (`rawbatch.FrameBatch`, as the sweep's `LinkTx`) when the
whole walk has one route whose link is exact (`routetable.link_of`: the gateway's link-layer
address known, which the early start's first SYNs make the kernel resolve; waited for up to
`NEIGHBOUR_WAIT`, else no batch is sent); otherwise as segments on the early start's raw IP
socket (`rawbatch.SynBatch`: the kernel routes each).
They read the answers that arrive meanwhile (kept as they came, for the sweep to judge), so
none is lost to a full socket buffer. They stop when told, at the walk's end, or
`EARLY_BULK_SECONDS` after they began (a program that never reaches the sweep does not go on
scanning).

Imports the standard library's `sys`, `threading` and `time` (and in its threads
`rawbatch`, `routetable`, `rawsyn`): it runs before numpy, asyncio and the store are
imported. Must not: send a pair twice or one outside the walk, send faster than the bucket
grants, import numpy, or send where the kernel's source address for a pair (and for a frame,
its route and next hop) is not known as exactly as the sweep's route plan knows it (no batch
then: the sweep sends as it would have).
"""

from __future__ import annotations

import sys
import threading
import time
from bisect import bisect_right

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from socket import socket
    from typing import Final

    from vncaudit import routetable
    from vncaudit.rawbatch import FrameBatch, SynBatch, TokenBucket
    from vncaudit.synstart import EarlyWalk

EARLY_BULK_SECONDS: Final = 1.0  # the longest the batches go on without the sweep
# The program's imports hold the GIL but for a switch every interval (5 ms by default): a
# sender thread would wait that long after each sendmmsg while they run.
SWITCH_INTERVAL: Final = 0.0005
NEIGHBOUR_LOOK: Final = 0.002  # seconds between looks for the gateway's link-layer address
# The longest the batches wait for it: a gateway on a link answers ARP in well under this; a
# slower one is left to the sweep, which asks again once the program has loaded.
NEIGHBOUR_WAIT: Final = 0.2


class _Taken:
    """A batch a thread took from the walk: its pairs and how many of them went out."""

    __slots__ = ("pairs", "sent")

    def __init__(self, pairs: list[int]) -> None:
        self.pairs = pairs
        self.sent = 0


class BulkSender:
    """`threads` threads that send `walk` from `port` with `secret`'s cookies on `tx`, under a
    token bucket of `rate` that already counts `spent` SYNs sent at `at`; `rx` is the socket
    the answers arrive on. `blocks` ((first, last) addresses) are the scan's: their sources
    are read from the routing table before the first batch."""

    def __init__(self, blocks: tuple[tuple[int, int], ...], port: int, secret: bytes,
                 tx: socket, rx: socket, walk: EarlyWalk, rate: float, spent: int,
                 at: float, threads: int) -> None:
        self.blocks = blocks
        self.port = port
        self.secret = secret
        self.tx = tx
        self.rx = rx
        self.walk = walk
        self.rate = rate
        self.spent = (spent, at)
        self.count = max(1, threads)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.taken: list[_Taken] = []  # in walk order
        self.flights: list[tuple[float, list[int]]] = []  # (sent at, the pairs)
        self.replies: list[bytes] = []
        self.refused = 0
        self.cpu = 0.0
        self.bucket: TokenBucket | None = None
        self.sources: tuple[list[int], list[int], list[bytes]] | None = None
        # Frames straight to the gateway when the whole walk has one exact route
        # (`routetable.link_of`): (source, our link-layer address, the gateway's) and the
        # packet socket (`link_socket`, (ifindex, socket): the sweep's to use and close).
        self.link: tuple[bytes, bytes, bytes] | None = None
        self.link_socket: tuple[int, socket] | None = None
        self.framed = 0  # SYNs sent as frames
        # (ifindex, what it had dropped on the way out before the first frame): the sweep
        # counts the rest in its summary
        self.dropped_from: tuple[int, int] | None = None
        self.deadline = 0.0
        self.why = ""  # why the batches stopped before the walk's end, for the log
        self.interval = sys.getswitchinterval()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        # What the threads import is imported here first: a thread importing a module while
        # the main thread imports it too (the program loading) shares CPython's module lock,
        # and a Ctrl-C landing in the main thread's wait for it can leave the lock held.
        from vncaudit import rawbatch, rawsyn, routetable  # noqa: F401

        sys.setswitchinterval(min(self.interval, SWITCH_INTERVAL))
        first = threading.Thread(target=self._first, name="vncaudit-syn-early-0", daemon=True)
        self.threads.append(first)
        first.start()

    def wait(self, seconds: float) -> None:
        """Wait for the threads to end by themselves (the walk's end, or their time), at
        most `seconds`."""
        until = time.monotonic() + seconds
        while True:
            with self.lock:
                threads = list(self.threads)
            alive = [t for t in threads if t.is_alive()]
            left = until - time.monotonic()
            if not alive or left <= 0:
                return
            alive[0].join(left)

    def finish(self) -> None:
        """Stop sending (after the chunk in hand) and wait for the threads: what they
        recorded is final after this."""
        self.stopping.set()
        while True:
            with self.lock:
                alive = [t for t in self.threads if t.is_alive()]
            if not alive:
                break
            for thread in alive:
                thread.join()
        sys.setswitchinterval(self.interval)

    @property
    def sent(self) -> int:
        return sum(len(pairs) for _, pairs in self.flights)

    def taken_pairs(self) -> list[int]:
        """Every pair the threads took from the walk, in walk order (after `finish`)."""
        return [p for batch in self.taken for p in batch.pairs]

    def unsent(self) -> list[int]:
        """The pairs taken and not sent, in walk order (after `finish`)."""
        return [p for batch in self.taken for p in batch.pairs[batch.sent:]]

    def _first(self) -> None:
        """The first thread: the bucket, the sources and the link, then its batches (and the
        other threads once its first is loaded)."""
        self._counted(self._start_all)

    def _start_all(self) -> None:
        from vncaudit import rawbatch

        bucket = rawbatch.TokenBucket(self.rate)
        bucket.spend(*self.spent)
        self.bucket = bucket
        planned = _sources(self.blocks)
        if planned is None:
            self.why = "the sources are not known exactly (policy routing or no route)"
            return
        self.sources, route = planned
        if route is not None and not self._find_link(route, self.sources[2][0]):
            if not self.stopping.is_set():
                self.why = "the gateway's link-layer address is not known"
            return
        self.deadline = time.monotonic() + EARLY_BULK_SECONDS
        self._send_walk(first=True)

    def _start_others(self) -> None:
        """The other threads: started once the first thread's first batch is loaded, so
        their set-up runs while it sends (the GIL is free then), not before its first SYN."""
        with self.lock:
            for i in range(1, self.count):
                thread = threading.Thread(target=self._run, name=f"vncaudit-syn-early-{i}",
                                          daemon=True)
                self.threads.append(thread)
                thread.start()

    def _run(self) -> None:
        self._counted(self._send_walk)

    def _counted(self, work: Callable[[], None]) -> None:
        """Run one thread's `work`, its CPU time added to the sender's; an error ends it (the
        sweep sends what it did not)."""
        cpu = time.thread_time()
        try:
            work()
        except Exception as exc:
            self.why = f"{type(exc).__name__}: {exc}"
        finally:
            with self.lock:
                self.cpu += time.thread_time() - cpu

    def _send_walk(self, first: bool = False) -> None:
        from vncaudit import rawbatch
        from vncaudit.rawsyn import cookie_key

        assert self.sources is not None and self.bucket is not None
        starts, sums, _ = self.sources
        single = sums[0] if len(sums) == 1 else None
        key = cookie_key(self.secret)
        frames: FrameBatch | None = None
        if self.link_socket is not None and self.link is not None:
            frames = rawbatch.FrameBatch(self.port, *self.link, self.link_socket[1], key)
        segments: SynBatch | None = None
        size = rawbatch.SMALL_BATCH  # the first out sooner, the rest in fewer passes
        while not self.stopping.is_set():
            if time.monotonic() >= self.deadline:
                if self.walk.left:
                    self.why = "its time"
                return
            with self.lock:
                pairs = self.walk.take(size)
                size = rawbatch.MAX_BATCH
                if not pairs:
                    return
                taken = _Taken(pairs)
                self.taken.append(taken)
            batch: SynBatch | FrameBatch
            if frames is not None:
                batch = frames
                frames.load(pairs)
            else:
                if segments is None:
                    segments = rawbatch.SynBatch(self.port, self.tx, key)
                batch = segments
                if single is not None:
                    batch.load(pairs, [single] * len(pairs))
                else:
                    batch.load(pairs, [sums[bisect_right(starts, p >> 16) - 1] for p in pairs])
            if first:
                first = False
                self._start_others()
            if not self._send_loaded(batch, taken, self.bucket):
                return

    def _find_link(self, route: routetable.Route, source: bytes) -> bool:
        """Frames when `route` (the whole walk's) allows them: its gateway's link-layer address
        read from the neighbour table, waited for up to `NEIGHBOUR_WAIT` (the early start's
        first SYNs, which the kernel routed, made it ask; more sent meanwhile would only queue
        behind them), and the packet socket opened. False when it is still not known then:
        the sweep sends, as it would have."""
        from vncaudit import rawbatch, routetable

        if not routetable.frames_possible(route, source):
            return True
        assert route.ifindex is not None
        ours = routetable.ethernet_address(route.ifindex)
        if ours is None:
            return True  # not Ethernet, or down: the kernel's raw IP path
        until = time.monotonic() + NEIGHBOUR_WAIT
        waited = False
        while True:
            link = routetable.link_of(route, source, routetable.neighbours(), ours)
            if link is not None:
                break
            if time.monotonic() >= until or self.stopping.wait(NEIGHBOUR_LOOK):
                return False
            waited = True
        if waited and self.bucket is not None:
            # The first SYNs waited in the kernel's queue for this address and left with it:
            # the cap counts them from now.
            self.bucket.spend(self.spent[0], time.monotonic())
        self.dropped_from = (route.ifindex, routetable.tx_dropped({route.ifindex}))
        self.link_socket = (route.ifindex, rawbatch.packet_socket(route.ifindex))
        self.link = (source, *link)
        return True

    def _send_loaded(self, batch: SynBatch | FrameBatch, taken: _Taken,
                     bucket: TokenBucket) -> bool:
        """Send the loaded batch in the chunks the bucket grants; False when it stopped
        before the end (told to, or a SYN the kernel refused for good)."""
        from vncaudit.rawbatch import MAX_CALL, FrameBatch, send_granted

        pairs = taken.pairs
        n = len(pairs)
        i = 0
        while i < n:
            granted = bucket.grant(min(n - i, MAX_CALL), self.stopping)
            if not granted:
                return False
            done, refused, failed = send_granted(batch, i, granted, self.stopping)
            now = time.monotonic()
            with self.lock:
                self.refused += refused
                if done:
                    taken.sent += done
                    self.flights.append((now, pairs[i:i + done]))
                self._read()
            if isinstance(batch, FrameBatch):
                self.framed += done
            if failed or done < granted:
                if failed:
                    self.why = "a SYN the kernel refused"
                return False
            i += done
        return True

    def _read(self) -> None:
        """The answers so far (the socket is non-blocking), kept for the sweep."""
        recv = self.rx.recv
        replies = self.replies
        for _ in range(65536):
            try:
                replies.append(recv(128))
            except OSError:  # BlockingIOError: nothing more for now
                return


def _sources(blocks: tuple[tuple[int, int], ...]
             ) -> tuple[tuple[list[int], list[int], list[bytes]], routetable.Route | None] | None:
    """((segment starts, source word sums, source addresses), the one route of them all or
    None) for the addresses of `blocks`, a segment for each route inside them as the sweep's
    route plan cuts them (`discovery.route.plan`), or None where that plan would not be exact
    (policy rules, a table too large, no route)."""
    from vncaudit import routetable
    from vncaudit.rawsyn import word_sum

    try:
        table = routetable.routes()
        if not routetable.only_default_rules() or len(table) > routetable.MAX_ROUTES:
            return None
    except OSError:
        return None
    starts: list[int] = []
    sums: list[int] = []
    sources: list[bytes] = []
    chosen: set[routetable.Route | None | bool] = set()
    for first, last in blocks:
        edges = routetable.cuts(table, first, last)
        for k, start in enumerate(edges):
            end = edges[k + 1] - 1 if k + 1 < len(edges) else last
            best = routetable.best_route(table, start)
            source = routetable.source_of(best, start, end)
            if not source:
                return None
            chosen.add(best)
            starts.append(start)
            sums.append(word_sum(source))
            sources.append(source)
    one = next(iter(chosen)) if len(chosen) == 1 and len(set(sources)) == 1 else None
    return (starts, sums, sources), one if isinstance(one, routetable.Route) else None
