"""The `Store`: one SQLite (WAL) database holding scans, results, findings and the resume record.

Owns: opening the database (pragmas, migrations), every write of a scan's results in batches,
the scan records, and the queries behind `vncaudit results` / `--resume` / `vncaudit diff`.
Its write, resume and durability rules are docs/design.md, "The store: schema, writes,
durability". Must not: probe, grade, render or print; import package modules other than
`models`, `exceptions`, `diff` and the store's own; use anything but the standard library.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from vncaudit.basics import SCHEMA_VERSION, SILENT_STATES, Severity, State
from vncaudit.jsontext import dumps_compact, loads
from vncaudit.store.errors import StoreError, UnknownScanError
from vncaudit.store.schema import DB_ENV_VAR as DB_ENV_VAR
from vncaudit.store.schema import DB_FILENAME as DB_FILENAME
from vncaudit.store.schema import PAGE_SIZE as PAGE_SIZE
from vncaudit.store.schema import connect, default_db_file

if TYPE_CHECKING:
    from vncaudit.diff import ScanDiff
    from vncaudit.models import ServiceResult

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 10.0  # seconds a writer waits for another writer's batch
DEFAULT_BATCH_SIZE = 500  # writes per commit
DEFAULT_BATCH_INTERVAL = 0.5  # seconds; a batch older than this is committed on the next write

SILENT_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(SILENT_STATES)) + ")"
"""`SILENT_STATES` as an SQL list, for ``state IN``/``NOT IN``: ``('closed', 'filtered')``."""

ScanStatus = Literal["running", "finished", "interrupted"]
SCAN_STATUSES: tuple[str, ...] = ("running", "finished", "interrupted")


def default_db_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the database lives when no path is given: ``$VNCAUDIT_DB`` if set, else
    ``$XDG_DATA_HOME/vncaudit/vncaudit.db`` (``~/.local/share/vncaudit/vncaudit.db`` when
    ``XDG_DATA_HOME`` is unset or relative). `Store.open` creates the parent directories."""
    return Path(default_db_file(os.environ if environ is None else environ))


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanRecord:
    """One scan as stored. `updated` is the time of its last committed write. `counts` keys:
    done, results, services, vnc, no_auth, findings, plus one per severity counting services
    by their worst finding (critical, high, …); live unless the scan is finished."""

    id: str
    status: str
    started: str
    finished: str | None
    targets: tuple[str, ...]
    ports: str
    options: dict[str, Any]
    tool: str
    schema_version: int
    position: int | None = None
    updated: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``scan`` object of the result schema v1 (docs/design.md §7), plus status and
        counts."""
        return {
            "id": self.id,
            "started": self.started,
            "finished": self.finished,
            "targets": list(self.targets),
            "ports": self.ports,
            "tool": self.tool,
            "status": self.status,
            "counts": dict(self.counts),
        }



# The store


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tool_version() -> str:
    import vncaudit  # the one version source (read once, without importlib.metadata)

    return f"vncaudit {vncaudit.__version__}"


def _new_scan_id() -> str:
    # os.urandom is what secrets.token_hex reads; hmac and hashlib stay out of start-up
    return f"s-{datetime.now(UTC):%Y%m%d}-{os.urandom(3).hex()}"


def _canonical_host(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text




@cache
def _diff_key() -> Callable[[ServiceResult], str]:
    """`diff.diff_key`, imported with the first result stored: the diff and the result
    types are not needed to open the store and start a scan."""
    from vncaudit.diff import diff_key

    return diff_key


def _dumps(obj: Any) -> str:
    # ensure_ascii (as json writes it) keeps lone surrogates (surrogateescape'd server strings)
    # encodable as UTF-8; orjson writes the same text in a third of the time.
    return dumps_compact(obj)


def _dumps_once(obj: Any) -> str:
    """`_dumps`' text by the standard library's encoder, for a scan record's one-off values:
    creating a scan does not wait for orjson's import (it comes with the first stored row)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


