"""Time for the ledger: each entry keeps the wall clock and, within one boot, CLOCK_BOOTTIME.

Owns: `Instant`, `Clock` and the arithmetic on instants (`elapsed`, `clock_jump`). Within one
boot the boot clock decides, so an age or an ordering survives the wall clock jumping either
way; across boots only a wall clock that went forward can tell. Must not: decide anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from vncaudit.admission import boot_id

CLOCK_SLACK: Final = 2.0  # seconds the wall and boot clocks may drift apart before it is a jump

@dataclass(frozen=True)
class Instant:
    """A moment by two clocks: the wall clock, and the time since boot of this boot."""

    wall: float
    boot: str = ""
    uptime: float | None = None

    def iso(self) -> str:
        return datetime.fromtimestamp(self.wall, UTC).isoformat(timespec="seconds")


class Clock:
    """The system's clocks. Tests may pass another object with the same `now()`."""

    def __init__(self) -> None:
        self.boot = boot_id()

    def now(self) -> Instant:
        uptime: float | None = None
        if self.boot and hasattr(time, "CLOCK_BOOTTIME"):
            uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
        return Instant(time.time(), self.boot, uptime)


def elapsed(earlier: Instant, later: Instant) -> float | None:
    """Seconds from `earlier` to `later`, or None when no clock can tell (another boot and a
    wall clock that went back). Within one boot the boot clock decides."""
    if earlier.boot and earlier.boot == later.boot and None not in (earlier.uptime,
                                                                     later.uptime):
        assert earlier.uptime is not None and later.uptime is not None
        return max(0.0, later.uptime - earlier.uptime)
    delta = later.wall - earlier.wall
    return delta if delta >= 0 else None


def clock_jump(earlier: Instant, later: Instant) -> float | None:
    """How far the wall clock jumped between two instants of the same boot (None: no jump,
    or no way to tell)."""
    if not earlier.boot or earlier.boot != later.boot or None in (earlier.uptime, later.uptime):
        return None
    assert earlier.uptime is not None and later.uptime is not None
    jump = (later.wall - earlier.wall) - (later.uptime - earlier.uptime)
    return jump if abs(jump) > CLOCK_SLACK else None




def process_start(pid: int) -> Instant | None:
    """When process `pid` of this host started, by both clocks (None: it cannot be read).
    The boot clock comes from /proc/PID/stat, so the comparison with a ledger entry of this
    boot survives the wall clock having jumped since."""
    import os

    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        uptime = ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    now_wall = time.time()
    now_up = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else None
    if now_up is None:
        return None
    return Instant(now_wall - (now_up - uptime), boot_id(), uptime)


def started_after(earlier: Instant, start: Instant) -> bool:
    """Whether a process that started at `start` (this boot) started after `earlier`: surely
    so when `earlier` belongs to another boot, else by the boot clock; False when no clock
    can tell (the safe answer: the server's tally is not assumed to be reset)."""
    if not start.boot:
        return False
    if earlier.boot and earlier.boot != start.boot:
        return True
    gap = elapsed(earlier, start)
    return gap is not None and gap > 0 and earlier.boot == start.boot
