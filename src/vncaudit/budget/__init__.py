"""The blacklist budget: vncaudit never makes the connection that would make a server refuse
an address (and everyone behind it), and still answers when it does not connect.

TigerVNC and RealVNC count every connection that does not authenticate, per client address,
and never forget: four pass and arm nothing, the fifth arms a block (docs/rfb.md §10; the
rules per product are data, `vncaudit.blacklists`). This package keeps the count across runs
and processes, in the store:

* `ledger`: the `Ledger` (admit, record, answer) over the ``budget_*`` tables;
* `gate`: `ScanGate`, how the engine uses the ledger for a whole scan;
* `clock`: instants that survive a wall clock jumping; `sources`: our source address for a
  destination, known before sending.

Must not: open connections or speak RFB (the engine and the probe do, after asking).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vncaudit.budget.clock import Clock, Instant, clock_jump, elapsed
from vncaudit.budget.gate import (
    GATE_BATCH,
    Gate,
    ScanGate,
    ShippedDecisions,
    ShippedGate,
    grant_note,
)
from vncaudit.budget.ledger import (
    Decision,
    LastRead,
    Ledger,
    LedgerError,
    summary_note,
    table_note,
)
from vncaudit.budget.sources import ALTERNATE_LOOPBACK, SourceResolver

if TYPE_CHECKING:
    from vncaudit.payloads import BudgetNote

__all__ = [
    "ALTERNATE_LOOPBACK",
    "GATE_BATCH",
    "BudgetNote",
    "Clock",
    "Decision",
    "Gate",
    "Instant",
    "LastRead",
    "Ledger",
    "LedgerError",
    "ScanGate",
    "ShippedDecisions",
    "ShippedGate",
    "SourceResolver",
    "clock_jump",
    "elapsed",
    "grant_note",
    "summary_note",
    "table_note",
]


def __getattr__(name: str) -> Any:
    # `BudgetNote` is `vncaudit.payloads`' (a result's payload), looked up when first named:
    # the ledger admits a scan's targets before any result type is needed.
    if name == "BudgetNote":
        from vncaudit.payloads import BudgetNote

        globals()[name] = BudgetNote
        return BudgetNote
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