_INSERT_OR_IGNORE = (
    "INSERT OR IGNORE INTO results (scan_id, host, port, state, auth_required, product, "
    "severity, severity_rank, diff_key, observed_at, result) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_FINDING = (
    "INSERT INTO findings (scan_id, host, port, finding_id, severity, title) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_DONE = "INSERT OR IGNORE INTO done (scan_id, host, port, state) VALUES (?, ?, ?, ?)"
_REPLACE_DONE = "INSERT OR REPLACE INTO done (scan_id, host, port, state) VALUES (?, ?, ?, ?)"
_INSERT_PACKED = "INSERT INTO done_packed (scan_id, state, count, pairs) VALUES (?, ?, ?, ?)"


def _unpacked(blob: bytes) -> array[int]:
    """The pairs of one `done_packed` row (`PACKED_PAIR`), as address << 16 | port."""
    keys = array("Q")
    if keys.itemsize != 8 or len(blob) % 8:
        raise sqlite3.DataError("a done_packed row is not a list of 64-bit pairs")
    keys.frombytes(blob)
    if sys.byteorder != "little":
        keys.byteswap()
    return keys


def _host_of(address: int) -> str:
    return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}"


def _ipv4_number(host: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(host))
    except ValueError:
        return None


def _packed_has_host(blob: bytes, host: str) -> bool:
    """SQL function `packed_has_host(pairs, host)`: whether a `done_packed` row holds a pair of
    `host` (any port); its pairs are in ascending order."""
    address = _ipv4_number(host) if isinstance(host, str) else None
    if address is None or not isinstance(blob, bytes):
        return False
    keys = _unpacked(blob)
    i = bisect.bisect_left(keys, address << 16)
    return i < len(keys) and keys[i] >> 16 == address


