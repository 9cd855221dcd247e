"""Running monitors: the schedule loop, the outbox worker beside it, recovery after a crash,
and the lock that lets one process at a time run the monitors of a store.

Owns: `Watcher` (`run_forever` for a service manager or `serve`, `run_once` for cron and
timers), `RunnerLock`, and the order of things at start-up: take the lock, record the
monitors, close cycles a dead process left running, evaluate finished cycles whose alerts
were never queued, then deliver what the outbox still holds. Must not: parse options, print
(status lines go out through `on_event`), or wait for a receiver: the outbox worker is its own
task, and a cycle only queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TextIO

from vncaudit.store import Store, StoreError
from vncaudit.watch.channels import Outcome
from vncaudit.watch.config import Monitor, WatchConfig, digests
from vncaudit.watch.cycle import CycleOutcome, evaluate_cycle, run_cycle
from vncaudit.watch.digest import Digest
from vncaudit.watch.outbox import Deliverer
from vncaudit.watch.records import Delivery, Message, MonitorDb

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0  # seconds between two retention passes of a long-running watcher


class RunnerBusyError(StoreError):
    """Another process already runs the monitors of this store."""


class RunnerLock:
    """An exclusive lock on ``<db>.monitors.lock`` while this process runs monitors (the
    file names the holder's pid). Released on close and by the kernel when the process
    dies, so a ``kill -9`` never leaves it held."""

    def __init__(self, db_path: Path | None) -> None:
        self.path = Path(str(db_path) + ".monitors.lock") if db_path is not None else None
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        if self.path is None:
            return
        try:
            fh = open(self.path, "a+", encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise RunnerBusyError(f"another vncaudit process ({holder}) runs the monitors of "
                                  f"this store; stop it first (lock: {self.path})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass(frozen=True)
class Event:
    """A status line for the operator (the CLI prints it on stderr, serve logs it)."""

    text: str
    monitor: str | None = None
    level: int = logging.INFO


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _digested(monitor: Monitor, queued: Sequence[Digest]) -> str:
    """"; more than 20: one digest to webhook:ops, email:a@b" (one part per threshold)."""
    parts = []
    for digest in queued:
        names = ", ".join(c.name for c in monitor.channels if digests(c)
                          and monitor.threshold_for(c) == digest.threshold)
        parts.append(f"; more than {digest.threshold}: one digest to {names}")
    return "".join(parts)


class Watcher:
    """Runs the monitors of `config` against one open `Store`."""

    def __init__(self, store: Store, config: WatchConfig, *,
                 on_event: Callable[[Event], None] | None = None,
                 on_cycle: Callable[[CycleOutcome], None] | None = None,
                 stdout: TextIO | None = None) -> None:
        self.store = store
        self.config = config
        self.db = MonitorDb(store)
        self.deliverer = Deliverer(self.db, config.channels(), stdout=stdout,
                                   on_outcome=self._delivery)
        self.on_event = on_event
        self.on_cycle = on_cycle
        self.runner = f"pid {os.getpid()} on {socket.gethostname()}"
        self.lock = RunnerLock(store.path)
        self.running: dict[str, str] = {}  # monitor -> scan id of the cycle running now
        self._last_prune = 0.0
        self._kick: asyncio.Event | None = None
        self._requested: set[str] = set()

    def _say(self, text: str, monitor: str | None = None, level: int = logging.INFO) -> None:
        log.log(level, "%s", text)
        if self.on_event is not None:
            self.on_event(Event(text, monitor, level))

    def _delivery(self, delivery: Delivery, alert: Message, outcome: Outcome) -> None:
        if outcome.delivered:
            return
        if delivery.state == "failed":
            self._say(f"{alert.monitor}: {alert.label} to {delivery.channel} "
                      f"failed for good: {outcome.error}", alert.monitor, logging.ERROR)
            return
        wait = max(delivery.next_attempt - time.time(), 0)
        self._say(f"{alert.monitor}: {alert.label} to {delivery.channel} not "
                  f"delivered (try {delivery.attempts}, next in {wait:.0f} s): "
                  f"{outcome.error}", alert.monitor, logging.WARNING)

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the lock, record the monitors, recover what a dead process left."""
        self.lock.acquire()
        try:
            for monitor in self.config.monitors:
                self.db.register(monitor)
                for scan_id in self.db.abandon_running(monitor.name):
                    self._say(f"{monitor.name}: cycle {scan_id} was cut short by a stop; "
                              "marked interrupted", monitor.name, logging.WARNING)
                for cycle in self.db.unevaluated(monitor.name):
                    _, alerts, queued = evaluate_cycle(self.store, self.db, monitor,
                                                       cycle.scan_id)
                    self._say(f"{monitor.name}: cycle {cycle.scan_id} evaluated after a "
                              f"restart: {_count(len(alerts), 'alert')} queued"
                              f"{_digested(monitor, queued)}", monitor.name)
        except BaseException:
            self.lock.release()
            raise

    def stop(self) -> None:
        self.lock.release()

    # -- cycles --------------------------------------------------------------------------------

    async def cycle(self, monitor: Monitor) -> CycleOutcome:
        """One cycle now; its alerts are queued and the outbox worker woken."""
        self._say(f"{monitor.name}: cycle started ({monitor.describe()})", monitor.name)
        self.running[monitor.name] = "starting"
        try:
            outcome = await run_cycle(self.store, self.db, monitor)
        finally:
            self.running.pop(monitor.name, None)
        self.deliverer.wake()
        if outcome.status == "finished":
            base = (f"compared with {outcome.previous_scan_id}" if outcome.previous_scan_id
                    else "first cycle")
            self._say(f"{monitor.name}: cycle {outcome.scan_id} finished in "
                      f"{outcome.elapsed:.1f} s, {_count(outcome.probed, 'port')}, "
                      f"{_count(outcome.services, 'VNC service')}, "
                      f"{_count(len(outcome.alerts), 'alert')} ({base})"
                      f"{_digested(monitor, outcome.digests)}", monitor.name)
        else:
            self._say(f"{monitor.name}: cycle {outcome.scan_id or '(not started)'} "
                      f"{outcome.status}: {outcome.error}", monitor.name, logging.ERROR)
        if self.on_cycle is not None:
            self.on_cycle(outcome)
        return outcome

    def next_due(self, monitor: Monitor, now: datetime) -> datetime:
        last = self.db.last_cycle(monitor.name)
        started = datetime.fromisoformat(last.started) if last is not None else None
        return monitor.schedule.next_after(started, now)

    def monitor_names(self) -> set[str]:
        return {m.name for m in self.config.monitors}

    def request(self, name: str) -> bool:
        """Run this monitor's next cycle now (the web's "run now"); False if unknown."""
        if name not in {m.name for m in self.config.monitors}:
            return False
        self._requested.add(name)
        if self._kick is not None:
            self._kick.set()
        return True

    async def run_forever(self) -> None:
        """Cycles on schedule, deliveries beside them, until cancelled."""
        self._kick = asyncio.Event()
        delivery = asyncio.create_task(self.deliverer.run(), name="outbox")
        try:
            while True:
                now = datetime.now(UTC)
                dues = {m.name: self.next_due(m, now) for m in self.config.monitors}
                for m in self.config.monitors:
                    self.db.set_next_due(m.name, dues[m.name], self.runner)
                ready = [m for m in self.config.monitors
                         if dues[m.name] <= now or m.name in self._requested]
                if not ready:
                    wait = min((d - now).total_seconds() for d in dues.values())
                    self._kick.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(wait, 0.05)):
                            await self._kick.wait()
                    continue
                monitor = min(ready, key=lambda m: dues[m.name])
                self._requested.discard(monitor.name)
                await self.cycle(monitor)
                self._retention()
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery

    async def run_once(self, deliver_within: float = 60.0) -> list[CycleOutcome]:
        """One cycle of every monitor, then deliver (retrying for up to `deliver_within`
        seconds); what is still undelivered stays queued for the next run."""
        outcomes = [await self.cycle(m) for m in self.config.monitors]
        now = datetime.now(UTC)
        for m in self.config.monitors:
            self.db.set_next_due(m.name, self.next_due(m, now), self.runner)
        await self.deliverer.drain(deliver_within)
        self._retention(force=True)
        return outcomes

    async def deliver_pending(self, within: float) -> int:
        return await self.deliverer.drain(within)

    def _retention(self, force: bool = False) -> None:
        if self.config.retention is None:
            return
        if not force and time.monotonic() - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = time.monotonic()
        from vncaudit.watch.prune import prune

        try:
            report = prune(self.store, self.config.retention)
        except StoreError as exc:
            self._say(f"retention: {exc}", level=logging.WARNING)
            return
        if report.scans:
            self._say(f"retention: {report.describe()}")
