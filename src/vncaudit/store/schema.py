"""The database schema, its migrations, and opening a connection to it (docs/design.md, "The
store: schema, writes, durability").

Owns: the tables, `MIGRATIONS` (``PRAGMA user_version`` n → n + 1), `migrate`, the default
file (`default_db_file`), and `connect`:
a connection with the store's pragmas (16 KiB pages for a new file, WAL, synchronous NORMAL,
foreign keys) and the schema brought to `DB_VERSION`, which `Store.open` and the early start
of a connect scan (`vncaudit.admission`) both open the database with. A new table (a ledger,
an outbox) is a new entry appended to `MIGRATIONS`; an entry is never edited once landed.
Must not: read or write scan data, or import more than `sqlite3` and the store's errors (the
early start imports it before the rest of the program).
"""

from __future__ import annotations

import os
import sqlite3

from vncaudit.store.errors import StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    Migration = Sequence[str] | Callable[[sqlite3.Connection], None]

PAGE_SIZE = 16384  # bytes, for new database files
DB_ENV_VAR = "VNCAUDIT_DB"
"""Environment variable naming the database file; wins over the XDG default."""
DB_FILENAME = "vncaudit.db"

_SCHEMA_V1: tuple[str, ...] = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE scans (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'interrupted')),
        started TEXT NOT NULL,
        finished TEXT,
        updated TEXT NOT NULL,
        targets TEXT NOT NULL,
        ports TEXT NOT NULL,
        options TEXT NOT NULL,
        tool TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        position INTEGER,
        counts TEXT
    )""",
    "CREATE INDEX scans_started ON scans (started)",
    """CREATE TABLE done (
        scan_id TEXT NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (scan_id, host, port)
    ) WITHOUT ROWID""",
    """CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        scan_id TEXT NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        state TEXT NOT NULL,
        auth_required INTEGER,
        product TEXT,
        severity TEXT,
        severity_rank INTEGER,
        diff_key TEXT NOT NULL,
        observed_at TEXT NOT NULL,
        result TEXT NOT NULL,
        UNIQUE (scan_id, host, port)
    )""",
    "CREATE INDEX results_host ON results (host, port)",
    """CREATE TABLE findings (
        scan_id TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        finding_id TEXT NOT NULL,
        severity TEXT NOT NULL,
        title TEXT NOT NULL,
        FOREIGN KEY (scan_id, host, port) REFERENCES results (scan_id, host, port)
            ON DELETE CASCADE
    )""",
    "CREATE INDEX findings_result ON findings (scan_id, host, port)",
    "CREATE INDEX findings_id ON findings (finding_id, severity)",
)

# Monitors (vncaudit.watch): each cycle is an ordinary scan linked here to its monitor; alerts
# and their deliveries (the outbox) outlive pruned scans, so they carry no foreign key to them.
_MONITORS: tuple[str, ...] = (
    """CREATE TABLE monitors (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated TEXT NOT NULL,
        next_due TEXT,
        runner TEXT,
        heartbeat TEXT
    )""",
    """CREATE TABLE monitor_cycles (
        scan_id TEXT PRIMARY KEY REFERENCES scans (id) ON DELETE CASCADE,
        monitor TEXT NOT NULL,
        started TEXT NOT NULL,
        finished TEXT,
        status TEXT NOT NULL,
        previous_scan_id TEXT,
        evaluated TEXT,
        alerts INTEGER NOT NULL DEFAULT 0,
        error TEXT
    )""",
    "CREATE INDEX monitor_cycles_monitor ON monitor_cycles (monitor, started)",
    """CREATE TABLE monitor_services (
        monitor TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        open_since TEXT NOT NULL,
        last_alert TEXT,
        PRIMARY KEY (monitor, host, port)
    ) WITHOUT ROWID""",
    """CREATE TABLE alerts (
        key TEXT PRIMARY KEY,
        monitor TEXT NOT NULL,
        scan_id TEXT NOT NULL,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        rule TEXT NOT NULL,
        severity TEXT,
        created TEXT NOT NULL,
        alert TEXT NOT NULL
    )""",
    "CREATE INDEX alerts_monitor ON alerts (monitor, created)",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        alert_key TEXT NOT NULL REFERENCES alerts (key) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error TEXT,
        last_attempt TEXT,
        created TEXT NOT NULL,
        delivered TEXT,
        UNIQUE (alert_key, channel)
    )""",
    "CREATE INDEX outbox_due ON outbox (state, next_attempt)",
)

