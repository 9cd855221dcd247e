"""Run the pipeline: targets → discovery → probe → (assess) → results, concurrently and bounded.

Owns: the pipeline between a lazy target iterator and the caller. A discovery sweep
(`vncaudit.discovery`: `connect` or `syn`) finds the pairs that answer, cheaply; only those go
to the full RFB probe (`vncaudit.probe.TcpProbe`, a protocol on the loop, no task of its own),
whose deadline starts when its connection exists (connect mode hands over the connected
socket: still one connection per port). Silent and
refused pairs end as `filtered` / `closed` results straight from discovery, so every target
still yields exactly one result. Also: the socket budget (`concurrency`, within RLIMIT_NOFILE),
the probe slots, back-pressure from a slow consumer, progress counters, uvloop and the
collector's settings while a scan runs, and the synchronous public `scan()` entry point.

Why two stages: one task per target with one deadline lets a busy event loop eat a live
server's deadline while thousands of silent connects time out around it (measured: 177 of 300
found at concurrency 8192). Here a silent address costs a socket and a deque entry, not a task,
and a live one gets its whole deadline for the handshake.

Must not: parse RFB, render output, or import rich/typer (progress goes out through a callback;
the CLI draws it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from vncaudit import discovery
from vncaudit.basics import SILENT_STATES, State, Target
from vncaudit.discovery import DiscoveryOptions, Marks, Mode, raise_fd_limit
from vncaudit.exceptions import VncAuditError
from vncaudit.probe_options import ProbeOptions

if TYPE_CHECKING:
    from vncaudit.budget import Decision, Gate
    from vncaudit.models import ServiceResult
    from vncaudit.probe import TcpProbe

__all__ = ["DEFAULT_CONCURRENCY", "Progress", "ScanOptions", "iter_results", "lean_gc",
           "raise_fd_limit", "run", "scan", "scan_async", "settle_gc"]

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 512
DEFAULT_PROBE_SLOTS = 1024  # handshakes in flight; more only add loop latency to each deadline
RESULT_BACKLOG = 8192  # results waiting for the consumer before discovery pauses
FD_RESERVE = 64  # descriptors left for the store, logs and the event loop itself

T = TypeVar("T")


@dataclass(frozen=True)
class ScanOptions:
    concurrency: int = DEFAULT_CONCURRENCY  # sockets open at once (connects + handshakes)
    rate: float | None = None  # new connections (connect) / SYN packets (syn) per second
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    # Runs after each probe (opt-in active checks, VNC-over-web); must never raise.
    post_probe: Callable[[ServiceResult], Awaitable[ServiceResult]] | None = None
    # The results `post_probe` has work for (None: every one); the others are final as the
    # probe left them, without a task of their own.
    post_probe_wanted: Callable[[ServiceResult], bool] | None = None
    discovery: Mode = Mode.CONNECT
    retries: int | None = None  # extra attempts for silent pairs; None: the mode's default
    discovery_timeout: float | None = None  # wait for an answer; None: probe.timeout
    probe_slots: int | None = None  # handshakes at once; None: min(concurrency, 1024)

    def __post_init__(self) -> None:
        try:  # a mode given by name ("syn") is taken as the enum
            object.__setattr__(self, "discovery", Mode(self.discovery))
        except ValueError:
            from vncaudit.exceptions import UsageError

            raise UsageError(f"unknown discovery mode {self.discovery!r}; "
                             "use connect or syn") from None

    def discovery_options(self) -> DiscoveryOptions:
        timeout = self.discovery_timeout or self.probe.timeout
        return DiscoveryOptions(self.discovery, timeout, self.retries, self.rate)


@dataclass
class Progress:
    """Counters the engine updates as results arrive; read by progress callbacks."""

    total: int | None = None
    done: int = 0
    vnc: int = 0
    open: int = 0  # anything that accepted a connection
    live: int = 0  # pairs discovery found answering (probed or being probed)
    retried: int = 0  # extra discovery attempts for silent pairs
    syn: discovery.SynCounters | None = None  # the SYN sender's counters (--discovery syn)

    def add(self, result: ServiceResult) -> None:
        self.done += 1
        if result.state in (State.VNC, State.BLACKLISTED):
            self.vnc += 1
        if result.state not in SILENT_STATES:
            self.open += 1


@functools.cache
def tcp_probe() -> type[TcpProbe]:
    """`probe.TcpProbe`, imported for the first pair that answers: the probe, the RFB parser
    and the result types are not needed before the sweep's first packet."""
    from vncaudit.probe import TcpProbe

    return TcpProbe


