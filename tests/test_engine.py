"""The engine: every target yields exactly one result, concurrency is bounded, input is lazy."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import replace

from vncaudit.engine import Progress, ScanOptions, iter_results, scan_async
from vncaudit.models import ServiceResult, State, Target
from vncaudit.probe import ProbeOptions


async def _rfb_server(types: bytes, active: list[int], peak: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            writer.write(b"RFB 003.008\n")
            await reader.readexactly(12)
            await asyncio.sleep(0.05)  # hold the slot so overlapping probes are visible
            writer.write(types)
            await writer.drain()
            await reader.read(1)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            active[0] -= 1
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_each_target_one_result_and_concurrency_bounded() -> None:
    async def run() -> tuple[list[object], int, Progress]:
        active, peak = [0], [0]
        server = await _rfb_server(b"\x01\x02", active, peak)
        port = server.sockets[0].getsockname()[1]
        closed = _closed_port()
        targets = [Target("127.0.0.1", port) for _ in range(40)] + [Target("127.0.0.1", closed)]
        progress = Progress(total=len(targets))
        async with server:
            results = await scan_async(
                targets, ScanOptions(concurrency=8, probe=ProbeOptions(timeout=3)),
                progress=progress, assess_results=False,
            )
        return list(results), peak[0], progress

    results, peak, progress = asyncio.run(run())
    assert len(results) == 41
    states = [r.state for r in results]  # type: ignore[attr-defined]
    assert states.count(State.VNC) == 40 and states.count(State.CLOSED) == 1
    assert 1 < peak <= 8
    assert (progress.done, progress.vnc, progress.open) == (41, 40, 40)


def test_targets_are_pulled_lazily() -> None:
    pulled = [0]
    closed = _closed_port()

    def endless() -> Iterator[Target]:
        while True:
            pulled[0] += 1
            yield Target("127.0.0.1", closed)

    async def run() -> int:
        seen = 0
        async for _ in iter_results(endless(), ScanOptions(concurrency=4)):
            seen += 1
            if seen == 10:
                break
        return seen

    assert asyncio.run(run()) == 10
    # Only what the workers had in hand was taken from the iterator, not the whole stream.
    assert pulled[0] < 30


def test_rate_limit_spaces_connections() -> None:
    closed = _closed_port()

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        targets = [Target("127.0.0.1", closed) for _ in range(11)]
        async for _ in iter_results(targets, ScanOptions(concurrency=50, rate=50)):
            pass
        return loop.time() - start

    elapsed = asyncio.run(run())
    assert elapsed >= 0.18  # 11 starts at 50/s need at least 10 intervals of 20 ms


def test_lean_gc_is_restored_nests_and_still_collects_cycles() -> None:
    import gc
    import weakref

    from vncaudit.engine import LEAN_GC_THRESHOLD, lean_gc

    before = gc.get_threshold()

    class Node:
        other: object = None

    with lean_gc():
        assert gc.get_threshold() == LEAN_GC_THRESHOLD
        assert gc.get_freeze_count() > 0
        with lean_gc():  # nested: the inner exit must not restore early
            pass
        assert gc.get_threshold() == LEAN_GC_THRESHOLD
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle made during the scan
        ref = weakref.ref(a)
        del a, b
        for _ in range(3):
            gc.collect()
        assert ref() is None  # still collected
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_stopping_early_closes_the_probes_in_flight() -> None:
    """A consumer that stops ends the scan: the handshakes still in flight are closed at once,
    not left open until their deadlines."""

    async def run() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        opened, closed = [0], [0]
        all_closed = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            opened[0] += 1
            writer.write(b"RFB 003.008\n")
            try:
                await reader.read()  # until the probe's side goes away
            except ConnectionError:
                pass
            finally:
                closed[0] += 1
                if closed[0] == 3:
                    all_closed.set()
                writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        targets = [Target("127.0.0.1", port) for _ in range(3)]
        async with server:
            results = iter_results(targets, ScanOptions(probe=ProbeOptions(timeout=10)))
            waiting = asyncio.create_task(anext(results))
            started = loop.time()
            while opened[0] < 3 and loop.time() - started < 5:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the probes have read the banner and answered it
            stopped = loop.time()
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            await asyncio.wait_for(all_closed.wait(), 5)
            return opened[0], loop.time() - stopped

    opened, seconds = asyncio.run(run())
    assert opened == 3
    assert seconds < 1.0


def test_post_probe_runs_only_for_the_results_it_wants() -> None:
    """`post_probe_wanted` says which results the post-probe step has work for: the others
    come out as the probe left them, the wanted ones as the step returns them."""
    seen: list[tuple[str, int]] = []

    async def post(result: ServiceResult) -> ServiceResult:
        seen.append((result.host, result.port))
        await asyncio.sleep(0)  # a step that waits, as a real one does
        return replace(result, error="post-probed")

    async def run() -> tuple[list[ServiceResult], int]:
        active, peak = [0], [0]
        one = await _rfb_server(b"\x01\x02", active, peak)
        two = await _rfb_server(b"\x01\x02", active, peak)
        port, wanted = (s.sockets[0].getsockname()[1] for s in (one, two))
        targets = [Target("127.0.0.1", port) for _ in range(6)] + [Target("127.0.0.1", wanted)]
        options = ScanOptions(concurrency=4, probe=ProbeOptions(timeout=3), post_probe=post,
                              post_probe_wanted=lambda r: r.port == wanted)
        async with one, two:
            return [r async for r in iter_results(targets, options)
                    if isinstance(r, ServiceResult)], wanted

    results, wanted = asyncio.run(run())
    assert len(results) == 7 and all(r.state is State.VNC for r in results)
    plain = [r for r in results if r.port != wanted]
    chosen = [r for r in results if r.port == wanted]
    assert len(plain) == 6 and all(r.error is None for r in plain)
    assert len(chosen) == 1 and chosen[0].error == "post-probed"
    assert seen == [("127.0.0.1", wanted)]
