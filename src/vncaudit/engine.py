"""Run the pipeline: targets → probe → (assess) → results, concurrently and bounded.

Owns: concurrency (a fixed pool of workers pulling from a lazy target iterator, so memory stays
flat whatever the range), the optional rate limit on new connections, progress callbacks, and
the synchronous public `scan()` entry point. Must not: parse RFB, render output, or import
rich/typer (progress goes out through a callback; the CLI draws it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

from vncaudit.models import ServiceResult, State, Target
from vncaudit.probe import ProbeOptions, probe

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 512


@dataclass(frozen=True)
class ScanOptions:
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None  # new connections per second; None = as fast as concurrency allows
    probe: ProbeOptions = field(default_factory=ProbeOptions)
    # Runs after each probe (opt-in active checks, VNC-over-web); must never raise.
    post_probe: Callable[[ServiceResult], Awaitable[ServiceResult]] | None = None


@dataclass
class Progress:
    """Counters the engine updates as results arrive; read by progress callbacks."""

    total: int | None = None
    done: int = 0
    vnc: int = 0
    open: int = 0  # anything that accepted a connection

    def add(self, result: ServiceResult) -> None:
        self.done += 1
        if result.state in (State.VNC, State.BLACKLISTED):
            self.vnc += 1
        if result.state not in (State.CLOSED, State.FILTERED):
            self.open += 1


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class _RateLimiter:
    """Spaces connection starts evenly; with no rate it never waits."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(self.next_at, now)
        self.next_at = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


async def iter_results(
    targets: Iterable[Target],
    options: ScanOptions | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[ServiceResult]:
    """Probe every target; yield results as they complete (in completion order)."""
    options = options or ScanOptions()
    limit = raise_fd_limit()
    # Leave room for the store, logs and the event loop itself.
    concurrency = max(1, min(options.concurrency, max(1, limit - 64)))
    source: Iterator[Target] = iter(targets)
    queue: asyncio.Queue[ServiceResult | None] = asyncio.Queue(maxsize=concurrency * 2)
    limiter = _RateLimiter(options.rate)

    async def worker() -> None:
        for target in source:  # a shared iterator: each target goes to one worker
            await limiter.wait()
            result = await probe(target, options.probe)
            if options.post_probe is not None:
                result = await options.post_probe(result)
            await queue.put(result)

    async def all_workers() -> None:
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        except asyncio.CancelledError:
            raise  # the consumer cancelled us; it needs no end marker
        except BaseException:
            await queue.put(None)
            raise
        await queue.put(None)

    runner = asyncio.create_task(all_workers())
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if progress is not None:
                progress.add(item)
            yield item
        await runner  # re-raise a worker's unexpected error instead of losing it
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def scan_async(
    targets: Iterable[Target],
    options: ScanOptions | None = None,
    on_result: Callable[[ServiceResult], None] | None = None,
    progress: Progress | None = None,
    assess_results: bool = True,
) -> list[ServiceResult]:
    """Probe all targets and return the results (assessed when `assess_results`)."""
    grade = _assessor() if assess_results else None
    results: list[ServiceResult] = []
    async for result in iter_results(targets, options, progress):
        if grade is not None:
            result = grade(result)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _assessor() -> Callable[[ServiceResult], ServiceResult] | None:
    # Imported lazily: grading is optional at this layer and must not slow plain probing.
    try:
        module = importlib.import_module("vncaudit.assess")
    except ImportError:
        return None
    grade: Callable[[ServiceResult], ServiceResult] = module.assess
    return grade


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
    return asyncio.run(
        scan_async(space.iter_targets(), options, assess_results=assess_results)
    )
