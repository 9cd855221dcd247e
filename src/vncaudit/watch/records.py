"""The monitors' tables in the store: monitors, their cycles, tracked services, alerts and the
outbox of deliveries.

Owns: every read and write of those tables (created by the store's `MIGRATIONS`), through
`Store.reading()` / `Store.writing()`, each write committed before it returns (`flush`), since
what it records (a cycle's alerts queued, a delivery done) must survive a ``kill -9`` that
follows. Must not: scan, send, decide which alerts to raise, or touch the scan tables beyond
reading a cycle's results.

A digest is kept as a row of the alerts table whose rule is ``digest`` (host empty, port 0,
the `Digest` as its JSON), so the outbox, its foreign key, retries and retention treat it as
one alert; the alert history leaves it out and shows, for each alert it stands for, the
digest's delivery to the channels the alert itself was not queued for.

Crash rules: a cycle's alerts, their outbox rows (or its digest's), the tracked services and
the cycle's "evaluated" mark are written in ONE transaction (`commit_evaluation`), so an
evaluation is either wholly recorded or redone from scratch (same alert keys: `INSERT OR
IGNORE`). An
outbox row is `pending` until a delivery succeeded and that was committed; a process killed
between the two sends it again with the same idempotency key.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vncaudit.store import Store
from vncaudit.watch.alerts import Alert, Evaluation, Tracked
from vncaudit.watch.config import Monitor
from vncaudit.watch.digest import DIGEST_RULE, Digest

Message = Alert | Digest
"""What one outbox row delivers: an alert, or a cycle's digest in place of its alerts."""

BACKOFF_FIRST = 10.0  # seconds before the first retry
BACKOFF_CAP = 3600.0  # retries at least once an hour
GIVE_UP_AFTER = 7 * 86400.0  # a delivery still failing after a week is recorded as failed


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def backoff(attempts: int, retry_after: float | None = None) -> float:
    """Seconds until the next try after `attempts` failed ones: 10 s doubling to an hour,
    with ±20 % jitter (so receivers coming back are not hit by every sender at once); at least
    what the receiver asked for in Retry-After."""
    delay = min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_CAP)
    delay *= random.uniform(0.8, 1.2)
    return float(max(delay, retry_after or 0.0))


@dataclass(frozen=True)
class CycleRecord:
    scan_id: str
    monitor: str
    started: str
    finished: str | None
    status: str  # running | finished | interrupted | failed
    previous_scan_id: str | None
    evaluated: str | None
    alerts: int
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "monitor": self.monitor, "started": self.started,
                "finished": self.finished, "status": self.status,
                "previous_scan_id": self.previous_scan_id, "evaluated": self.evaluated,
                "alerts": self.alerts, "error": self.error}


@dataclass(frozen=True)
class Delivery:
    """One outbox row: an alert (or a digest) for one channel."""

    id: int
    alert_key: str
    channel: str
    state: str  # pending | delivered | failed
    attempts: int
    next_attempt: float  # Unix time
    last_error: str | None
    last_attempt: str | None
    created: str
    delivered: str | None
    digest: str | None = None  # in an alert's history: the key of the digest that carried it

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, "state": self.state, "attempts": self.attempts,
                "next_attempt": (datetime.fromtimestamp(self.next_attempt, UTC)
                                 .isoformat(timespec="seconds")
                                 if self.state == "pending" else None),
                "last_error": self.last_error, "last_attempt": self.last_attempt,
                "delivered": self.delivered, "digest": self.digest}


@dataclass(frozen=True)
class AlertRecord:
    alert: Alert
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True)
class MonitorRecord:
    name: str
    spec: dict[str, Any]
    updated: str
    next_due: str | None
    runner: str | None
    heartbeat: str | None


_CYCLE_COLUMNS = ("scan_id, monitor, started, finished, status, previous_scan_id, evaluated, "
                  "alerts, error")
_DELIVERY_COLUMNS = ("id, alert_key, channel, state, attempts, next_attempt, last_error, "
                     "last_attempt, created, delivered")


def _cycle(row: Sequence[Any]) -> CycleRecord:
    return CycleRecord(*row)


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(*row)


