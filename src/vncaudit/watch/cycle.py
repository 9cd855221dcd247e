"""One cycle of one monitor: an ordinary stored scan, linked to the monitor, then compared with
the monitor's previous cycle and its alerts queued in the outbox.

Owns: `run_cycle` (scan, record, evaluate) and `evaluate_cycle` (the diff between the
monitor's baseline and a finished cycle, turned into alerts by `alerts.evaluate` and committed
with `records.MonitorDb.commit_evaluation`). Must not: send anything (the outbox worker does),
parse options, or print.

A cycle that did not finish (interrupted, failed) is recorded but never evaluated and never
becomes a baseline: what it did not probe would otherwise look "gone" and then "newly
reachable" again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from vncaudit import __version__
from vncaudit.discovery import Mode
from vncaudit.exceptions import VncAuditError
from vncaudit.models import ServiceResult, State
from vncaudit.spec import ScanSpec
from vncaudit.store import ScanRecord, Store, default_db_path
from vncaudit.watch import digest as digesting
from vncaudit.watch.alerts import REACHABLE, Alert, Change, evaluate
from vncaudit.watch.config import Monitor, digests
from vncaudit.watch.digest import Digest
from vncaudit.watch.records import MonitorDb

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CycleOutcome:
    monitor: str
    scan_id: str
    status: str  # finished | interrupted | failed
    previous_scan_id: str | None
    alerts: tuple[Alert, ...]
    services: int
    probed: int
    elapsed: float
    error: str | None = None
    finished_at: float = 0.0  # time.time() when the cycle's alerts were queued
    scan_finished_at: float = 0.0  # time.time() when its scan ended (before evaluation)
    # queued in place of the alerts for webhook/e-mail channels: one per threshold reached
    digests: tuple[Digest, ...] = ()


def scan_spec(monitor: Monitor) -> ScanSpec:
    """The settings of a cycle's scan: an ordinary `ScanSpec`, so `results`, `diff` and the
    web pages read a cycle like any scan (its options also name the monitor)."""
    return ScanSpec(
        expressions=tuple(monitor.targets), ports=monitor.ports,
        excludes=tuple(monitor.excludes), timeout=monitor.scan.timeout,
        concurrency=monitor.scan.concurrency, rate=monitor.scan.rate,
        discovery=Mode(monitor.scan.discovery), retries=monitor.scan.retries, web=False)


def target_space(monitor: Monitor) -> object:
    """The monitor's targets, checked (and host names resolved) now; `UsageError` if bad."""
    from vncaudit.targets import build_target_space, parse_ports

    return build_target_space(monitor.targets, parse_ports(monitor.ports),
                              excludes=monitor.excludes)


async def _scan(store: Store, monitor: Monitor,
                on_created: Callable[[str], None]) -> ScanRecord:
    """Run the monitor's scan into the store as a stored scan; returns its finished record.
    Raises VncAuditError when it cannot run (bad targets), CancelledError when stopped (the
    scan is then interrupted). Every cycle probes through the store's connection ledger (the
    runner's): however often it runs, no server's blacklist is armed; a spent budget reports
    the facts read last."""
    from vncaudit.runner import StoredScan

    scan = StoredScan.create(store, scan_spec(monitor),
                             labels={"source": "watch", "monitor": monitor.name},
                             tool=f"vncaudit {__version__}")
    on_created(scan.scan_id)
    return await scan.run_async()


async def run_cycle(store: Store, db: MonitorDb, monitor: Monitor) -> CycleOutcome:
    """Scan, record, evaluate. A failure to scan is a `failed` cycle, not an exception."""
    started = time.monotonic()
    created: list[str] = []

    def linked(scan_id: str) -> None:
        created.append(scan_id)
        db.start_cycle(monitor.name, scan_id)

    try:
        record = await _scan(store, monitor, linked)
    except asyncio.CancelledError:
        if created:
            store.finish_scan(created[0], "interrupted")
            db.finish_cycle(created[0], "interrupted", "stopped during the cycle")
        raise
    except VncAuditError as exc:
        error = " ".join(str(exc).split())
        if not created:
            return CycleOutcome(monitor.name, "", "failed", None, (), 0, 0,
                                time.monotonic() - started, error)
        store.finish_scan(created[0], "interrupted")
        db.finish_cycle(created[0], "failed", error)
        return CycleOutcome(monitor.name, created[0], "failed", None, (), 0, 0,
                            time.monotonic() - started, error)
    scan_end = time.time()
    scan_id = record.id
    db.finish_cycle(scan_id, "finished")
    previous, alerts, digests_queued = evaluate_cycle(store, db, monitor, scan_id)
    return CycleOutcome(monitor.name, scan_id, "finished", previous, alerts,
                        int(record.counts.get("vnc", 0)), int(record.counts.get("done", 0)),
                        time.monotonic() - started, finished_at=time.time(),
                        scan_finished_at=scan_end, digests=digests_queued)