class _Pipeline:
    """The sink of a discovery sweep: starts a probe for each live pair (at most `slots` at
    once, the rest wait with their connection open and their deadline not yet started), and
    queues every result for the consumer."""

    def __init__(self, options: ScanOptions, budget: int, progress: Progress | None,
                 gate: Gate | None = None, take_marks: bool = False) -> None:
        self.options = options
        self.take_marks = take_marks
        self.budget = budget
        self.gate = gate
        # syn mode: live pairs are admitted as they are found, a batch per turn of the loop.
        self.admit_found = False
        self.unadmitted: list[Target] = []
        self.admit_scheduled = False
        # Denied pairs a half-open SYN still checks (connect mode with raw-socket rights): a
        # SYN-ACK is answered with the facts read last, not with a probe.
        self.denied: dict[tuple[str, int], Decision] = {}
        self.binds: dict[tuple[str, int], str] = {}  # connect from another loopback address
        # connect mode with raw-socket rights: denied IPv4 pairs, checked with a half-open SYN
        # once the sweep is done (None: no such rights, they are answered at once).
        self.liveness: list[Target] | None = None
        self.slots = max(1, min(budget, options.probe_slots or DEFAULT_PROBE_SLOTS))
        self.progress = progress
        self.waiting: deque[tuple[Target, socket.socket | None]] = deque()
        # Probes in flight, and the post-probe steps after them (each holds a slot).
        self.probing: set[TcpProbe | asyncio.Task[None]] = set()
        self.results: deque[ServiceResult | Marks] = deque()
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None
        self.sweep: discovery.Sweep | None = None
        self.sweep_done = False  # the sweep (and the liveness check after it) has ended
        # syn: probes of pairs found while the SYN sender still sends wait (see `_holding`).
        self.hold_probes = False
        self.hold_limit = options.discovery_options().timeout / 2
        self.held_since: float | None = None  # loop time the waiting probes were first held
        self.hold_timer: asyncio.TimerHandle | None = None

    # -- Sink --------------------------------------------------------------------------------

    def found(self, target: Target, sock: socket.socket | None) -> None:
        if self.progress is not None:
            self.progress.live += 1
        if self.denied:
            decision = self.denied.pop((target.host, target.port), None)
            if decision is not None and self.gate is not None:
                if sock is not None:
                    sock.close()
                self.finished(self.gate.answer(decision, "open"))
                return
        if self.admit_found and sock is None and (target.host, target.port) not in self.binds:
            self.unadmitted.append(target)
            if not self.admit_scheduled and not self._holding():
                self.admit_scheduled = True
                asyncio.get_running_loop().call_soon(self._admit_found)
            return
        if self.gate is not None:
            self.gate.started(target)
        self.waiting.append((target, sock))
        self._dispatch()

    def _admit_found(self) -> None:
        """Ask the ledger about the pairs found live since the last turn of the loop (or held
        while the SYNs went out), at once."""
        self.admit_scheduled = False
        batch, self.unadmitted = self.unadmitted, []
        if not batch or self.gate is None:
            return
        try:
            decisions = self.gate.admit(batch)
        except Exception as exc:  # the consumer re-raises it instead of waiting forever
            self.failure = self.failure or exc
            self.ready.set()
            return
        for target, decision in zip(batch, decisions, strict=True):
            if decision is not None and not decision.allowed:
                # A SYN-ACK answered our half-open SYN: the port is there now.
                self.finished(self.gate.answer(decision, "open" if _ipv4(target.host)
                                               else None))
                continue
            if decision is not None and decision.bind is not None:
                self.binds[(target.host, target.port)] = decision.bind
            self.gate.started(target)
            self.waiting.append((target, None))
        self._dispatch()
        self.ready.set()

    def finished(self, result: ServiceResult) -> None:
        if self.denied:
            self.denied.pop((result.host, result.port), None)  # closed/filtered now: a fact
        self.results.append(result)
        self.ready.set()

    def finished_marks(self, marks: Marks) -> None:
        if self.take_marks:
            self.results.append(marks)
        else:
            self.results.extend(marks.results())
        self.ready.set()

    def room(self) -> int:
        if len(self.results) >= RESULT_BACKLOG or self.failure is not None:
            return 0
        return self.budget - len(self.waiting) - len(self.unadmitted) - len(self.probing)

    # -- probes ------------------------------------------------------------------------------

    def sent_all(self) -> None:
        """From the SYN sweep: every SYN is out; the probes held back may start."""
        self.hold_probes = False
        self._release()

    def last_window(self) -> None:
        """From the SYN sweep: no SYN is left to send, retries included; the consumer looks
        whether only the window of late answers is left (`iter_results`' `on_idle`)."""
        self.ready.set()

    def _holding(self) -> bool:
        """Whether the live pairs found wait a little longer before they are admitted and
        probed. While the SYN sender sends, the ledger's and the handshakes' CPU (on the event
        loop's thread, holding the GIL) slows it down, and every pair still to be sent gets
        its verdict one window after its SYN: a probe started after the last SYN still ends
        within that window. So they wait until then, but never longer than half a window, and
        never so many that the sender would run out of room (`room`)."""
        sweep = self.sweep
        if not self.hold_probes or sweep is None or not getattr(sweep, "sending", False):
            return False
        if len(self.waiting) + len(self.unadmitted) >= self.budget - self.budget // 8:
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.held_since is None:
            self.held_since = now
        limit = self.held_since + self.hold_limit
        if now >= limit:
            return False
        if self.hold_timer is None:
            self.hold_timer = loop.call_at(limit, self._hold_over)
        return True

    def _hold_over(self) -> None:
        self.hold_timer = None
        self._release()

    def _release(self) -> None:
        if self.unadmitted and not self.admit_scheduled:
            self._admit_found()
        else:
            self._dispatch()

    def _dispatch(self) -> None:
        if self.waiting and self._holding():
            return
        if not self.unadmitted:
            self.held_since = None  # nothing held now: the next pair found starts a new wait
        probing, waiting, options = self.probing, self.waiting, self.options.probe
        while waiting and len(probing) < self.slots:
            target, sock = waiting.popleft()
            source = self.binds.pop((target.host, target.port), None) if self.binds else None
            run = tcp_probe()(target, options, self._probe_done)
            probing.add(run)
            run.start(sock, source)

    def _probe_done(self, run: TcpProbe) -> None:
        wanted = self.options.post_probe_wanted
        if (run.failure is not None or self.options.post_probe is None
                or (wanted is not None and run.result is not None and not wanted(run.result))):
            self.probing.discard(run)
            if run.failure is not None:
                self.failure = self.failure or run.failure
            else:
                assert run.result is not None
                self.finished(run.result)
            self._next()
            return
        # The post-probe step holds the slot: it may open connections of its own.
        task = asyncio.create_task(self._post_probe(run))
        self.probing.add(task)
        self.probing.discard(run)
        task.add_done_callback(self._post_probe_done)

    async def _post_probe(self, run: TcpProbe) -> None:
        assert run.result is not None and self.options.post_probe is not None
        self.finished(await self.options.post_probe(run.result))

    def _post_probe_done(self, task: asyncio.Task[None]) -> None:
        self.probing.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
        self._next()

    def _next(self) -> None:
        """A slot is free: start the next probe, let the sweep go on, wake the consumer (it
        may be waiting for the pipeline to go idle)."""
        self._dispatch()
        self._wake_sweep()
        self.ready.set()

    def _wake_sweep(self) -> None:
        if self.sweep is not None:
            self.sweep.wake()

    # -- consumer ----------------------------------------------------------------------------

    def take(self) -> ServiceResult | Marks | None:
        if not self.results:
            return None
        result = self.results.popleft()
        if len(self.results) == RESULT_BACKLOG - 1:
            self._wake_sweep()
        return result

    def idle(self) -> bool:
        return not self.waiting and not self.probing and not self.unadmitted

    async def close(self) -> None:
        if self.hold_timer is not None:
            self.hold_timer.cancel()
        running = list(self.probing)
        for item in running:
            item.cancel()
        for item in running:
            if isinstance(item, asyncio.Task):
                with contextlib.suppress(BaseException):
                    await item
        self.probing.clear()
        while self.waiting:
            _, sock = self.waiting.popleft()
            if sock is not None:
                sock.close()