def monitor_spec(monitor: Monitor) -> dict[str, Any]:
    """What the store keeps of a monitor's definition (no secrets): for pages and listings."""
    return {"targets": list(monitor.targets), "ports": monitor.ports,
            "excludes": list(monitor.excludes), "schedule": monitor.schedule.describe(),
            "every": monitor.schedule.every, "cron": monitor.schedule.cron,
            "rules": list(monitor.rules.names()),
            "remind_every": monitor.rules.remind_every,
            "channels": [c.name for c in monitor.channels],
            "discovery": monitor.scan.discovery,
            "digest_threshold": monitor.digest_threshold,
            "channel_digest_thresholds": dict(monitor.channel_thresholds)}


class MonitorDb:
    """The monitors' tables of one open `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- monitors ----------------------------------------------------------------------------

    def register(self, monitor: Monitor) -> None:
        spec = json.dumps(monitor_spec(monitor), sort_keys=True)
        with self.store.writing("cannot record monitor") as db:
            db.execute("INSERT INTO monitors (name, spec, updated) VALUES (?, ?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                       "updated = excluded.updated WHERE spec != excluded.spec",
                       (monitor.name, spec, now_iso()))
        self.store.flush()

    def set_next_due(self, name: str, due: datetime | None, runner: str) -> None:
        with self.store.writing("cannot record monitor state") as db:
            db.execute("UPDATE monitors SET next_due = ?, runner = ?, heartbeat = ? "
                       "WHERE name = ?",
                       (due.isoformat(timespec="seconds") if due else None, runner, now_iso(),
                        name))
        self.store.flush()

    def monitors(self) -> list[MonitorRecord]:
        with self.store.reading("cannot read monitors") as db:
            rows = db.execute("SELECT name, spec, updated, next_due, runner, heartbeat "
                              "FROM monitors ORDER BY name").fetchall()
        return [MonitorRecord(r[0], json.loads(r[1]), *r[2:]) for r in rows]

    def monitor(self, name: str) -> MonitorRecord | None:
        return next((m for m in self.monitors() if m.name == name), None)

    # -- cycles ------------------------------------------------------------------------------

    def start_cycle(self, monitor: str, scan_id: str) -> None:
        with self.store.writing("cannot record cycle", scan_id) as db:
            db.execute("INSERT OR IGNORE INTO monitor_cycles (scan_id, monitor, started, status)"
                       " VALUES (?, ?, ?, 'running')", (scan_id, monitor, now_iso()))
        self.store.flush()

    def finish_cycle(self, scan_id: str, status: str, error: str | None = None) -> None:
        with self.store.writing("cannot record cycle") as db:
            db.execute("UPDATE monitor_cycles SET status = ?, finished = ?, error = ? "
                       "WHERE scan_id = ?", (status, now_iso(), error, scan_id))
        self.store.flush()

    def cycles(self, monitor: str, limit: int = 20) -> list[CycleRecord]:
        with self.store.reading("cannot read cycles") as db:
            rows = db.execute(f"SELECT {_CYCLE_COLUMNS} FROM monitor_cycles WHERE monitor = ? "
                              "ORDER BY started DESC, rowid DESC LIMIT ?",
                              (monitor, limit)).fetchall()
        return [_cycle(r) for r in rows]

    def cycle(self, scan_id: str) -> CycleRecord | None:
        with self.store.reading("cannot read cycles") as db:
            row = db.execute(f"SELECT {_CYCLE_COLUMNS} FROM monitor_cycles WHERE scan_id = ?",
                             (scan_id,)).fetchone()
        return _cycle(row) if row is not None else None

    def last_cycle(self, monitor: str) -> CycleRecord | None:
        found = self.cycles(monitor, 1)
        return found[0] if found else None

    def baseline(self, monitor: str) -> str | None:
        """The cycle the next one is compared with: the latest finished, evaluated cycle."""
        with self.store.reading("cannot read cycles") as db:
            row = db.execute("SELECT scan_id FROM monitor_cycles WHERE monitor = ? AND "
                             "status = 'finished' AND evaluated IS NOT NULL "
                             "ORDER BY started DESC, rowid DESC LIMIT 1", (monitor,)).fetchone()
        return str(row[0]) if row is not None else None

    def unevaluated(self, monitor: str) -> list[CycleRecord]:
        """Finished cycles whose alerts were never queued (the process died in between)."""
        with self.store.reading("cannot read cycles") as db:
            rows = db.execute(f"SELECT {_CYCLE_COLUMNS} FROM monitor_cycles WHERE monitor = ? "
                              "AND status = 'finished' AND evaluated IS NULL "
                              "ORDER BY started, rowid", (monitor,)).fetchall()
        return [_cycle(r) for r in rows]

    def abandon_running(self, monitor: str) -> list[str]:
        """Cycles left 'running' by a process that died: marked interrupted (their scans too).
        Only the process holding the runner lock calls this."""
        with self.store.reading("cannot read cycles") as db:
            rows = db.execute("SELECT scan_id FROM monitor_cycles WHERE monitor = ? AND "
                              "status = 'running'", (monitor,)).fetchall()
        ids = [str(r[0]) for r in rows]
        for scan_id in ids:
            record = self.store.get_scan(scan_id)
            if record is not None and record.status == "running":
                self.store.finish_scan(scan_id, "interrupted")
            self.finish_cycle(scan_id, "interrupted", "the watcher stopped during this cycle")
        return ids

    # -- evaluation ----------------------------------------------------------------------------

    def tracked(self, monitor: str) -> dict[tuple[str, int], Tracked]:
        with self.store.reading("cannot read tracked services") as db:
            rows = db.execute("SELECT host, port, open_since, last_alert FROM monitor_services "
                              "WHERE monitor = ?", (monitor,)).fetchall()
        return {(str(h), int(p)): Tracked(str(s), a) for h, p, s, a in rows}

    def commit_evaluation(self, monitor: str, scan_id: str, previous: str | None,
                          evaluation: Evaluation, channels: Iterable[str],
                          digests: Sequence[tuple[Digest, Sequence[str]]] = ()) -> int:
        """Queue the cycle's alerts for every channel of `channels` (and each digest of
        `digests` for its channels instead) and mark the cycle evaluated, in one transaction;
        returns how many alerts were new (0 when this ran before)."""
        names = list(channels)
        now = now_iso()
        due = time.time()
        added = 0
        with self.store.writing("cannot queue alerts") as db:
            for alert in evaluation.alerts:
                cur = db.execute(
                    "INSERT OR IGNORE INTO alerts (key, monitor, scan_id, host, port, rule, "
                    "severity, created, alert) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (alert.key, alert.monitor, alert.scan_id, alert.host, alert.port,
                     alert.rule, alert.severity, alert.created,
                     json.dumps(alert.to_dict(), ensure_ascii=True)))
                added += max(cur.rowcount, 0)
                db.executemany(
                    "INSERT OR IGNORE INTO outbox (alert_key, channel, state, next_attempt, "
                    "created) VALUES (?, ?, 'pending', ?, ?)",
                    [(alert.key, name, due, now) for name in names])
            for digest, digest_channels in digests:
                worst = digest.by_severity[0][0] if digest.by_severity else None
                db.execute(
                    "INSERT OR IGNORE INTO alerts (key, monitor, scan_id, host, port, rule, "
                    "severity, created, alert) VALUES (?, ?, ?, '', 0, ?, ?, ?, ?)",
                    (digest.key, digest.monitor, digest.scan_id, DIGEST_RULE,
                     None if worst == "none" else worst, digest.created,
                     json.dumps({"type": DIGEST_RULE, **digest.to_dict()},
                                ensure_ascii=True)))
                db.executemany(
                    "INSERT OR IGNORE INTO outbox (alert_key, channel, state, next_attempt, "
                    "created) VALUES (?, ?, 'pending', ?, ?)",
                    [(digest.key, name, due, now) for name in digest_channels])
            db.execute("DELETE FROM monitor_services WHERE monitor = ?", (monitor,))
            db.executemany(
                "INSERT INTO monitor_services (monitor, host, port, open_since, last_alert) "
                "VALUES (?, ?, ?, ?, ?)",
                [(monitor, h, p, t.open_since, t.last_alert)
                 for (h, p), t in evaluation.tracked.items()])
            db.execute("UPDATE monitor_cycles SET evaluated = ?, previous_scan_id = ?, "
                       "alerts = ? WHERE scan_id = ?",
                       (now, previous, len(evaluation.alerts), scan_id))
        self.store.flush()
        return added

    # -- the outbox ----------------------------------------------------------------------------

    def due(self, now: float, limit: int = 500,
            exclude: Sequence[str] = ()) -> list[tuple[Delivery, Message]]:
        """Pending deliveries whose time has come, oldest first, with their alerts (or
        digests); none of the channels in `exclude`."""
        columns = ", ".join("o." + c.strip() for c in _DELIVERY_COLUMNS.split(","))
        skip = f" AND o.channel NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        with self.store.reading("cannot read the outbox") as db:
            rows = db.execute(
                f"SELECT {columns}, a.alert FROM outbox o JOIN alerts a ON a.key = o.alert_key "
                f"WHERE o.state = 'pending' AND o.next_attempt <= ?{skip} ORDER BY o.id LIMIT ?",
                (now, *exclude, limit)).fetchall()
        return [(_delivery(r[:-1]), message(json.loads(r[-1]))) for r in rows]

    def next_due(self, exclude: Sequence[str] = ()) -> float | None:
        """When the earliest pending delivery (of a channel not in `exclude`) may be tried."""
        skip = f" AND channel NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        with self.store.reading("cannot read the outbox") as db:
            row = db.execute("SELECT min(next_attempt) FROM outbox WHERE state = 'pending'"
                             + skip, tuple(exclude)).fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    def delivered(self, delivery_id: int) -> None:
        with self.store.writing("cannot record a delivery") as db:
            db.execute("UPDATE outbox SET state = 'delivered', delivered = ?, "
                       "attempts = attempts + 1, last_attempt = ?, last_error = NULL "
                       "WHERE id = ?", (now_iso(), now_iso(), delivery_id))
        self.store.flush()

    def failed_attempt(self, delivery: Delivery, error: str, retry_after: float | None,
                       now: float) -> Delivery:
        """Record a failed try: retried with back-off, or `failed` once it has been failing
        for `GIVE_UP_AFTER`. Returns the row as recorded."""
        attempts = delivery.attempts + 1
        created = datetime.fromisoformat(delivery.created).timestamp()
        give_up = now - created >= GIVE_UP_AFTER
        state = "failed" if give_up else "pending"
        next_at = now + backoff(attempts, retry_after)
        stamp = now_iso()
        with self.store.writing("cannot record a delivery") as db:
            db.execute("UPDATE outbox SET state = ?, attempts = ?, next_attempt = ?, "
                       "last_error = ?, last_attempt = ? WHERE id = ?",
                       (state, attempts, next_at, error, stamp, delivery.id))
        self.store.flush()
        return Delivery(delivery.id, delivery.alert_key, delivery.channel, state, attempts,
                        next_at, error, stamp, delivery.created, None)

    def postpone(self, ids: Sequence[int], until: float) -> None:
        """Move other deliveries of a channel that just failed behind its back-off, without
        counting an attempt (they were not tried)."""
        if not ids:
            return
        with self.store.writing("cannot reschedule deliveries") as db:
            db.executemany("UPDATE outbox SET next_attempt = max(next_attempt, ?) "
                           "WHERE id = ? AND state = 'pending'", [(until, i) for i in ids])
        self.store.flush()

    def drop_channel(self, delivery: Delivery, why: str) -> None:
        with self.store.writing("cannot record a delivery") as db:
            db.execute("UPDATE outbox SET state = 'failed', last_error = ?, last_attempt = ? "
                       "WHERE id = ?", (why, now_iso(), delivery.id))
        self.store.flush()

    def retry_failed(self, monitor: str | None = None) -> int:
        """Put failed deliveries back in the queue (after a receiver was fixed)."""
        sql = ("UPDATE outbox SET state = 'pending', next_attempt = ?, created = ? "
               "WHERE state = 'failed'")
        params: list[Any] = [time.time(), now_iso()]
        if monitor is not None:
            sql += " AND alert_key IN (SELECT key FROM alerts WHERE monitor = ?)"
            params.append(monitor)
        with self.store.writing("cannot requeue deliveries") as db:
            count = db.execute(sql, params).rowcount
        self.store.flush()
        return max(count, 0)

    def outbox_counts(self) -> dict[str, int]:
        with self.store.reading("cannot read the outbox") as db:
            rows = db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
        counts = {"pending": 0, "delivered": 0, "failed": 0}
        counts.update({str(s): int(n) for s, n in rows})
        return counts

    # -- history -------------------------------------------------------------------------------

    def alerts(self, monitor: str | None = None, limit: int | None = 50,
               scan_id: str | None = None) -> list[AlertRecord]:
        """The most recent alerts (of one monitor, of one cycle), newest first, with their
        deliveries: their own, and their cycle's digest's for the channels it went to."""
        where = "rule != ?"
        params: list[Any] = [DIGEST_RULE]
        if monitor is not None:
            where += " AND monitor = ?"
            params.append(monitor)
        if scan_id is not None:
            where += " AND scan_id = ?"
            params.append(scan_id)
        # Newest cycle first; within one, as the cycle queued them (most severe first, as its
        # digest lists them). `created` has whole seconds, and two cycles can share one: a
        # cycle's alerts are queued in one transaction, so its first rowid orders the cycles.
        sql = (f"WITH picked AS (SELECT rowid AS id, key, scan_id, alert, created FROM alerts "
               f"WHERE {where}) SELECT key, scan_id, alert FROM picked JOIN (SELECT scan_id, "
               f"min(id) AS first FROM picked GROUP BY scan_id) USING (scan_id) "
               f"ORDER BY created DESC, first DESC, id ASC")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self.store.reading("cannot read alerts") as db:
            rows = db.execute(sql, params).fetchall()
            keys = [str(k) for k, _, _ in rows]
            deliveries: dict[str, list[Delivery]] = {k: [] for k in keys}
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                for r in db.execute(f"SELECT {_DELIVERY_COLUMNS} FROM outbox WHERE alert_key "
                                    f"IN ({marks}) ORDER BY channel", chunk).fetchall():
                    deliveries[str(r[1])].append(_delivery(r))
            by_cycle: dict[str, list[Delivery]] = {}
            columns = ", ".join("o." + c.strip() for c in _DELIVERY_COLUMNS.split(","))
            for chunk in _chunks(sorted({str(c) for _, c, _ in rows})):
                marks = ",".join("?" * len(chunk))
                for r in db.execute(f"SELECT a.scan_id, {columns} FROM alerts a JOIN outbox o "
                                    f"ON o.alert_key = a.key WHERE a.rule = ? AND a.scan_id "
                                    f"IN ({marks})", (DIGEST_RULE, *chunk)).fetchall():
                    row = _delivery(r[1:])
                    by_cycle.setdefault(str(r[0]), []).append(
                        dataclasses.replace(row, digest=row.alert_key))
        out: list[AlertRecord] = []
        for key, cycle, text in rows:
            own = deliveries[str(key)]
            mine = {d.channel for d in own}
            carried = [d for d in by_cycle.get(str(cycle), []) if d.channel not in mine]
            out.append(AlertRecord(Alert.from_dict(json.loads(text)),
                                   tuple(sorted([*own, *carried], key=lambda d: d.channel))))
        return out

    def alert_count(self, monitor: str) -> int:
        with self.store.reading("cannot read alerts") as db:
            (n,) = db.execute("SELECT count(*) FROM alerts WHERE monitor = ? AND rule != ?",
                              (monitor, DIGEST_RULE)).fetchone()
        return int(n)


def message(doc: dict[str, Any]) -> Message:
    """An alerts-table row's JSON: a digest (``"type": "digest"``) or an alert."""
    if doc.get("type") == DIGEST_RULE:
        return Digest.from_dict(doc)
    return Alert.from_dict(doc)


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
