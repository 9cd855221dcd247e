"""Retention: delete scans older than a cut-off with their results and screenshots.

Owns: `prune` (used by `vncaudit prune`, by watchers with a ``retention`` setting and by
`serve`). Deleted: scans that started before the cut-off and are not running, with their
``done``/``results``/``findings`` rows and cycle links (foreign keys cascade), the screenshot
files their results name, and alerts older than the cut-off whose deliveries are all settled.
Always kept: each monitor's latest cycle and the cycle its next one is compared with (so a
prune never makes the next cycle call everything "newly reachable"), running scans, and any
alert with a delivery still pending (so no alert is lost). Must not: touch a file that no
deleted result names, or delete anything when `dry_run`.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vncaudit.store import Store

CHUNK = 50  # scans per transaction: a reader never waits long for a large prune


@dataclass(frozen=True)
class PruneReport:
    cutoff: str
    scans: int = 0
    results: int = 0
    screenshots: int = 0
    alerts: int = 0
    kept: int = 0  # old scans kept because a monitor still needs them

    def describe(self) -> str:
        return (f"{self.scans} scan(s) before {self.cutoff} with {self.results} result(s) "
                f"and {self.screenshots} screenshot(s), {self.alerts} alert(s); "
                f"{self.kept} old monitor cycle(s) kept")

    def to_dict(self) -> dict[str, object]:
        return {"cutoff": self.cutoff, "scans": self.scans, "results": self.results,
                "screenshots": self.screenshots, "alerts": self.alerts, "kept": self.kept}


def _protected(store: Store) -> set[str]:
    """Each monitor's latest cycle and its latest finished, evaluated cycle (the baseline)."""
    with store.reading("cannot read cycles") as db:
        rows = db.execute(
            "SELECT (SELECT scan_id FROM monitor_cycles c WHERE c.monitor = m.monitor "
            "        ORDER BY started DESC, rowid DESC LIMIT 1), "
            "       (SELECT scan_id FROM monitor_cycles c WHERE c.monitor = m.monitor "
            "        AND status = 'finished' AND evaluated IS NOT NULL "
            "        ORDER BY started DESC, rowid DESC LIMIT 1) "
            "FROM (SELECT DISTINCT monitor FROM monitor_cycles) m").fetchall()
    return {str(s) for row in rows for s in row if s is not None}


def _screenshots(store: Store, scan_ids: list[str]) -> list[Path]:
    marks = ",".join("?" * len(scan_ids))
    with store.reading("cannot read results") as db:
        rows = db.execute(
            f"SELECT result FROM results WHERE scan_id IN ({marks}) "
            "AND instr(result, '\"screenshot\"') > 0", scan_ids).fetchall()
    paths: list[Path] = []
    for (text,) in rows:
        extra = json.loads(text).get("extra") or {}
        active = extra.get("active") if isinstance(extra, dict) else None
        shot = active.get("screenshot") if isinstance(active, dict) else None
        path = shot.get("path") if isinstance(shot, dict) else None
        if isinstance(path, str) and path.endswith(".png") and not path.startswith("/api/"):
            paths.append(Path(path))
    return paths


def prune(store: Store, older_than: float, *, dry_run: bool = False,
          now: datetime | None = None) -> PruneReport:
    """Delete what is older than `older_than` seconds (see the module docstring)."""
    moment = now or datetime.now(UTC)
    cutoff = (moment - timedelta(seconds=older_than)).isoformat(timespec="seconds")
    keep = _protected(store)
    with store.reading("cannot list old scans") as db:
        old = [str(r[0]) for r in db.execute(
            "SELECT id FROM scans WHERE started < ? AND status != 'running' ORDER BY started",
            (cutoff,)).fetchall()]
        # A scan killed long ago stays "running" for ever: one not written to since the
        # cut-off is old too.
        old += [str(r[0]) for r in db.execute(
            "SELECT id FROM scans WHERE started < ? AND status = 'running' AND updated < ?",
            (cutoff, cutoff)).fetchall()]
    doomed = [s for s in old if s not in keep]
    kept = len(old) - len(doomed)
    results = screenshots = 0
    for start in range(0, len(doomed), CHUNK):
        chunk = doomed[start:start + CHUNK]
        marks = ",".join("?" * len(chunk))
        with store.reading("cannot count results") as db:
            (n,) = db.execute(f"SELECT count(*) FROM results WHERE scan_id IN ({marks})",
                              chunk).fetchone()
        results += int(n)
        files = _screenshots(store, chunk)
        if dry_run:
            screenshots += sum(1 for f in files if f.is_file())
            continue
        with store.writing("cannot delete old scans") as db:
            db.execute(f"DELETE FROM scans WHERE id IN ({marks})", chunk)
        store.flush()
        for path in files:
            with contextlib.suppress(OSError):
                path.unlink()
                screenshots += 1
            with contextlib.suppress(OSError):
                # The per-scan folder (web: <root>/<scan id>/) goes once it is empty.
                if path.parent.name in chunk:
                    os.rmdir(path.parent)
    with store.reading("cannot list old alerts") as db:
        settled = [str(r[0]) for r in db.execute(
            "SELECT key FROM alerts a WHERE created < ? AND NOT EXISTS (SELECT 1 FROM outbox o "
            "WHERE o.alert_key = a.key AND o.state = 'pending')", (cutoff,)).fetchall()]
    if settled and not dry_run:
        for start in range(0, len(settled), 500):
            chunk = settled[start:start + 500]
            with store.writing("cannot delete old alerts") as db:
                db.execute(f"DELETE FROM alerts WHERE key IN ({','.join('?' * len(chunk))})",
                           chunk)
        store.flush()
    return PruneReport(cutoff, len(doomed), results, screenshots, len(settled), kept)