def _gated(targets: Iterable[Target], gate: Gate, pipeline: _Pipeline) -> Iterator[Target]:
    """connect mode: the targets the connection ledger lets discovery see (its connect is the
    probe's connection), admitted a batch at a time. A denied pair never reaches discovery:
    its result is the ledger's answer, after a half-open SYN where this process may send one.
    A pair to be connected from another loopback address skips discovery, which cannot bind:
    the probe connects."""
    from vncaudit.budget import GATE_BATCH

    source = iter(targets)
    while batch := list(islice(source, GATE_BATCH)):
        for target, decision in zip(batch, gate.admit(batch), strict=True):
            if decision is None or (decision.allowed and decision.bind is None):
                yield target
            elif decision.allowed:
                assert decision.bind is not None
                pipeline.binds[(target.host, target.port)] = decision.bind
                pipeline.found(target, None)
            elif pipeline.liveness is not None and _ipv4(target.host):
                pipeline.denied[(target.host, target.port)] = decision
                pipeline.liveness.append(target)
            else:
                pipeline.finished(gate.answer(decision))


def _raw_sockets() -> bool:
    """Whether this process may send a half-open SYN (root, or CAP_NET_RAW)."""
    try:
        discovery.check_syn_allowed()
    except VncAuditError:
        return False
    return True


