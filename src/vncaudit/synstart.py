"""The early start of a SYN scan: its first SYNs, sent before the rest of the program loads.

Owns: `start` (for a plan the launcher read from the command line, `EarlyPlan`: draw the walk's
seed, the cookie secret and the source port as the sweep would, open the socket that reads the
answers, then send the first pairs of the scan's real walk order, at most `EARLY_MAX` and no
more than the rate cap's burst, one SYN each on a raw IPPROTO_TCP socket: the kernel routes
them and adds the IP header; then, when one thread holds the plan's rate, `EARLY_BULK_RATE`,
the batch sender of `vncaudit.synbulk` walks on after them under the rate cap while the program
loads), and the hand-off: `started` (the seed the scan record must use) and `claim` (the SYN
sweep takes the sockets, the batch sender and the pairs in flight, once). What it sends is
exactly what the sweep would send first: the same permutation (`targets.permutation`), the same
cookie and bytes (`rawsyn`; `rawbatch` for the batches).

Imports the standard library's `os`, `socket`, `struct`, `time`, `bisect` and the package's
`rawsyn` and `targets.permutation` only before its first SYN (checked by
tests/test_synstart.py), `synbulk` after it: it runs before typer, asyncio, numpy and the
store are imported. Must not: send to anything but the pairs the plan's own walk gives, send
more than the burst one by one (the batches are the token bucket's), import numpy, or decide
whether a command line may start early (the launcher, `cli.launch`, does).
"""

from __future__ import annotations

import os
import socket
import time
from bisect import bisect_right

from vncaudit import rawsyn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from vncaudit.synbulk import BulkSender

# SYNs built one by one in Python before the batches take over: the first packet leaves at
# once; the batches' set-up (~10 ms) waits after these, so they are few.
EARLY_MAX: Final = 16
MAX_COUNT: Final = 1 << 40  # a larger space is left to the sweep (its permutation costs more)
# The most packets/s the early batch sender (`vncaudit.synbulk`) is asked to hold: one thread
# sharing the GIL with the program's imports. Above it the sweep's threads send after the
# first SYNs, as fast as they can, and no slower early sender sets the pace before them.
EARLY_BULK_RATE: Final = 250_000.0
ONE_THREAD_RATE: Final = 100_000.0  # above this two early threads send (discovery.syn's)
# A walk that the cap lets out in at most this long is sent before the program loads (it
# then loads during the first window); a longer one while it loads.
EARLY_WAIT_SECONDS: Final = 0.5


class EarlyPlan:
    """What the launcher read from a `vncaudit scan` command line: IPv4 intervals (merged,
    sorted, each (first, last) address), the ports (sorted, unique), the pace, the discovery
    mode ("syn", or "connect": `vncaudit.connstart`) and the --db given (None: the default
    file). A plain class: `dataclasses` costs more to import than the whole early start."""

    __slots__ = ("blocks", "ports", "rate", "retries", "timeout", "mode", "db")

    def __init__(self, blocks: tuple[tuple[int, int], ...], ports: tuple[int, ...],
                 rate: float | None, retries: int | None, timeout: float,
                 mode: str = "syn", db: str | None = None) -> None:
        self.blocks = blocks
        self.ports = ports
        self.rate = rate  # None: the sweep's default
        self.retries = retries  # None: the mode's default
        self.timeout = timeout
        self.mode = mode
        self.db = db

    @property
    def count(self) -> int:
        """(address, port) pairs of the plan."""
        return sum(last - first + 1 for first, last in self.blocks) * len(self.ports)