@contextlib.contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Translate sqlite3 errors into StoreError at this one boundary."""
    try:
        yield
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "database is locked":
            raise StoreError(f"{what}: another process kept the store locked for "
                             f"{BUSY_TIMEOUT:g} s (database is locked); try again when it "
                             "is done") from exc
        raise StoreError(f"{what}: {exc}") from exc


class Store:
    """The scan database. Open with `Store.open`; use as a context manager (closes + commits).

    Not for constructing directly from outside; `open` sets the pragmas and runs migrations.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path | None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
    ) -> None:
        self._conn = conn
        self.path = path
        self.batch_size = max(1, batch_size)
        self.batch_interval = batch_interval
        self._lock = threading.RLock()
        self._pending = 0  # writes in the open transaction
        self._batch_started = 0.0
        self._known_scans: set[str] = set()
        self._positions: dict[str, int] = {}  # checkpoints to write with the next commit
        self._touched: set[str] = set()  # scans written in the open batch
        self._closed = False

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
    ) -> Store:
        """Open (creating if needed) the database at `path` or `default_db_path()`.

        ``":memory:"`` gives a private in-memory database (no WAL; for tests).
        """
        memory = path is not None and str(path) == ":memory:"
        where: Path | None = None
        if not memory:
            where = Path(path).expanduser() if path is not None else default_db_path()
            try:
                where.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {where.parent}: {exc.strerror or exc}") from exc
        target = ":memory:" if memory else str(where)
        with _mapped(f"cannot open database {target}"):
            conn, mode = connect(target, timeout=BUSY_TIMEOUT)
            if mode != "wal" and not memory:
                log.warning("store: %s is in journal mode %r, not WAL", target, mode)
            conn.create_function("packed_has_host", 2, _packed_has_host, deterministic=True)
        log.debug("store: opened %s", target)
        return cls(conn, where, batch_size=batch_size, batch_interval=batch_interval)

    def close(self) -> None:
        """Commit the open batch and close the connection. Idempotent."""
        with self._lock, _mapped("cannot commit on close"):
            if self._closed:
                return
            try:
                self._commit()
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA optimize")
            finally:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        with self._lock, _mapped("cannot read journal mode"):
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    # -- transactions -------------------------------------------------------------------------

    def _begin(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")
        if not self._conn.in_transaction:
            # IMMEDIATE takes the write lock now, so a batch never fails half-way on BUSY.
            self._conn.execute("BEGIN IMMEDIATE")
            self._batch_started = time.monotonic()
            self._pending = 0

    def _maybe_commit(self) -> None:
        if (
            self._pending >= self.batch_size
            or time.monotonic() - self._batch_started >= self.batch_interval
        ):
            self._commit()

    def _commit(self) -> None:
        if self._closed:
            return
        if self._positions:
            self._begin()
            self._conn.executemany(
                "UPDATE scans SET position = ? WHERE id = ?",
                [(pos, sid) for sid, pos in self._positions.items()],
            )
            self._positions.clear()
        if self._touched:
            # `updated` = last committed write: tells a killed scan ("running", but silent)
            # from a live one.
            now = _now()
            self._conn.executemany(
                "UPDATE scans SET updated = ? WHERE id = ?", [(now, sid) for sid in self._touched]
            )
            self._touched.clear()
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
            log.debug("store: committed %d writes", self._pending)
        self._pending = 0

    def flush(self) -> None:
        """Commit the open batch now (the engine calls this on Ctrl-C and at the end)."""
        with self._lock, _mapped("cannot commit"):
            self._commit()

    def checkpoint(self) -> None:
        """Commit the open batch and copy what the write-ahead log holds into the database
        file now, without waiting for any reader (a passive checkpoint). `close` copies the
        rest, so the file is whole on its own after it; done while a scan waits (a SYN
        sweep's last window), it leaves `close` less to copy and sync."""
        with self._lock, _mapped("cannot checkpoint"):
            if self._closed:
                raise StoreError("the store is closed")
            self._commit()
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @contextlib.contextmanager
    def writing(self, what: str, scan_id: str | None = None) -> Iterator[sqlite3.Connection]:
        """One write of a table of the caller's own (added by a migration), inside the open
        batch: committed with the results around it, all or nothing. Yields the connection;
        an SQLite error becomes `StoreError` ("`what`: reason"). With `scan_id` the scan must
        exist and its `updated` time moves on commit. Do not COMMIT or BEGIN yourself."""
        with self._write(what, scan_id):
            self._pending += 1
            yield self._conn

    @contextlib.contextmanager
    def reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection for a query of the caller's own, under the store's lock; sees this
        store's open batch. An SQLite error becomes `StoreError` ("`what`: reason")."""
        with self._lock, _mapped(what):
            if self._closed:
                raise StoreError("the store is closed")
            yield self._conn

    @contextlib.contextmanager
    def _write(self, what: str, scan_id: str | None) -> Iterator[None]:
        """One write call inside the open batch. A savepoint makes the call all-or-nothing
        without throwing away the earlier writes of the batch."""
        with self._lock, _mapped(what):
            if scan_id is not None:
                self._require_scan(scan_id)
            self._begin()
            self._conn.execute("SAVEPOINT store_write")
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK TO store_write")
                        self._conn.execute("RELEASE store_write")
                if not self._conn.in_transaction:
                    # SQLite rolled the whole batch back (e.g. disk full): a checkpoint queued
                    # for it would now run ahead of `done`, so drop it.
                    self._positions.clear()
                    self._touched.clear()
                    self._pending = 0
                raise
            self._conn.execute("RELEASE store_write")
            if scan_id is not None:
                self._touched.add(scan_id)
            self._maybe_commit()

    def _require_scan(self, scan_id: str) -> None:
        if scan_id in self._known_scans:
            return
        row = self._conn.execute("SELECT 1 FROM scans WHERE id = ?", (scan_id,)).fetchone()
        if row is None:
            raise UnknownScanError(scan_id)
        self._known_scans.add(scan_id)

    # -- scans --------------------------------------------------------------------------------

    def create_scan(
        self,
        targets: Sequence[str],
        ports: str,
        options: Mapping[str, Any],
        *,
        tool: str | None = None,
    ) -> str:
        """Record a new running scan and return its id (``s-YYYYMMDD-xxxxxx``).

        `options` must be JSON-serialisable and hold everything a resume needs (targets, ports,
        seed, excludes, timeout, concurrency, …); it is returned verbatim by `get_scan`.
        """
        try:
            options_json = _dumps_once(dict(options))
            targets_json = _dumps_once([str(t) for t in targets])
        except (TypeError, ValueError) as exc:
            raise StoreError(f"scan options are not JSON-serialisable: {exc}") from exc
        now = _now()
        with self._lock, _mapped("cannot create scan"):
            self._commit()
            for _attempt in range(8):
                scan_id = _new_scan_id()
                try:
                    self._conn.execute(
                        "INSERT INTO scans (id, status, started, updated, targets, ports, "
                        "options, tool, schema_version) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                        (scan_id, now, now, targets_json, ports, options_json,
                         tool or _tool_version(), SCHEMA_VERSION),
                    )
                except sqlite3.IntegrityError:
                    continue  # id collision: draw again
                self._known_scans.add(scan_id)
                log.info("store: created scan %s", scan_id)
                return scan_id
        raise StoreError("cannot create scan: no free scan id after 8 attempts")

    def finish_scan(self, scan_id: str, status: ScanStatus = "finished") -> ScanRecord:
        """Commit pending writes, set the status (finished / interrupted) and snapshot counts."""
        if status not in SCAN_STATUSES:
            raise StoreError(f"bad scan status {status!r}; expected one of {SCAN_STATUSES}")
        with self._lock, _mapped("cannot finish scan"):
            self._commit()
            self._require_scan(scan_id)
            counts = self._live_counts(scan_id)
            now = _now()
            finished = now if status != "running" else None
            self._conn.execute(
                "UPDATE scans SET status = ?, finished = ?, updated = ?, counts = ? WHERE id = ?",
                (status, finished, now, _dumps(counts), scan_id),
            )
            log.info("store: scan %s %s (%d done)", scan_id, status, counts["done"])
            record = self._get_scan(scan_id)
        assert record is not None
        return record

    def reopen_scan(self, scan_id: str) -> ScanRecord:
        """Mark a killed or interrupted scan running again, for ``--resume``; returns it."""
        return self.finish_scan(scan_id, "running")

    def delete_scan(self, scan_id: str) -> None:
        """Delete a scan and everything stored for it."""
        with self._lock, _mapped("cannot delete scan"):
            self._commit()
            self._require_scan(scan_id)
            self._conn.execute("DELETE FROM scans WHERE id = ?", (scan_id,))
            self._known_scans.discard(scan_id)
            self._positions.pop(scan_id, None)
            self._touched.discard(scan_id)

    def set_position(self, scan_id: str, position: int) -> None:
        """Record the engine's ordinal checkpoint; written atomically with the next commit."""
        with self._lock:
            self._positions[scan_id] = int(position)

    def get_scan(self, scan_id: str) -> ScanRecord | None:
        """The scan with this id, or None. Counts are live while it runs."""
        with self._lock, _mapped("cannot read scan"):
            return self._get_scan(scan_id)

    def require_scan(self, scan_id: str) -> ScanRecord:
        """Like `get_scan` but raises `UnknownScanError` (for the CLI: one line, exit 2)."""
        record = self.get_scan(scan_id)
        if record is None:
            raise UnknownScanError(scan_id)
        return record

    _SCAN_COLUMNS = (
        "id, status, started, finished, updated, targets, ports, options, tool, "
        "schema_version, position, counts"
    )

    def _get_scan(self, scan_id: str) -> ScanRecord | None:
        row = self._conn.execute(
            f"SELECT {self._SCAN_COLUMNS} FROM scans WHERE id = ?", (scan_id,)
        ).fetchone()
        return self._record(row) if row is not None else None

    def _record(self, row: Sequence[Any]) -> ScanRecord:
        (sid, status, started, finished, updated, targets, ports, options, tool, schema,
         position, counts) = row
        if status == "finished" and counts:
            count_map = {str(k): int(v) for k, v in json.loads(counts).items()}
        else:
            count_map = self._live_counts(sid)
        return ScanRecord(
            id=sid,
            status=status,
            started=started,
            finished=finished,
            targets=tuple(json.loads(targets)),
            ports=ports,
            options=json.loads(options),
            tool=tool,
            schema_version=int(schema),
            position=position,
            updated=updated,
            counts=count_map,
        )

    def _live_counts(self, scan_id: str) -> dict[str, int]:
        (done,) = self._conn.execute(
            "SELECT (SELECT count(*) FROM done WHERE scan_id = ?1) + "
            "(SELECT coalesce(sum(count), 0) FROM done_packed WHERE scan_id = ?1)", (scan_id,)
        ).fetchone()
        counts: dict[str, int] = {"done": int(done), "results": 0, "services": 0, "vnc": 0,
                                  "no_auth": 0, "findings": 0}
        counts.update({s.value: 0 for s in Severity})
        rows = self._conn.execute(
            "SELECT state, severity, auth_required, count(*) FROM results WHERE scan_id = ? "
            "GROUP BY state, severity, auth_required",
            (scan_id,),
        ).fetchall()
        for state, severity, auth_required, n in rows:
            counts["results"] += n
            if state in SILENT_STATES:
                continue
            counts["services"] += n
            if state in (State.VNC, State.BLACKLISTED):
                counts["vnc"] += n
            if auth_required == 0:
                counts["no_auth"] += n
            if severity:
                counts[severity] = counts.get(severity, 0) + n
        (findings,) = self._conn.execute(
            "SELECT count(*) FROM findings WHERE scan_id = ?", (scan_id,)
        ).fetchone()
        counts["findings"] = int(findings)
        return counts

    def list_scans(
        self, limit: int = 50, target: str | None = None, status: ScanStatus | None = None
    ) -> list[ScanRecord]:
        """Most recent scans first. `target` keeps scans that listed that exact target
        expression or probed that host; `status` filters on status."""
        where: list[str] = []
        params: list[Any] = []
        if target is not None:
            where.append(self._TARGET_FILTER)
            params += [target, _canonical_host(target), _canonical_host(target)]
        if status is not None:
            where.append("s.status = ?")
            params.append(status)
        sql = f"SELECT {self._SCAN_COLUMNS} FROM scans s"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY s.started DESC, s.rowid DESC LIMIT ?"
        params.append(int(limit))
        with self._lock, _mapped("cannot list scans"):
            rows = self._conn.execute(sql, params).fetchall()
            return [self._record(r) for r in rows]

    _TARGET_FILTER = (
        "(EXISTS (SELECT 1 FROM json_each(s.targets) WHERE value = ?)"
        " OR EXISTS (SELECT 1 FROM done d WHERE d.scan_id = s.id AND d.host = ?)"
        " OR EXISTS (SELECT 1 FROM done_packed b WHERE b.scan_id = s.id"
        " AND packed_has_host(b.pairs, ?)))"
    )

    def latest_scan_for(self, target: str) -> ScanRecord | None:
        """The most recent scan that listed `target` as an expression or probed it as a host."""
        found = self.list_scans(limit=1, target=target)
        return found[0] if found else None

    # -- writes -------------------------------------------------------------------------------

    @staticmethod
    def _result_row(scan_id: str, result: ServiceResult, now: str,
                    text: str | None = None) -> tuple[Any, ...]:
        worst = result.worst_severity
        auth = result.rfb.auth_required if result.rfb is not None else None
        return (
            scan_id,
            result.host,
            result.port,
            result.state.value,
            None if auth is None else int(auth),
            result.product.name if result.product is not None else None,
            worst.value if worst is not None else None,
            worst.rank if worst is not None else None,
            _diff_key()(result),
            now,
            _dumps(result.to_dict()) if text is None else text,
        )

    def _insert_findings(self, scan_id: str, result: ServiceResult) -> None:
        if result.findings:
            self._conn.executemany(
                _INSERT_FINDING,
                [(scan_id, result.host, result.port, f.id, f.severity.value, f.title)
                 for f in result.findings],
            )

    def _add_one(self, scan_id: str, result: ServiceResult, now: str,
                 text: str | None = None) -> bool:
        cur = self._conn.execute(_INSERT_OR_IGNORE,
                                 self._result_row(scan_id, result, now, text))
        if cur.rowcount != 1:
            return False  # first write wins (resume idempotency)
        self._insert_findings(scan_id, result)
        # The done row is replaced: an earlier mark_done(closed) for this pair yields to the
        # full result, so `done` always agrees with `results`.
        self._conn.execute(_REPLACE_DONE, (scan_id, result.host, result.port, result.state.value))
        return True

    def _add_each(self, scan_id: str, results: Sequence[ServiceResult], now: str,
                  texts: Sequence[str | None]) -> list[bool]:
        """`_add_one` for each result (whether it was new), in three statements when none of
        them is stored yet (a fresh scan); one by one, in order, when some are (a resume, a
        repeat)."""
        if len(results) < 2:
            return [self._add_one(scan_id, r, now, t) for r, t in zip(results, texts, strict=True)]
        rows = [self._result_row(scan_id, r, now, t) for r, t in zip(results, texts, strict=True)]
        self._conn.execute("SAVEPOINT store_many")
        before = self._conn.total_changes
        self._conn.executemany(_INSERT_OR_IGNORE, rows)
        if self._conn.total_changes - before != len(rows):
            # Some pair already had a result (or came twice): undo, and let the row-by-row
            # path decide which write is first, as `add_result` would.
            self._conn.execute("ROLLBACK TO store_many")
            self._conn.execute("RELEASE store_many")
            return [self._add_one(scan_id, r, now, row[-1]) for r, row in zip(results, rows,
                                                                              strict=True)]
        self._conn.executemany(_INSERT_FINDING, [
            (scan_id, r.host, r.port, f.id, f.severity.value, f.title)
            for r in results for f in r.findings
        ])
        self._conn.executemany(_REPLACE_DONE, [
            (scan_id, r.host, r.port, r.state.value) for r in results
        ])
        self._conn.execute("RELEASE store_many")
        return [True] * len(rows)

    def add_result(self, scan_id: str, result: ServiceResult) -> bool:
        """Store one result and mark its pair done; False (and nothing written) if this
        (scan, host, port) already has a result. Committed with the current batch."""
        with self._write("cannot store result", scan_id):
            added = self._add_one(scan_id, result, _now())
            self._pending += 1
        return added

    def add_results(self, scan_id: str, results: Iterable[ServiceResult],
                    texts: Sequence[str | None] | None = None) -> int:
        """Store many results (same rule as `add_result`); returns how many were new.
        `texts`, when given, has each result's `to_dict()` as `jsontext.dumps_compact` writes
        it (computed already by the caller), or None, in order."""
        return sum(self.add_results_each(scan_id, results, texts))

    def add_results_each(self, scan_id: str, results: Iterable[ServiceResult],
                         texts: Sequence[str | None] | None = None) -> list[bool]:
        """`add_results`, telling for each result whether it was new (stored)."""
        batch = list(results)
        with self._write("cannot store results", scan_id):
            added = self._add_each(scan_id, batch, _now(),
                                   texts if texts is not None else [None] * len(batch))
            self._pending += len(batch)
        return added

    def update_result(self, scan_id: str, result: ServiceResult) -> bool:
        """Replace the stored result and findings of this pair (``assess`` re-run), or insert
        it; returns True if a result was replaced."""
        key = (scan_id, result.host, result.port)
        where = "WHERE scan_id = ? AND host = ? AND port = ?"
        with self._write("cannot update result", scan_id):
            row = self._result_row(scan_id, result, _now())
            existed = (
                self._conn.execute(f"SELECT 1 FROM results {where}", key).fetchone() is not None
            )
            if existed:
                self._conn.execute(f"DELETE FROM findings {where}", key)
                self._conn.execute(
                    "UPDATE results SET state = ?, auth_required = ?, product = ?, severity = ?, "
                    f"severity_rank = ?, diff_key = ?, observed_at = ?, result = ? {where}",
                    (*row[3:], *key),
                )
                self._insert_findings(scan_id, result)
                self._conn.execute(
                    f"UPDATE done SET state = ? {where}", (result.state.value, *key)
                )
            else:
                self._add_one(scan_id, result, row[9])
            self._pending += 1
        return existed

    def mark_done(self, scan_id: str, host: str, port: int, state: State | str) -> bool:
        """Record a pair as done without storing a full result (closed / filtered). False if
        it was already done. Other states belong in `add_result`, or their facts are lost."""
        return self.mark_done_many(scan_id, [(host, port, state)]) == 1

    def mark_done_many(
        self, scan_id: str, pairs: Iterable[tuple[str, int, State | str]]
    ) -> int:
        """`mark_done` for many pairs in one statement; returns how many were new."""
        # A State is its own value (a str): checked, not converted, on the SYN sweep's path
        # (tens of thousands of marks a second); in key order, so the inserts walk the index.
        rows = sorted((scan_id, h, int(p), s if type(s) is State else State(s).value)
                      for h, p, s in pairs)
        if not rows:
            return 0
        with self._write("cannot mark targets done", scan_id):
            cur = self._conn.executemany(_INSERT_DONE, rows)
            self._pending += len(rows)
        return max(cur.rowcount, 0)

    def mark_done_packed(self, scan_id: str, state: State, pairs: bytes) -> int:
        """Record closed or filtered verdicts in bulk: `pairs` packed as `PACKED_PAIR`
        (IPv4 address << 16 | port, little-endian u64, ascending), none of them recorded
        before in this scan (the caller's walk skipped every recorded pair: nothing here
        checks, that is what makes it cheap). One row for all of them; returns their count."""
        if state not in SILENT_STATES:
            raise StoreError(f"cannot mark targets done: {state.value!r} is not a silent state")
        if len(pairs) % 8:
            raise StoreError("cannot mark targets done: pairs are not 64-bit values")
        count = len(pairs) // 8
        if not count:
            return 0
        with self._write("cannot mark targets done", scan_id):
            self._conn.execute(_INSERT_PACKED, (scan_id, state.value, count, pairs))
            self._pending += 1
        return count

    def _packed(self, scan_id: str) -> Iterator[tuple[str, int, str]]:
        """(host, port, state) of every pair in the scan's `done_packed` rows."""
        for state, blob in self._conn.execute(
                "SELECT state, pairs FROM done_packed WHERE scan_id = ?", (scan_id,)).fetchall():
            for key in _unpacked(blob):
                yield _host_of(key >> 16), key & 0xFFFF, str(state)

    def mark_done_each(
        self, scan_id: str, pairs: Iterable[tuple[str, int, State | str]]
    ) -> list[bool]:
        """`mark_done_many`, telling for each pair whether it was new: one statement when all
        are, one per pair (in order) when some pair was done before."""
        rows = [(scan_id, h, int(p), State(s).value) for h, p, s in pairs]
        if not rows:
            return []
        with self._write("cannot mark targets done", scan_id):
            self._conn.execute("SAVEPOINT store_many")
            cur = self._conn.executemany(_INSERT_DONE, rows)
            if cur.rowcount == len(rows):
                new = [True] * len(rows)
            else:
                self._conn.execute("ROLLBACK TO store_many")
                new = [self._conn.execute(_INSERT_DONE, row).rowcount == 1 for row in rows]
            self._conn.execute("RELEASE store_many")
            self._pending += len(rows)
        return new

    # -- reads --------------------------------------------------------------------------------

    def is_done(self, scan_id: str, host: str, port: int) -> bool:
        """Whether this pair's verdict is recorded (committed or in this store's open batch)."""
        with self._lock, _mapped("cannot read done targets"):
            row = self._conn.execute(
                "SELECT 1 FROM done WHERE scan_id = ? AND host = ? AND port = ?",
                (scan_id, host, port),
            ).fetchone()
            if row is not None:
                return True
            address = _ipv4_number(host)
            if address is None:
                return False
            key = address << 16 | port
            for (blob,) in self._conn.execute(
                    "SELECT pairs FROM done_packed WHERE scan_id = ?", (scan_id,)):
                keys = _unpacked(blob)
                i = bisect.bisect_left(keys, key)
                if i < len(keys) and keys[i] == key:
                    return True
        return False

    def done_pairs(self, scan_id: str) -> set[tuple[str, int]]:
        """Every (host, port) whose verdict is recorded: what a resume must skip."""
        with self._lock, _mapped("cannot read done targets"):
            self._require_scan(scan_id)
            rows = self._conn.execute(
                "SELECT host, port FROM done WHERE scan_id = ?", (scan_id,)
            ).fetchall()
            packed = [(h, p) for h, p, _ in self._packed(scan_id)]
        return {(str(h), int(p)) for h, p in rows} | set(packed)

    def results(self, scan_id: str, include_closed: bool = False) -> list[ServiceResult]:
        """The scan's results sorted by address. By default only services (not closed or
        filtered); with `include_closed`, pairs only marked done come back as bare results."""
        from vncaudit.diff import host_sort_key
        from vncaudit.models import ServiceResult

        with self._lock, _mapped("cannot read results"):
            self._require_scan(scan_id)
            sql = "SELECT result FROM results WHERE scan_id = ?"
            if not include_closed:
                sql += " AND state NOT IN " + SILENT_SQL
            out = [ServiceResult.from_dict(loads(r)) for (r,) in
                   self._conn.execute(sql, (scan_id,))]
            if include_closed:
                bare = self._conn.execute(
                    "SELECT d.host, d.port, d.state FROM done d WHERE d.scan_id = ? AND NOT "
                    "EXISTS (SELECT 1 FROM results r WHERE r.scan_id = d.scan_id "
                    "AND r.host = d.host AND r.port = d.port)",
                    (scan_id,),
                )
                out += [ServiceResult(host=h, port=int(p), state=State(s)) for h, p, s in bare]
                out += [ServiceResult(host=h, port=p, state=State(s))
                        for h, p, s in self._packed(scan_id)]
        out.sort(key=lambda r: host_sort_key(r.host, r.port))
        return out

    def _service_keys(self, scan_id: str) -> dict[tuple[str, int], tuple[str, int]]:
        """(host, port) → (diff_key, row id) of the scan's services: no JSON decoded."""
        with self._lock, _mapped("cannot read results"):
            self._require_scan(scan_id)
            rows = self._conn.execute(
                "SELECT host, port, diff_key, id FROM results WHERE scan_id = ? "
                "AND state NOT IN " + SILENT_SQL,
                (scan_id,),
            ).fetchall()
        return {(str(h), int(p)): (str(k), int(i)) for h, p, k, i in rows}

    def _load(self, row_id: int) -> ServiceResult:
        from vncaudit.models import ServiceResult

        with self._lock, _mapped("cannot read results"):
            (text,) = self._conn.execute(
                "SELECT result FROM results WHERE id = ?", (row_id,)
            ).fetchone()
        return ServiceResult.from_dict(loads(text))

    def _done_states(self, scan_id: str) -> dict[tuple[str, int], str]:
        with self._lock, _mapped("cannot read done targets"):
            rows = self._conn.execute(
                "SELECT host, port, state FROM done WHERE scan_id = ?", (scan_id,)
            ).fetchall()
            rows += self._packed(scan_id)
        return {(str(h), int(p)): str(s) for h, p, s in rows}

    def diff(self, scan_a: str, scan_b: str) -> ScanDiff:
        """What changed from scan A (older) to scan B (newer); see `ScanDiff`.

        Only services whose stored `diff_key` differs are decoded, so diffing two large,
        mostly equal scans costs little more than reading two columns.
        """
        from vncaudit.diff import diff_scans

        before = self._service_keys(scan_a)
        after = self._service_keys(scan_b)
        done_a = self._done_states(scan_a)
        done_b = self._done_states(scan_b)
        return diff_scans(scan_a, scan_b, before, after, done_a, done_b, self._load)

    # -- scan options -------------------------------------------------------------------------

    def update_options(
        self, scan_id: str, changes: Mapping[str, Any], *, commit: bool = True
    ) -> dict[str, Any]:
        """Merge `changes` into the scan's stored options (top-level keys replaced) and return
        the new options.

        The update joins the open batch, so it commits together with the results written
        before it: `vncaudit.cluster` records a finished shard this way, and a crash can never
        leave a shard marked done whose results were rolled back. With `commit` (the default)
        the batch is committed now.
        """
        try:
            _dumps(dict(changes))
        except (TypeError, ValueError) as exc:
            raise StoreError(f"scan options are not JSON-serialisable: {exc}") from exc
        with self._write("cannot update scan options", scan_id):
            (text,) = self._conn.execute(
                "SELECT options FROM scans WHERE id = ?", (scan_id,)
            ).fetchone()
            options: dict[str, Any] = {**json.loads(text), **changes}
            self._conn.execute(
                "UPDATE scans SET options = ? WHERE id = ?", (_dumps(options), scan_id)
            )
            self._pending += 1
        if commit:
            self.flush()
        return options