def _ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


async def iter_results(
    targets: Iterable[Target],
    options: ScanOptions | None = None,
    progress: Progress | None = None,
    on_marks: Callable[[Marks], None] | None = None,
    gate: Gate | None = None,
    on_idle: Callable[[], None] | None = None,
) -> AsyncIterator[ServiceResult]:
    """Discover and probe every target; yield one result per target as each completes.

    `on_marks`: closed and filtered verdicts that discovery gives in bulk (a SYN sweep's silent
    pairs) go there as `Marks`, in order with the rest, instead of one result each.

    `gate`: the connection ledger (`vncaudit.budget`). Every connection is admitted first and
    every result recorded; a denied pair's result is the ledger's answer (the facts read last,
    with their age). connect: targets are admitted before discovery, whose connect counts.
    syn: the SYN counts for no server, so live pairs are admitted as they are found. Without
    a gate nothing is counted.

    `on_idle`: called once, on the loop, when a SYN sweep has sent every SYN (retries too)
    and no probe is running or waiting, so that only its last window of late answers is left
    (seconds with nothing to do): the caller's moment for work its end would otherwise wait
    for. Then, under `lean_gc`, what exists is frozen too (`settle_gc`)."""
    options = options or ScanOptions()
    limit = raise_fd_limit()
    budget = max(1, min(options.concurrency, max(1, limit - FD_RESERVE)))
    pipeline = _Pipeline(options, budget, progress, gate, take_marks=on_marks is not None)
    discovery_options = options.discovery_options()
    sweep = _make_sweep(targets, pipeline, discovery_options, gate)
    if progress is not None:
        progress.syn = getattr(sweep, "counters", None)
    delivery = _Delivery(sweep, progress, on_marks, gate)
    runner = asyncio.create_task(_run_sweeps(pipeline, sweep, discovery_options, progress))
    idled = False
    try:
        while True:
            taken = pipeline.take()
            if taken is None:
                if not idled and _waits_for_answers_only(pipeline, sweep):
                    idled = True
                    if on_idle is not None:
                        on_idle()
                    settle_gc()
                if await _wait_for_more(pipeline, runner):
                    break
                continue
            result = delivery.deliver(taken)
            if result is not None:
                yield result
        await runner
    finally:
        await _shut_down(pipeline, runner, gate)


