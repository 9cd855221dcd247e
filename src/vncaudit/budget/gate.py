"""The ledger as a scan uses it: targets are admitted a batch at a time before any connection,
results come back to be recorded, and a run cut short settles what it leaves.

Owns: `ScanGate` (what the engine calls), with the record batching (one ledger write per
`RECORD_BATCH` results or `RECORD_INTERVAL` seconds, and at the end) and the note a probed
result carries when it spent a server's last free connection, used another source address, or
was granted only by --risk-lockout. Must not: open connections or decide anything itself
(`Ledger` decides).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from vncaudit.budget.ledger import Admission, BudgetNote, Decision, Key, Ledger
from vncaudit.models import SILENT_STATES, ServiceResult, Target

__all__ = ["GATE_BATCH", "RECORD_BATCH", "RECORD_INTERVAL", "ScanGate"]

GATE_BATCH: Final = 1024  # targets admitted per ledger transaction
RECORD_BATCH: Final = 256  # results recorded per ledger transaction
RECORD_INTERVAL: Final = 0.5  # seconds a result may wait for its record

# A grant waiting for its result: the batch it came from, and its index there.
_Grant = tuple[Admission, int]


class ScanGate:
    """One scan's (or one job's) use of a `Ledger`. `scan_id`: where the results are stored,
    so the ledger links to them instead of keeping a copy."""

    def __init__(self, ledger: Ledger, scan_id: str | None = None) -> None:
        self.ledger = ledger
        self.scan_id = scan_id
        self._pending: dict[tuple[str, int], list[_Grant]] = {}
        self._started: set[tuple[str, int]] = set()
        self._records: list[tuple[Decision, ServiceResult]] = []
        self._settled: list[tuple[int, Key]] = []
        self._flushed = time.monotonic()
        self.granted = self.denied = self.forced = 0

    def admit(self, targets: Sequence[Target]) -> list[Decision | None]:
        """Decide these targets, in order: None is a plain grant (connect as usual), a
        `Decision` says more (denied; connect from `bind`; granted only by --risk-lockout)."""
        admission = self.ledger.admit_batch(targets)
        out: list[Decision | None] = []
        pending = self._pending
        for i, target in enumerate(targets):
            decision = admission.special.get(i)
            if decision is None or decision.allowed:
                key = (target.host, target.port)
                waiting = pending.get(key)
                if waiting is None:
                    pending[key] = [(admission, i)]
                else:
                    waiting.append((admission, i))
                self.granted += 1
                if decision is not None:
                    self.forced += decision.forced
            else:
                self.denied += 1
            out.append(decision)
        return out

    def started(self, target: Target) -> None:
        """A connection to `target` exists or is being made (a run cut short charges it)."""
        self._started.add((target.host, target.port))

    def settle(self, result: ServiceResult) -> ServiceResult:
        """Queue the record of a granted pair's result; returns the result, with a note when
        the ledger has something to say about it."""
        key = (result.host, result.port)
        waiting = self._pending.get(key)
        if waiting is None:
            return result  # not granted here: the answer for a denied pair
        admission, i = waiting.pop(0)
        if not waiting:
            del self._pending[key]
        self._started.discard(key)
        special = admission.special.get(i)
        if special is None and result.state in SILENT_STATES and admission.intent is not None:
            self._settled.append((admission.intent, (admission.srcs[i], result.host,
                                                     result.port)))
        else:
            self._records.append((special or admission.decision(i), result))
        if (len(self._records) + len(self._settled) >= RECORD_BATCH
                or time.monotonic() - self._flushed >= RECORD_INTERVAL):
            self.flush()
        note = _note(special) if special is not None else None
        if note is None:
            return result
        return replace(result, extra={**result.extra, "budget": note.to_dict()})

    def answer(self, decision: Decision, liveness: str | None = None) -> ServiceResult:
        return self.ledger.answer(decision, liveness)

    def flush(self) -> None:
        if self._records or self._settled:
            self.ledger.record(self._records, self.scan_id, self._settled)
            self._records, self._settled = [], []
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Record what is buffered; grants whose connection was started but never recorded
        are charged, the others given back."""
        self.flush()
        made: list[Decision] = []
        unused: list[Decision] = []
        for key, waiting in self._pending.items():
            for admission, i in waiting:
                (made if key in self._started else unused).append(admission.decision(i))
        self._pending.clear()
        self._started.clear()
        self.ledger.abandon(made, unused)


def _note(decision: Decision) -> BudgetNote | None:
    """What a probed result says about its grant, when there is something worth saying."""
    rule = decision.rule
    spent = decision.spent + decision.in_flight + 1
    source = decision.bind or decision.src
    if decision.forced:
        block = rule.block_after(max(0, spent - rule.free - 1))
        why = (f"connected only because --risk-lockout was given: this connection from "
               f"{source} may have made the server refuse it, and everyone else coming from "
               f"it, for {block:g} s")
    elif decision.bind is not None:
        why = decision.reason
    elif rule.limits_probes and spent >= rule.free:
        why = (f"the last of {rule.free} connections from {source} that arm nothing on this "
               "server; later runs report these facts, with their age, instead of connecting")
    else:
        return None
    nxt = None
    if rule.limits_probes and spent >= rule.free:
        nxt = rule.block_after(spent - rule.free)
    return BudgetNote(True, why, source, rule.id, spent, rule.free, nxt)
