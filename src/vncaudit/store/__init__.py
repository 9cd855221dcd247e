"""The scan database: SQLite (WAL) holding scans, results, findings and which targets are done.

It is the single source of truth for a scan: a scan killed at any moment (even ``kill -9``)
reopens uncorrupted, loses at most the last uncommitted batch, and a resume that skips
`Store.done_pairs` neither loses nor repeats a (host, port). The rules that make this so (the
schema, the write-once rule, batching, checkpoints, durability, concurrency) are in
docs/design.md, "The store: schema, writes, durability".

Owns: `schema` (tables and `MIGRATIONS`), `database` (the `Store`: writes and queries),
`errors`. The scan diff is `vncaudit.diff`; its types are re-exported here (imported when
first named). Must not: probe, grade, render or print anything, or use anything but the
standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vncaudit.store.database import (
    BUSY_TIMEOUT,
    DB_ENV_VAR,
    DB_FILENAME,
    DEFAULT_BATCH_INTERVAL,
    DEFAULT_BATCH_SIZE,
    PAGE_SIZE,
    SCAN_STATUSES,
    ScanRecord,
    ScanStatus,
    Store,
    default_db_path,
)
from vncaudit.store.errors import StoreError, UnknownScanError
from vncaudit.store.schema import DB_VERSION, MIGRATIONS, SILENT_SQL, Migration, migrate

if TYPE_CHECKING:
    from vncaudit.diff import Change, ScanDiff, ServiceDiff, compare_results

__all__ = [
    "BUSY_TIMEOUT",
    "DB_ENV_VAR",
    "DB_FILENAME",
    "DB_VERSION",
    "DEFAULT_BATCH_INTERVAL",
    "DEFAULT_BATCH_SIZE",
    "MIGRATIONS",
    "PAGE_SIZE",
    "SCAN_STATUSES",
    "SILENT_SQL",
    "Change",
    "Migration",
    "ScanDiff",
    "ScanRecord",
    "ScanStatus",
    "ServiceDiff",
    "Store",
    "StoreError",
    "UnknownScanError",
    "compare_results",
    "default_db_path",
    "migrate",
]


_DIFF_NAMES = frozenset({"Change", "ScanDiff", "ServiceDiff", "compare_results"})


def __getattr__(name: str) -> Any:
    # The diff's names are `vncaudit.diff`'s, looked up when first used: opening the store for
    # a scan does not import the diff or the result types.
    if name in _DIFF_NAMES:
        from vncaudit import diff

        value = getattr(diff, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