def _make_sweep(targets: Iterable[Target], pipeline: _Pipeline,
                discovery_options: DiscoveryOptions, gate: Gate | None) -> discovery.Sweep:
    """The discovery sweep over `targets`, with the ledger's part set up on the pipeline:
    syn admits live pairs as they are found; connect admits targets before discovery and,
    with raw-socket rights, keeps denied IPv4 pairs for a half-open check."""
    if gate is not None:
        if discovery_options.mode is Mode.SYN:
            pipeline.admit_found = True
        else:
            if _raw_sockets():
                pipeline.liveness = []
            targets = _gated(targets, gate, pipeline)
    sweep = discovery.make_sweep(targets, pipeline, discovery_options)
    pipeline.sweep = sweep
    pipeline.hold_probes = discovery_options.mode is Mode.SYN
    return sweep


async def _run_sweeps(pipeline: _Pipeline, sweep: discovery.Sweep,
                      discovery_options: DiscoveryOptions, progress: Progress | None) -> None:
    """Run the sweep, then the half-open liveness check of denied pairs, if any; mark the
    pipeline's sweeps done whatever happens, so the consumer stops waiting."""
    try:
        await sweep.run()
        if pipeline.liveness:
            # Liveness without a mark: a SYN never completed reaches no server's accept().
            check = discovery.make_sweep(pipeline.liveness, pipeline, DiscoveryOptions(
                Mode.SYN, discovery_options.timeout, None, discovery_options.rate))
            pipeline.sweep = check
            await check.run()
    finally:
        pipeline.sweep_done = True
        if progress is not None:
            progress.retried = sweep.retried
        pipeline.ready.set()


@dataclass(frozen=True)
class _Delivery:
    """What the consumer does with each item the pipeline gives: marks go to `on_marks`,
    results are settled with the ledger and counted before they are yielded."""

    sweep: discovery.Sweep
    progress: Progress | None
    on_marks: Callable[[Marks], None] | None
    gate: Gate | None

    def deliver(self, taken: ServiceResult | Marks) -> ServiceResult | None:
        """The result to yield, or None when `taken` were marks (handed to `on_marks`)."""
        if isinstance(taken, Marks):
            if self.progress is not None:
                self.progress.done += len(taken)
            assert self.on_marks is not None
            self.on_marks(taken)
            return None
        result = taken if self.gate is None else self.gate.settle(taken)
        if self.progress is not None:
            self.progress.add(result)
            self.progress.retried = self.sweep.retried
        return result


def _waits_for_answers_only(pipeline: _Pipeline, sweep: discovery.Sweep) -> bool:
    """A SYN sweep has nothing left to send, not even a retry, and no probe runs or waits:
    what remains is its window of late answers."""
    return (not pipeline.sweep_done and pipeline.idle() and not pipeline.results
            and getattr(sweep, "answers_only", False))


async def _wait_for_more(pipeline: _Pipeline, runner: asyncio.Task[None]) -> bool:
    """Nothing to take now: raise what failed, return True when the scan is over, or wait
    for the pipeline's next event and return False."""
    if pipeline.failure is not None:
        raise pipeline.failure
    if runner.done() and runner.exception() is not None:
        await runner  # re-raise the sweep's error instead of losing it
    if pipeline.sweep_done and pipeline.idle():
        return not pipeline.results
    pipeline.ready.clear()
    await pipeline.ready.wait()
    return False


