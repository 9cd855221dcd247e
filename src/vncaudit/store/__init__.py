"""The scan database: SQLite (WAL) holding scans, results, findings and which targets are done.

It is the single source of truth for a scan: a scan killed at any moment (even ``kill -9``)
reopens uncorrupted, loses at most the last uncommitted batch, and a resume that skips
`Store.done_pairs` neither loses nor repeats a (host, port). The rules that make this so (the
schema, the write-once rule, batching, checkpoints, durability, concurrency) are in
docs/design.md, "The store: schema, writes, durability".

Owns: `schema` (tables and `MIGRATIONS`), `database` (the `Store`: writes and queries),
`errors`. The scan diff is `vncaudit.diff`; its types are re-exported here. Every name is
imported from its part when first named. Must not: probe, grade, render or print anything, or
use anything but the standard library.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vncaudit.diff import Change, ScanDiff, ServiceDiff, compare_results
    from vncaudit.store.database import (
        BUSY_TIMEOUT,
        DEFAULT_BATCH_INTERVAL,
        DEFAULT_BATCH_SIZE,
        PAGE_SIZE,
        SCAN_STATUSES,
        SILENT_SQL,
        ScanRecord,
        ScanStatus,
        Store,
        default_db_path,
    )
    from vncaudit.store.errors import StoreError, UnknownScanError
    from vncaudit.store.schema import DB_ENV_VAR, DB_FILENAME, DB_VERSION, MIGRATIONS, migrate

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

# name -> the module that defines it. Looked up when first named: the early start of a connect
# scan opens the database through `schema` alone (`vncaudit.admission`), before the `Store`,
# dataclasses and the result types are imported; the diff's names come with the first diff.
_PARTS = {
    **dict.fromkeys(("BUSY_TIMEOUT", "DEFAULT_BATCH_INTERVAL",
                     "DEFAULT_BATCH_SIZE", "PAGE_SIZE", "SCAN_STATUSES", "SILENT_SQL",
                     "ScanRecord", "ScanStatus", "Store", "default_db_path"),
                    "vncaudit.store.database"),
    **dict.fromkeys(("StoreError", "UnknownScanError"), "vncaudit.store.errors"),
    **dict.fromkeys(("DB_VERSION", "DB_ENV_VAR", "DB_FILENAME", "MIGRATIONS", "migrate"),
                    "vncaudit.store.schema"),
    **dict.fromkeys(("Change", "ScanDiff", "ServiceDiff", "compare_results"), "vncaudit.diff"),
}


def __getattr__(name: str) -> object:
    module = _PARTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
