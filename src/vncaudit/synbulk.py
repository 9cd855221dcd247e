"""The early start's batch sender: a thread that walks on at the rate cap after the early
start's first SYNs, while the main thread imports the program, until the SYN sweep takes over.

Owns: `BulkSender` (started by `vncaudit.synstart` for a plan whose rate one such thread
holds, `synstart.EARLY_BULK_RATE`; stopped and read by the sweep, `discovery.syn.SynSweep._adopt`).
It sends the walk's next pairs in order, in batches of `rawbatch.SynBatch` on the early
start's raw socket, each chunk only when the scan's token bucket (`rawbatch.TokenBucket`, the
one the sweep then uses) grants it, and records each chunk with the moment it went out; it
reads the answers that arrive meanwhile (kept as they came, for the sweep to judge) so none is
lost to a full socket buffer. What it sent is always a prefix of the walk: it stops at the
first SYN the kernel refuses for good (the sweep sends that one and meets the same), when
told, when the walk ends, or `EARLY_BULK_SECONDS` after it began (a program that never reaches
the sweep does not go on scanning).

Imports the standard library's `errno`, `threading` and `time` (and in its thread `rawbatch`,
`routetable`, `rawsyn`): it runs before numpy, asyncio and the store are imported. Must not:
send a pair twice or out of the walk's order, send faster than the bucket grants, import
numpy, or send where the kernel's source address for a pair is not known exactly (no batch
then: the sweep sends as it would have).
"""

from __future__ import annotations

import errno
import threading
import time
from bisect import bisect_right
from itertools import islice

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from socket import socket
    from typing import Final

    from vncaudit.rawbatch import SynBatch, TokenBucket

EARLY_BULK_SECONDS: Final = 1.0  # the longest it sends without the sweep taking over
LATE: Final = 0.0005  # a grant sent later than this after it was taken counts as late (syn.py)
REFUSED_PAUSE: Final = 0.0005  # seconds to let a full device queue drain


class BulkSender:
    """One thread that sends `walk` (pairs in walk order) from `port` with `secret`'s cookies
    on `tx`, under a token bucket of `rate` that already counts `spent` SYNs sent at `at`;
    `rx` is the socket the answers arrive on. The blocks of `blocks` ((first, last) addresses)
    are the scan's: their sources are read from the routing table before the first batch."""

    def __init__(self, blocks: tuple[tuple[int, int], ...], port: int, secret: bytes,
                 tx: socket, rx: socket, walk: Iterator[int], rate: float, spent: int,
                 at: float) -> None:
        self.blocks = blocks
        self.port = port
        self.secret = secret
        self.tx = tx
        self.rx = rx
        self.walk = walk
        self.rate = rate
        self.spent = (spent, at)
        self.stopping = threading.Event()
        self.flights: list[tuple[float, list[int]]] = []  # (sent at, the pairs), in walk order
        self.replies: list[bytes] = []
        self.refused = 0
        self.cpu = 0.0
        self.bucket: TokenBucket | None = None
        self.why = ""  # why it stopped before the walk's end, for the debug log
        self.thread = threading.Thread(target=self._run, name="vncaudit-syn-early",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        """Stop sending (after the chunk in hand) and wait for the thread: what it recorded
        is final after this."""
        self.stopping.set()
        self.thread.join()

    @property
    def sent(self) -> int:
        return sum(len(pairs) for _, pairs in self.flights)

    def _run(self) -> None:
        cpu = time.thread_time()
        try:
            self._send_walk()
        except Exception as exc:  # the sweep sends what this did not
            self.why = f"{type(exc).__name__}: {exc}"
        finally:
            self.cpu = time.thread_time() - cpu

    def _send_walk(self) -> None:
        from vncaudit import rawbatch
        from vncaudit.rawsyn import cookie_key

        bucket = rawbatch.TokenBucket(self.rate)
        bucket.spend(*self.spent)
        self.bucket = bucket
        sources = _sources(self.blocks)
        if sources is None:
            self.why = "the sources are not known exactly (policy routing or no route)"
            return
        starts, sums = sources
        batch = rawbatch.SynBatch(self.port, self.tx, cookie_key(self.secret))
        deadline = time.monotonic() + EARLY_BULK_SECONDS
        single = sums[0] if len(sums) == 1 else None
        while not self.stopping.is_set():
            if time.monotonic() >= deadline:
                self.why = "time"
                return
            pairs = list(islice(self.walk, rawbatch.MAX_BATCH))
            if not pairs:
                return
            if single is not None:
                batch.load(pairs, [single] * len(pairs))
            else:
                batch.load(pairs, [sums[bisect_right(starts, p >> 16) - 1] for p in pairs])
            if not self._send_loaded(batch, pairs, bucket):
                return

    def _send_loaded(self, batch: SynBatch, pairs: list[int], bucket: TokenBucket) -> bool:
        """Send the loaded batch in the chunks the bucket grants; False when it stopped
        before the end (told to, or a SYN the kernel refused for good)."""
        from vncaudit.rawbatch import MAX_CALL

        n = len(pairs)
        i = 0
        while i < n:
            granted = bucket.take(min(n - i, MAX_CALL), self.stopping)
            granted_at = time.monotonic()
            if not granted:
                return False
            done = 0
            again = False
            failed = False
            while done < granted and not self.stopping.is_set():
                sent, code = batch.send(i + done, granted - done)
                if sent:
                    done += sent
                    again = False
                elif code in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                    self.refused += 1
                    self.stopping.wait(REFUSED_PAUSE)
                elif not again:
                    # A raw IP socket also reports, once, an ICMP error that arrived for any
                    # earlier segment: the same packet again tells that from its own failure.
                    again = True
                else:
                    failed = True
                    break
            now = time.monotonic()
            if now - granted_at > LATE:
                bucket.late(now - granted_at)
            if done:
                self.flights.append((now, pairs[i:i + done]))
            self._read()
            if failed or done < granted:
                self.why = "refused" if failed else self.why
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
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return


def _sources(blocks: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int]] | None:
    """(segment starts, source word sums) for the addresses of `blocks`, a segment for each
    route inside them as the sweep's route plan cuts them (`discovery.route.plan`), or None
    where that plan would not be exact (policy rules, a table too large, no route)."""
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
    for first, last in blocks:
        edges = routetable.cuts(table, first, last)
        for k, start in enumerate(edges):
            end = edges[k + 1] - 1 if k + 1 < len(edges) else last
            source = routetable.source_of(routetable.best_route(table, start), start, end)
            if not source:
                return None
            starts.append(start)
            sums.append(word_sum(source))
    return starts, sums
