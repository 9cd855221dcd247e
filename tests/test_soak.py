"""Whole-scan soak: the engine scans every port of the hostile farm 20 times in one event loop.

After each pass: open fds are back to the baseline (/proc/self/fd), no asyncio task is left
behind, every target gave exactly one result. Over the run: RSS grows less than 10% after the
warm-up pass. The farm is a child process, so every number here is the scanner's own.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter

import psutil
import pytest

from vncaudit.engine import ScanOptions, iter_results
from vncaudit.models import State, Target
from vncaudit.probe import ProbeOptions

from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

PASSES = 20
TIMEOUT = 1.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(180)
def test_soak_whole_farm(hostile_farm: Farm) -> None:  # noqa: F811
    targets = [Target(hostile_farm.host, port) for port in hostile_farm.ports.values()]
    options = ScanOptions(concurrency=64, probe=ProbeOptions(timeout=TIMEOUT))
    process = psutil.Process()

    async def one_pass() -> Counter[State]:
        states: Counter[State] = Counter()
        ports = []
        async for result in iter_results(targets, options):
            states[result.state] += 1
            ports.append(result.port)
        assert sorted(ports) == sorted(t.port for t in targets)  # one result per target
        await asyncio.sleep(0.05)  # let closed transports run their connection_lost callbacks
        return states

    async def soak() -> dict[str, object]:
        me = asyncio.current_task()
        await one_pass()  # warm-up: the loop's selector, resolver threads, imports
        gc.collect()
        fds, rss0 = open_fds(), process.memory_info().rss
        started = time.monotonic()
        fd_counts, states = [], Counter[State]()
        for _ in range(PASSES):
            states.update(await one_pass())
            assert asyncio.all_tasks() == {me}, asyncio.all_tasks()
            fd_counts.append(open_fds())
        gc.collect()
        return {"fds": fds, "fd_counts": fd_counts, "rss0": rss0,
                "rss1": process.memory_info().rss, "states": states,
                "seconds": time.monotonic() - started}

    got = asyncio.run(soak())
    assert got["fd_counts"] == [got["fds"]] * PASSES, got
    rss0, rss1 = got["rss0"], got["rss1"]
    assert isinstance(rss0, int) and isinstance(rss1, int)
    assert rss1 < rss0 * 1.10, f"RSS grew from {rss0} to {rss1}"
    states = got["states"]
    assert isinstance(states, Counter)
    # Classes as in test_hostile; "every-other" alternates between vnc and tarpit.
    assert dict(states) == {State.VNC: 12 * PASSES + PASSES // 2, State.MALFORMED: 9 * PASSES,
                            State.OPEN_NOT_VNC: 4 * PASSES, State.TARPIT: 2 * PASSES + PASSES // 2}
    print(f"soak: {PASSES} passes x {len(targets)} targets in {got['seconds']:.1f} s, "
          f"fds {got['fds']} -> {got['fd_counts'][-1]}, RSS {rss0 / 2**20:.1f} -> "  # type: ignore[index]
          f"{rss1 / 2**20:.1f} MiB ({(rss1 - rss0) / rss0:+.1%}), states {dict(states)}")