class EarlyStart:
    """What `start` did: the walk's seed, the cookie secret, the source port, the sockets
    (answers, and sending) and the pairs sent one by one (`(address << 16) | port`, in walk
    order), with the moment the last of them went out (`time.monotonic()`), and the batch
    sender that walks on after them (`bulk`, when the plan's rate allows one)."""

    __slots__ = ("plan", "seed", "secret", "port", "rx", "tx", "pairs", "sent_at", "bulk")

    def __init__(self, plan: EarlyPlan, seed: int, secret: bytes, port: int,
                 rx: socket.socket, tx: socket.socket, pairs: list[int],
                 sent_at: float) -> None:
        self.plan = plan
        self.seed = seed
        self.secret = secret
        self.port = port
        self.rx = rx
        self.tx = tx
        self.pairs = pairs
        self.sent_at = sent_at
        self.bulk: BulkSender | None = None

    def finish(self) -> None:
        """Stop the batch senders, if any: what `flights` and `taken` say is final after
        this."""
        if self.bulk is not None:
            self.bulk.finish()

    def flights(self) -> list[tuple[float, list[int]]]:
        """Every pair sent so far, in chunks with the moment each went out, in that order."""
        out = [(self.sent_at, self.pairs)]
        if self.bulk is not None:
            out += sorted(self.bulk.flights, key=lambda flight: flight[0])
        return out

    def taken(self) -> tuple[list[int], list[int]]:
        """(every pair taken from the walk, in walk order; those of them not sent, in walk
        order): the sweep's walk must begin with the first, and sends the second first."""
        if self.bulk is None:
            return self.pairs, []
        return self.pairs + self.bulk.taken_pairs(), self.bulk.unsent()

    def link_socket(self) -> tuple[int, socket.socket] | None:
        """The batch sender's packet socket ((ifindex, socket)) when it sent frames: whoever
        takes the early start over closes it."""
        return self.bulk.link_socket if self.bulk is not None else None

    def close(self) -> None:
        self.finish()
        self.rx.close()
        self.tx.close()
        link = self.link_socket()
        if link is not None:
            link[1].close()


_started: EarlyStart | None = None


def started() -> EarlyStart | None:
    """The early start of this process, if one was made and not claimed yet."""
    return _started


def claim() -> EarlyStart | None:
    """The early start, for the one sweep that takes it over (its sockets are then the
    sweep's to close); None when there is none or it was claimed."""
    global _started
    early, _started = _started, None
    return early


class EarlyWalk:
    """The pairs of the walk a `TargetSpace` of `plan`'s intervals and ports makes with `seed`
    (`TargetSpace.iter_targets`: the same permutation, the same index to pair), taken in
    order a few at a time (`take`). A batch of cycle positions is x * g**j mod p for j below
    its size, from powers computed once, as `CyclicPermutation.index_blocks` makes them."""

    def __init__(self, plan: EarlyPlan, seed: int) -> None:
        from vncaudit.targets.permutation import CyclicPermutation

        self.ports = plan.ports
        self.firsts = [first for first, _ in plan.blocks]
        self.offsets = [0]
        for first, last in plan.blocks:
            self.offsets.append(self.offsets[-1] + last - first + 1)
        perm = CyclicPermutation(self.offsets[-1] * len(self.ports), seed)
        self.p, self.n, self.g = perm.p, perm.n, perm.g
        self.x = perm.start  # the next cycle position's value
        self.left = perm.p - 1  # cycle positions not taken yet
        self.powers: list[int] = [1]

    def take(self, k: int) -> list[int]:
        """The walk's next (at most) `k` pairs; fewer only at its end."""
        out: list[int] = []
        while len(out) < k and self.left:
            values = self._positions(min(k - len(out), self.left))
            out += self._pairs([v for v in values if v <= self.n])
        return out

    def _positions(self, m: int) -> list[int]:
        p, g = self.p, self.g
        powers = self.powers
        if len(powers) < m:
            for _ in range(m - len(powers)):
                powers.append(powers[-1] * g % p)
        x = self.x
        values = [x * q % p for q in (powers if m == len(powers) else powers[:m])]
        self.x = values[-1] * g % p
        self.left -= m
        return values

    def _pairs(self, values: list[int]) -> list[int]:
        ports = self.ports
        if len(self.firsts) == 1 and len(ports) == 1:
            base, port = self.firsts[0] - 1, ports[0]
            return [((base + v) << 16) | port for v in values]
        width, firsts, offsets = len(ports), self.firsts, self.offsets
        out = []
        for v in values:
            a, port_index = divmod(v - 1, width)
            k = bisect_right(offsets, a) - 1
            out.append(((firsts[k] + a - offsets[k]) << 16) | ports[port_index])
        return out