def changes_between(store: Store, previous: str | None,
                    current: str) -> tuple[list[Change], list[tuple[str, int]]]:
    """The services that differ (all of `current`'s when there is no previous cycle), and the
    previous cycle's services that `current` did not probe (`not-probed` ones included: the
    connection ledger let nothing be sent to them)."""
    if previous is None:
        return [Change(r.host, r.port, None, r, (f"+ {_address(r.host, r.port)} "
                                                 f"{r.state.value} (first cycle)",))
                for r in store.results(current)], []
    diff = store.diff(previous, current)
    out: list[Change] = []
    skipped = list(diff.not_rescanned)
    for group in (diff.appeared, diff.disappeared, diff.changed):
        for d in group:
            if d.after is not None and d.after.state is State.NOT_PROBED:
                # The ledger let nothing be sent: nothing is known of the pair this cycle.
                skipped.append((d.host, d.port))
            else:
                out.append(Change(d.host, d.port, d.before, d.after, tuple(d.lines())))
    return out, skipped


class _OpenServices(Mapping[tuple[str, int], ServiceResult]):
    """The cycle's reachable services by (host, port); a result's JSON is decoded only when
    it is looked up (a reminder), not for the thousands that are merely tracked."""

    def __init__(self, store: Store, scan_id: str) -> None:
        self.store = store
        states = ",".join(f"'{s.value}'" for s in REACHABLE)
        with store.reading("cannot read results") as db:
            rows = db.execute(f"SELECT host, port, id FROM results WHERE scan_id = ? AND "
                              f"state IN ({states})", (scan_id,)).fetchall()
        self.ids = {(str(h), int(p)): int(i) for h, p, i in rows}

    def __getitem__(self, key: tuple[str, int]) -> ServiceResult:
        with self.store.reading("cannot read results") as db:
            (text,) = db.execute("SELECT result FROM results WHERE id = ?",
                                 (self.ids[key],)).fetchone()
        return ServiceResult.from_dict(json.loads(text))

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def evaluate_cycle(store: Store, db: MonitorDb, monitor: Monitor,
                   scan_id: str) -> tuple[str | None, tuple[Alert, ...], tuple[Digest, ...]]:
    """Compare a finished cycle with the monitor's baseline and queue its alerts (all in one
    transaction): to each channel one by one, or, to each webhook and e-mail channel whose
    digest threshold (its own, else the monitor's) they are more than, as one digest (one
    per such threshold). Running it again for the same cycle queues nothing twice."""
    previous = db.baseline(monitor.name)
    if previous == scan_id:
        return previous, (), ()
    changes, not_probed = changes_between(store, previous, scan_id)
    open_now = _OpenServices(store, scan_id)
    now = datetime.now(UTC)
    evaluation = evaluate(monitor.name, monitor.rules, scan_id, previous, changes, open_now,
                          not_probed, db.tracked(monitor.name), now)
    count = len(evaluation.alerts)
    by_threshold: dict[int, list[str]] = {}
    for channel in monitor.channels:
        threshold = monitor.threshold_for(channel)
        if digests(channel) and digesting.wants_digest(count, threshold):
            by_threshold.setdefault(threshold, []).append(channel.name)
    queued = tuple(
        (digesting.build(evaluation.alerts, monitor.name, scan_id, previous,
                         now.isoformat(timespec="seconds"), threshold, db=_named_db(store),
                         own_threshold=threshold != monitor.digest_threshold), tuple(names))
        for threshold, names in sorted(by_threshold.items(), reverse=True))
    digested = {name for _, names in queued for name in names}
    one_by_one = [c.name for c in monitor.channels if c.name not in digested]
    db.commit_evaluation(monitor.name, scan_id, previous, evaluation, one_by_one, queued)
    return previous, evaluation.alerts, tuple(d for d, _ in queued)


def _named_db(store: Store) -> str | None:
    """The store's path as a digest's commands must give it (None: the default store)."""
    if store.path is None:
        return None
    try:
        if store.path.resolve() == default_db_path().expanduser().resolve():
            return None
    except OSError:
        pass
    return str(store.path)
