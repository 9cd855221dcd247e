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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from vncaudit.basics import SILENT_STATES, State, Target, connect_cut
from vncaudit.blacklists import shipped as shipped_rules
from vncaudit.budget.ledger import Admission, Decision, Key, Ledger

if TYPE_CHECKING:
    from vncaudit.models import ServiceResult
    from vncaudit.payloads import BudgetNote

__all__ = ["GATE_BATCH", "PENDING", "RECORD_BATCH", "RECORD_INTERVAL", "Gate", "ScanGate",
           "ShippedDecisions", "ShippedGate", "grant_note"]

GATE_BATCH: Final = 1024  # targets admitted per ledger transaction
RECORD_BATCH: Final = 256  # results recorded per ledger transaction
RECORD_INTERVAL: Final = 0.5  # seconds a result may wait for its record

# A grant waiting for its result: the batch it came from, and its index there.
_Grant = tuple[Admission, int]


class Gate(Protocol):
    """What the engine asks of a connection ledger (`ScanGate`, or `ShippedGate` on a cluster
    worker): admit targets before connecting, hear of connections started, settle results,
    answer for denied pairs, close at the end."""

    def admit(self, targets: Sequence[Target]) -> list[Decision | None]: ...

    def started(self, target: Target) -> None: ...

    def settle(self, result: ServiceResult) -> ServiceResult: ...

    def answer(self, decision: Decision, liveness: str | None = None) -> ServiceResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ShippedDecisions:
    """The client's ledger decisions for one cluster run, sent with every shard (a worker
    writes no store): pairs not to connect to, and pairs to connect to from another address.
    Every other pair is a plain grant; its result is recorded by the client."""

    denied: frozenset[tuple[str, int]] = frozenset()
    binds: tuple[tuple[str, int, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.denied or self.binds)


PENDING: Final = "decided by the client's connection ledger"


class ShippedGate:
    """A cluster worker's gate: applies `ShippedDecisions`, counts nothing itself. A denied
    pair's result is a placeholder the client replaces with its ledger's answer."""

    def __init__(self, decisions: ShippedDecisions) -> None:
        self.denied = decisions.denied
        self.binds = {(h, p): b for h, p, b in decisions.binds}
        self.rule = shipped_rules().unknown

    def admit(self, targets: Sequence[Target]) -> list[Decision | None]:
        out: list[Decision | None] = []
        for target in targets:
            key = (target.host, target.port)
            if key in self.denied:
                out.append(Decision(target, False, "", self.rule, 0, reason=PENDING))
            elif key in self.binds:
                out.append(Decision(target, True, "", self.rule, 0, bind=self.binds[key]))
            else:
                out.append(None)
        return out

    def started(self, target: Target) -> None:
        return None

    def settle(self, result: ServiceResult) -> ServiceResult:
        return result

    def answer(self, decision: Decision, liveness: str | None = None) -> ServiceResult:
        from vncaudit.models import ServiceResult
        from vncaudit.payloads import BudgetNote, Extras

        target = decision.target
        note = BudgetNote(False, PENDING, "", "", 0, 0, liveness=liveness)
        return ServiceResult(target.host, target.port, State.TARPIT, hostname=target.hostname,
                             extra=Extras(budget=note))

    def close(self) -> None:
        return None


class ScanGate:
    """One scan's (or one job's) use of a `Ledger`. `scan_id`: where the results are stored,
    so the ledger links to them instead of keeping a copy."""

    def __init__(self, ledger: Ledger, scan_id: str | None = None, *, extra: int = 0) -> None:
        self.ledger = ledger
        self.scan_id = scan_id
        # Connections made right after the probe's own (the honeypot checks of
        # --active-checks): granted with it, or the pair is not probed at all.
        self.need = 1 + max(0, extra)
        self._pending: dict[tuple[str, int], _Grant] = {}
        self._again: dict[tuple[str, int], list[_Grant]] = {}  # a pair granted twice
        self._started: set[tuple[str, int]] = set()
        self._records: list[tuple[Decision, ServiceResult]] = []
        self._settled: list[tuple[int, Key]] = []
        self._flushed = time.monotonic()
        self.granted = self.denied = self.forced = 0

    def admit(self, targets: Sequence[Target]) -> list[Decision | None]:
        """Decide these targets, in order: None is a plain grant (connect as usual), a
        `Decision` says more (denied; connect from `bind`; granted only by --risk-lockout)."""
        admission = self.ledger.admit_batch(targets, need=self.need)
        special = admission.special
        pending, extra = self._pending, self._again
        for i, target in enumerate(targets):
            decision = special.get(i) if special else None
            if decision is None or decision.allowed:
                key = (target.host, target.port)
                if key in pending:  # the same pair twice in one scan: rare, kept aside
                    extra.setdefault(key, []).append((admission, i))
                else:
                    pending[key] = (admission, i)
                if decision is not None:
                    self.forced += decision.forced
        self.denied += sum(not d.allowed for d in special.values())
        self.granted += len(targets) - sum(not d.allowed for d in special.values())
        return [special.get(i) for i in range(len(targets))] if special else \
            [None] * len(targets)

    def started(self, target: Target) -> None:
        """A connection to `target` exists or is being made (a run cut short charges it)."""
        self._started.add((target.host, target.port))

    def settle(self, result: ServiceResult) -> ServiceResult:
        """Queue the record of a granted pair's result; returns the result, with a note when
        the ledger has something to say about it."""
        key = (result.host, result.port)
        grant = self._pending.pop(key, None)
        if grant is None:
            return result  # not granted here: the answer for a denied pair
        if self._again:
            more = self._again.get(key)
            if more:
                self._pending[key] = more.pop(0)
                if not more:
                    del self._again[key]
        admission, i = grant
        if self._started:
            self._started.discard(key)
        special = admission.special.get(i)
        need = admission.need
        if result.state in SILENT_STATES:
            # A connect the deadline ended may have reached the server: the ledger charges it.
            made = 1 if connect_cut(result.state, result.error) else 0
        else:
            made = 1 + min(need - 1, _extra_made(result))
        if special is None and made == 0:
            if admission.intent is not None:
                self._settled.extend([(admission.intent, (admission.srcs[i], result.host,
                                                          result.port))] * need)
        else:
            decision = special or admission.decision(i)
            self._records.extend([(decision, result)] * max(made, 1))
            if decision.intent is not None and need > max(made, 1):
                self._settled.extend([(decision.intent, decision.key)] * (need - max(made, 1)))
        if (len(self._records) + len(self._settled) >= RECORD_BATCH
                or time.monotonic() - self._flushed >= RECORD_INTERVAL):
            self.flush()
        note = grant_note(special) if special is not None else None
        if note is None:
            return result
        return result.with_extra(budget=note)

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
        grants = [(key, g) for key, g in self._pending.items()]
        grants += [(key, g) for key, more in self._again.items() for g in more]
        for key, (admission, i) in grants:
            (made if key in self._started else unused).append(admission.decision(i))
        self._pending.clear()
        self._again.clear()
        self._started.clear()
        self.ledger.abandon(made, unused)


def _extra_made(result: ServiceResult) -> int:
    """Connections made after the probe's own by the honeypot checks (`--active-checks`),
    which report how many."""
    checks = result.extra.honeypot_checks
    return max(0, checks.connections) if checks is not None else 0


def grant_note(decision: Decision) -> BudgetNote | None:
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
        later = ("connect from another loopback address while one has connections left"
                 if decision.local else
                 "report these facts, with their age, instead of connecting")
        why = (f"the last of {rule.free} connections from {source} this server lets pass "
               f"before it starts refusing the address; later runs {later}")
    else:
        return None
    from vncaudit.payloads import BudgetNote

    nxt = None
    if rule.limits_probes and spent >= rule.free:
        nxt = rule.block_after(spent - rule.free)
    return BudgetNote(True, why, source, rule.id, spent, rule.free, nxt)