async def _shut_down(pipeline: _Pipeline, runner: asyncio.Task[None], gate: Gate | None) -> None:
    """Stop the sweep if it still runs, cancel the probes in flight, release the ledger."""
    if not runner.done():
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    await pipeline.close()
    if gate is not None:
        gate.close()


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (faster sockets and callbacks), with
    fewer garbage collections (`lean_gc`)."""
    with lean_gc():
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)


# Measured on 10,000 handshakes: with the default thresholds (700, 10, 10) the collector ran
# ~560 times and took 0.3-0.4 s of a 2.7 s scan, mostly walking what the imports left behind
# and the sockets in flight; frozen and at 50,000 it runs ~40 times for 0.02-0.06 s. Memory
# stays bounded: cycles are still collected, just in larger, rarer batches.
LEAN_GC_THRESHOLD = (50_000, 20, 10)
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, int, int] = (700, 10, 10)


@contextlib.contextmanager
def lean_gc() -> Iterator[None]:
    """While a scan runs: objects that exist now are moved out of the collector's way
    (`gc.freeze`) and young generations are collected less often. Restored afterwards; safe
    to nest and to enter from several threads (the first in sets, the last out restores)."""
    global _gc_users, _gc_saved
    with _gc_lock:
        if _gc_users == 0:
            _gc_saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*LEAN_GC_THRESHOLD)
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_saved)
                gc.unfreeze()


def settle_gc() -> None:
    """Under `lean_gc`: move what exists now out of the collector's way as well (what the scan
    imported and built since it started: the probe, grading, the report code), so that the
    collection the restored thresholds start at the end (~15 ms of young objects, measured
    on a /16 SYN run) has little to walk. Only for the one scan under `lean_gc` (scans that
    overlap, as the web service's jobs may, would keep each other's garbage frozen); else
    nothing."""
    with _gc_lock:
        if _gc_users == 1:
            gc.freeze()


async def scan_async(
    targets: Iterable[Target],
    options: ScanOptions | None = None,
    on_result: Callable[[ServiceResult], None] | None = None,
    progress: Progress | None = None,
    assess_results: bool = True,
    collect: bool = True,
    on_marks: Callable[[Marks], None] | None = None,
    gate: Gate | None = None,
) -> list[ServiceResult]:
    """Probe all targets and return the results (assessed when `assess_results`).

    `collect=False`: return [] and keep nothing; for callers that take each result through
    `on_result` (the CLI stores them), so memory stays flat on a large range. `on_marks`: see
    `iter_results` (those verdicts are then neither collected nor given to `on_result`).
    """
    grade: Callable[[ServiceResult], ServiceResult] | None = None
    results: list[ServiceResult] = []
    async for result in iter_results(targets, options, progress, on_marks, gate=gate):
        if assess_results and result.state not in SILENT_STATES:
            # Imported with the first result to grade, not before the first packet.
            grade = grade or _assessor()
            result = grade(result)
        if collect:
            results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _assessor() -> Callable[[ServiceResult], ServiceResult]:
    # Imported here: a scan that does not grade does not pay for loading the rules and data.
    from vncaudit.assess import assess

    return assess


def scan(
    targets: str | Iterable[str],
    ports: str | None = None,
    *,
    timeout: float = 5.0,
    concurrency: int = DEFAULT_CONCURRENCY,
    assess_results: bool = True,
) -> list[ServiceResult]:
    """Scan targets (IPs, CIDRs, ranges, hostnames) on VNC ports; the library entry point.

    >>> results = scan("127.0.0.1", "5900-5910")  # doctest: +SKIP
    """
    from vncaudit.targets import DEFAULT_PORTS, build_target_space, parse_ports

    expressions = [targets] if isinstance(targets, str) else list(targets)
    space = build_target_space(expressions, parse_ports(ports or DEFAULT_PORTS))
    options = ScanOptions(concurrency=concurrency, probe=ProbeOptions(timeout=timeout))
    return run(scan_async(space.iter_targets(), options, assess_results=assess_results))
