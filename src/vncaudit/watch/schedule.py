"""When a monitor's next cycle is due: a fixed period (``6h``) or a cron expression.

Owns: parsing durations ("90s", "30m", "6h", "1d", "2w", "1h30m") and schedules, and the time
of the next cycle after the last one. Cron expressions are evaluated by `cronsim` in the
machine's local time zone. Must not: sleep, read the store or run anything.

A period counts from the start of the last cycle, so a 6 h monitor whose cycle takes 10 min
still starts every 6 h; a cycle that overran its period (or a watcher that was stopped) is
run once, right away, never several times to catch up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from vncaudit.exceptions import UsageError

if TYPE_CHECKING:
    from cronsim import CronSim

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
MIN_PERIOD = 1.0  # seconds; a shorter period is a typo, not a schedule
MAX_PERIOD = 366 * 86400.0


class ScheduleError(UsageError):
    """A duration or schedule that cannot be read; the message is one line."""


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``6h``, ``1d``, ``2w`` or ``1h30m``."""
    cleaned = text.strip().lower()
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(cleaned):
        if cleaned[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not cleaned or pos == 0 or cleaned[pos:].strip():
        raise ScheduleError(f"{what} {text!r} is not a duration; write a number and a unit "
                            "(s, m, h, d, w), e.g. 90s, 30m, 6h, 1d or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: 21600 -> "6h", 5400 -> "1h30m"."""
    if seconds <= 0:
        return "0s"
    rest = round(seconds)
    parts: list[str] = []
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or f"{seconds:g}s"


@dataclass(frozen=True)
class Schedule:
    """Either `every` seconds, or a 5-field `cron` expression (exactly one is set)."""

    every: float | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ScheduleError("a schedule is either a period (every) or a cron expression")
        if self.every is not None and not MIN_PERIOD <= self.every <= MAX_PERIOD:
            raise ScheduleError(f"period {format_duration(self.every)} is out of range; "
                                f"use {MIN_PERIOD:g}s to 366d")
        if self.cron is not None:
            _cron(self.cron)  # validated now, not at the first cycle

    @classmethod
    def parse(cls, every: str | None = None, cron: str | None = None) -> Schedule:
        if every is not None and cron is not None:
            raise ScheduleError("give either every or cron, not both")
        if cron is not None:
            return cls(cron=" ".join(cron.split()))
        if every is None:
            raise ScheduleError("no schedule: give every (e.g. 6h) or cron")
        return cls(every=parse_duration(every, "period"))

    def next_after(self, last_start: datetime | None, now: datetime) -> datetime:
        """When the next cycle is due: `now` for a monitor that never ran or is overdue."""
        if self.every is not None:
            if last_start is None:
                return now
            return max(last_start + timedelta(seconds=self.every), now)
        assert self.cron is not None
        if last_start is None:
            return now
        due = next(_cron(self.cron, last_start.astimezone())).astimezone(UTC)
        return max(due, now)

    def describe(self) -> str:
        return f"every {format_duration(self.every)}" if self.every is not None \
            else f"cron {self.cron}"


def _cron(expression: str, start: datetime | None = None) -> CronSim:
    from cronsim import CronSim, CronSimError

    try:
        return CronSim(expression, start or datetime.now().astimezone())
    except CronSimError as exc:
        raise ScheduleError(f"cron expression {expression!r}: {exc}") from None