def first_pairs(plan: EarlyPlan, seed: int, n: int) -> list[int]:
    """The first `n` pairs of the walk of `plan` with `seed` (`EarlyWalk`)."""
    return EarlyWalk(plan, seed).take(max(0, n))


def start(plan: EarlyPlan) -> EarlyStart | None:
    """Send the plan's first SYNs now; None (nothing sent, nothing left open) when this
    process has no raw-socket rights, the plan is empty or too large, or the kernel has no
    route to one of the first pairs (the sweep then meets the same and says so)."""
    global _started
    count = plan.count
    if count == 0 or count > MAX_COUNT or _started is not None:
        return None
    rate = plan.rate or rawsyn.DEFAULT_SYN_RATE
    n = min(EARLY_MAX, rawsyn.rate_burst(rate), count)
    port = rawsyn.source_port()
    try:
        rx = rawsyn.replies_socket(port)  # before the first SYN: no answer is lost
    except OSError:
        return None
    try:
        tx = rawsyn.raw_tcp_socket()
    except OSError:
        rx.close()
        return None
    # 64 bits from os.urandom, as the target space draws its seed.
    seed = int.from_bytes(os.urandom(8), "big")
    secret = os.urandom(16)
    walk = EarlyWalk(plan, seed)
    try:
        pairs = _send(tx, port, secret, walk.take(n))
    except OSError:
        pairs = []
    if not pairs:
        rx.close()
        tx.close()
        return None
    early = _started = EarlyStart(plan, seed, secret, port, rx, tx, pairs, time.monotonic())
    if len(pairs) == n < count and rate <= EARLY_BULK_RATE:
        from vncaudit.synbulk import EARLY_BULK_SECONDS, BulkSender

        threads = 2 if rate > ONE_THREAD_RATE and (os.cpu_count() or 1) >= 2 else 1
        early.bulk = BulkSender(plan.blocks, port, secret, tx, rx, walk, rate, n,
                                early.sent_at, threads)
        early.bulk.start()
        if (count - n) / rate <= EARLY_WAIT_SECONDS:
            # The whole walk goes out within the time the program needs to load, its
            # answers wait in the socket: the cores are the senders' until then.
            early.bulk.wait(EARLY_BULK_SECONDS)
    return early


def _send(tx: socket.socket, port: int, secret: bytes, pairs: list[int]) -> list[int]:
    """Send a SYN to each pair in order; the pairs sent, up to the first one the kernel
    refused (no buffer space, no route: the sweep sends that one and the rest, and counts
    what it refuses). Nothing is sent unless the kernel has a source address for every pair."""
    sources: dict[int, int] = {}
    for pair in pairs:
        address = pair >> 16
        if address not in sources:
            source = rawsyn.kernel_source(address)
            if not source:
                return []
            sources[address] = rawsyn.word_sum(source)
    key = rawsyn.cookie_key(secret)
    sent: list[int] = []
    for pair in pairs:
        segment = rawsyn.syn_segment(port, pair, rawsyn.cookie(key, pair), sources[pair >> 16])
        destination = (socket.inet_ntoa((pair >> 16).to_bytes(4, "big")), 0)
        for attempt in (1, 2):
            try:
                tx.sendto(segment, destination)
                break
            except (BlockingIOError, InterruptedError):
                return sent
            except OSError:
                # A raw IP socket also reports, once, an ICMP error that came for an earlier
                # segment: the same packet again tells that from its own failure.
                if attempt == 2:
                    return sent
        sent.append(pair)
    return sent