# The connection ledger (vncaudit.budget): per (our source address, server address, port), the
# connections vncaudit made without authenticating, and the connections running processes have
# been granted but not yet recorded (their intents), so that concurrent scans never both spend
# the last free connection of a server that blacklists (data/blacklists.toml).
_BUDGET_V3: tuple[str, ...] = (
    """CREATE TABLE budget_ledger (
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        port INTEGER NOT NULL,
        rule TEXT NOT NULL,
        spent INTEGER NOT NULL DEFAULT 0,
        passes INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        blocked INTEGER NOT NULL DEFAULT 0,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        last_boot TEXT NOT NULL DEFAULT '',
        last_uptime REAL,
        cleared_at REAL,
        read_at REAL,
        read_state TEXT,
        scan_id TEXT,
        result TEXT,
        history TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (dst, port, src)
    ) WITHOUT ROWID""",
    """CREATE TABLE budget_intents (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        created REAL NOT NULL,
        pairs TEXT NOT NULL
    )""",
)

# Silent verdicts in bulk: a SYN sweep gives most of a large range `filtered` in batches of
# thousands, and one `done` row per pair cost ~12 us each, more than sending its SYN. A row
# here holds a batch packed (`PACKED_PAIR`); a pair is recorded either here or in `done`, never
# in both (the sweep that writes here skips every pair already recorded).
_DONE_PACKED_V4: tuple[str, ...] = (
    """CREATE TABLE done_packed (
        id INTEGER PRIMARY KEY,
        scan_id TEXT NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        count INTEGER NOT NULL,
        pairs BLOB NOT NULL
    )""",
    "CREATE INDEX done_packed_scan ON done_packed (scan_id)",
)

# Indexes no query of the package uses, written for every stored result: `results_host`
# (results by host across scans) and `findings_id` (findings by id across scans) cost ~10 us of
# SQLite per result (a third of its findings and results rows). Every lookup of a result goes
# by (scan_id, host, port), the table's UNIQUE index; a query across scans by host or finding
# id still works, by reading the table.
_LEAN_INDEXES_V5: tuple[str, ...] = (
    "DROP INDEX IF EXISTS results_host",
    "DROP INDEX IF EXISTS findings_id",
)

PACKED_PAIR = "<Q"
"""How `done_packed.pairs` holds each pair: IPv4 address << 16 | port, little-endian unsigned
64 bits, ascending within a row."""

MIGRATIONS: tuple[Migration, ...] = (_SCHEMA_V1, _MONITORS, _BUDGET_V3, _DONE_PACKED_V4,
                                     _LEAN_INDEXES_V5)
"""`MIGRATIONS[n]` takes a database from ``user_version`` n to n + 1. Append; never edit."""

DB_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to `DB_VERSION` in one transaction; returns the version found.

    Safe when several processes open a fresh file at once: the version is re-read under the
    write lock. A database newer than this code raises `StoreError`.
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found == DB_VERSION:
        return found
    if found > DB_VERSION:
        raise StoreError(
            f"database schema version {found} is newer than this vncaudit supports "
            f"({DB_VERSION}); upgrade vncaudit"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for version in range(found, DB_VERSION):
            step = MIGRATIONS[version]
            if callable(step):
                step(conn)
            else:
                for statement in step:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {DB_VERSION:d}")
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('db_version', ?)", (str(DB_VERSION),)
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def connect(target: str, *, timeout: float) -> tuple[sqlite3.Connection, str]:
    """A connection to the database file `target` (or ":memory:"), with the store's pragmas
    and its schema at `DB_VERSION` (`migrate`), and the journal mode in force ("wal" unless
    the file system refused it). `timeout`: seconds to wait for another writer's lock.
    Raises `sqlite3.Error`, or `StoreError` for a schema newer than this code."""
    conn = sqlite3.connect(
        target,
        timeout=timeout,
        isolation_level=None,  # BEGIN/COMMIT are issued explicitly
        check_same_thread=False,  # the Store guards it with its lock
    )
    try:
        # Only a new file takes it (before WAL is on): a stored result is ~3 KB of JSON, and
        # 16 KiB pages hold several, so a batch dirties fewer pages (measured: ~20% less
        # SQLite time per result than 4 KiB). An existing file keeps its own.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn, mode


def default_db_file(environ: Mapping[str, str]) -> str:
    """`Store.open`'s file when no path is given (`database.default_db_path`, as text):
    ``$VNCAUDIT_DB`` if set, else ``$XDG_DATA_HOME/vncaudit/vncaudit.db``
    (``~/.local/share/vncaudit/vncaudit.db`` when ``XDG_DATA_HOME`` is unset or relative)."""
    explicit = environ.get(DB_ENV_VAR, "").strip()
    if explicit:
        return os.path.expanduser(explicit)
    xdg = environ.get("XDG_DATA_HOME", "").strip()
    # The XDG spec says relative values are invalid and must be ignored.
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(
        os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "vncaudit", DB_FILENAME)
