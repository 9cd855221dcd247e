"""The connection ledger: per (our source address, server address, port), the connections
vncaudit made without authenticating, and whether the next one would arm a blacklist.

Owns: the ``budget_ledger`` and ``budget_intents`` tables of the store and every decision made
from them. A key's row keeps the connections made since the server's tally was last cleared,
how many went beyond the free ones, when, what was read (a link to the stored result, or the
result itself), and the rule of `data/blacklists.toml` the server's product calls for ("?id"
when the product was not identified and the rule is assumed). `Ledger.admit` grants a batch
of connections in one write transaction, so concurrent scans sharing a store never both spend
a server's last free connection: a grant is an *intent* row that every process counts until
`Ledger.record` settles it; the intents of a process that died are charged as connections (it
may have made them), and so is a connect the probe's deadline ended (`basics.connect_cut`).
`Ledger.answer` is what a pair that was not probed reports instead: the facts read last with
their age, or what a half-open SYN showed, and why.

Must not: open connections, speak RFB, open the store (callers pass it), or keep product
knowledge in code (that is `vncaudit.blacklists`). Nothing here depends on elapsed time
(marks never decay), so a clock that jumps can make an age unknown, never a connection allowed.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from vncaudit import admission
from vncaudit.basics import SILENT_STATES, State, Target, connect_cut
from vncaudit.blacklists import Rule, Rules, candidates_of, handshake_key, rule_for, shipped
from vncaudit.budget.clock import Clock, Instant, clock_jump, elapsed, started_after
from vncaudit.budget.sources import ALTERNATE_LOOPBACK, SourceResolver
from vncaudit.exceptions import VncAuditError
from vncaudit.store import Store, StoreError

if TYPE_CHECKING:
    from vncaudit.models import ServiceResult
    from vncaudit.payloads import BudgetNote

log = logging.getLogger(__name__)

HISTORY_KEPT: Final = 20  # connections remembered per key (the tally itself is exact)
UNWRITABLE: Final = "connection ledger cannot be written"  # in the reason of such a denial
# Why a connection of unknown use was charged (its history entry).
ABRUPT_REASON: Final = "granted to a run that stopped abruptly"
CUT_REASON: Final = "a connect the deadline ended, which the server may have accepted"


class LedgerError(VncAuditError):
    """The ledger cannot be read or written; the message is one line."""


# ---------------------------------------------------------------------------------------------
# What the ledger knows and decides


Key = tuple[str, str, int]  # (our source address, server address, port)


@dataclass(frozen=True)
class LastRead:
    """The facts read last from a server, and when."""

    at: Instant
    state: str
    result: ServiceResult | None  # None when its stored result is gone (a pruned scan)
    scan_id: str | None = None


@dataclass(frozen=True)
class _Row:
    src: str
    dst: str
    port: int
    rule: str
    spent: int
    passes: int
    total: int
    blocked: bool
    first_at: float
    last: Instant
    cleared_at: float | None
    read_at: float | None
    read_state: str | None
    scan_id: str | None
    result: str | None
    history: str

    @property
    def key(self) -> Key:
        return (self.src, self.dst, self.port)


_ROW_COLUMNS: Final = (
    "src, dst, port, rule, spent, passes, total, blocked, first_at, last_at, last_boot, "
    "last_uptime, cleared_at, read_at, read_state, scan_id, result, history"
)


def _row(values: Sequence[Any]) -> _Row:
    (src, dst, port, rule, spent, passes, total, blocked, first_at, last_at, last_boot,
     last_uptime, cleared_at, read_at, read_state, scan_id, result, history) = values
    return _Row(str(src), str(dst), int(port), str(rule), int(spent), int(passes), int(total),
                bool(blocked), float(first_at), Instant(float(last_at), str(last_boot or ""),
                                                        last_uptime),
                cleared_at, read_at, read_state, scan_id, result, str(history))


@dataclass(frozen=True)
class Decision:
    """Whether one connection to `target` may be made, from which of our addresses, and why.

    `src` is the key's source address (what the server will see); `bind` is set when the
    connection must be made from that address explicitly (another loopback address)."""

    target: Target
    allowed: bool
    src: str
    rule: Rule
    spent: int  # connections counted for this key before this one
    in_flight: int = 0  # granted to running processes, not yet recorded
    reason: str = ""  # why not (or why only with --risk-lockout)
    bind: str | None = None
    intent: int | None = None
    forced: bool = False  # granted only because the user accepted the lockout risk
    last: LastRead | None = None
    need: int = 1  # connections granted together (a probe and the checks that follow it)
    local: bool = False  # the server is on this host: other loopback addresses can take over

    @property
    def key(self) -> Key:
        return (self.bind or self.src, self.target.host, self.target.port)

    def next_block(self) -> float | None:
        """Seconds of the block the next connection would arm (None: it arms nothing)."""
        if not self.rule.limits_probes or self.spent + self.in_flight < self.rule.free:
            return None
        return self.rule.block_after(self.spent + self.in_flight - self.rule.free)


def table_note(result: ServiceResult) -> str | None:
    """The short line a results table shows under the state of a result the ledger answered
    (or that used another source address / --risk-lockout); None for an ordinary one."""
    note = result.extra.budget
    if note is None:
        return None
    if note.probed:
        if note.reason.startswith("connected only because --risk-lockout"):
            return "probed despite its blacklist (--risk-lockout)"
        return None
    when = _age_text(float(note.age)) if note.age is not None else "earlier"
    now = "; port open now" if note.liveness == "open" else ""
    if note.read_at is None:  # the state says "not-probed"; this says why
        if UNWRITABLE in note.reason:
            return "the connection ledger cannot be written"
        return "blacklist budget spent" + now
    return f"not re-probed; read {when}{now}"


def summary_note(notes: Iterable[BudgetNote | None]) -> str | None:
    """The line under a scan's summary when the ledger answered for some of its services
    instead of connecting (None when it answered for none): how many, why, in plain words."""
    answered = [n for n in notes if n is not None and not n.probed]
    if not answered:
        return None
    unwritable = [n for n in answered if UNWRITABLE in n.reason]
    spent = [n for n in answered if UNWRITABLE not in n.reason]
    lines = []
    if spent:
        count = len(spent)
        sources = sorted({n.source for n in spent if n.source})
        ours = f"our address ({sources[0]})" if len(sources) == 1 else "our address"
        blocks = sorted({n.next_block for n in spent if n.next_block})
        block = "" if not blocks else f", for {blocks[0]:g} s" if len(blocks) == 1 else \
            f", for {blocks[0]:g} s or longer"
        read = sum(n.read_at is not None for n in spent)
        if read == count:
            shown = "shown with the facts read last and their age"
        elif read == 0:
            shown = "nothing was read from them before, so no facts are shown"
        else:
            shown = (f"{read} shown with the facts read last and their age, {count - read} "
                     "without facts (none were read before)")
        lines.append(
            f"{count} service{'' if count == 1 else 's'} not re-probed: one more connection "
            f"would make the server refuse {ours}, and everyone else coming from it{block}; "
            f"{shown} (-o json: extra.budget; --risk-lockout connects anyway, at that cost)")
    if unwritable:
        why = unwritable[0].reason.split(": ", 1)[-1].split("; ")[0]  # the ledger's error
        lines.append(f"{len(unwritable)} not probed: {why}")
    return "\n".join(lines)


def _product_words(rule: Rule, identified: bool) -> str:
    short = rule.name.split(" (")[0]
    return short if identified else f"a server that counts connections as {short} does"


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "at an unknown time (the clock went back)"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


# ---------------------------------------------------------------------------------------------
# The ledger


@dataclass
class _Intent:
    owner: str
    created: float
    keys: dict[Key, int] = field(default_factory=dict)  # unsettled grants (mine) / all (others)


@dataclass(frozen=True)
class Admission:
    """A batch's decisions, cheap for the common case: target i was granted from `srcs[i]`
    with nothing to say unless `special` has a `Decision` for i (denied, another source
    address, or granted only by --risk-lockout). Every grant belongs to `intent`."""

    targets: Sequence[Target]
    srcs: Sequence[str]
    special: Mapping[int, Decision]
    intent: int | None
    rule: Rule  # the rule of a plain grant (no history: the [unknown] rule)
    need: int = 1

    def decision(self, i: int) -> Decision:
        found = self.special.get(i)
        if found is not None:
            return found
        return Decision(self.targets[i], True, self.srcs[i], self.rule, 0, intent=self.intent,
                        need=self.need)


def _add(counts: dict[Key, int], key: Key, n: int) -> None:
    left = counts.get(key, 0) + n
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class Ledger:
    """The connection ledger of one store, for one process. Thread-safe as far as the store
    is (its calls are serialised); meant to be driven from one event loop.

    `risk_lockout`: grant connections even where the next one arms a blacklist (the user's
    explicit, informed choice); such grants say so (`Decision.forced`).
    """

    def __init__(
        self,
        store: Store,
        *,
        risk_lockout: bool = False,
        rules: Rules | None = None,
        clock: Clock | None = None,
        sources: SourceResolver | None = None,
        alternates: Sequence[str] = ALTERNATE_LOOPBACK,
    ) -> None:
        self.store = store
        self.risk_lockout = risk_lockout
        self._rules = rules  # None: the shipped rules, read when first needed
        self.clock = clock or Clock()
        self.sources = sources or SourceResolver()
        self.alternates = tuple(alternates)
        self.owner = admission.owner()
        self._mine: dict[int, _Intent] = {}  # my intents: their unsettled keys
        self._others: dict[int, _Intent] = {}  # other processes' intents (all their keys)
        self._in_flight: dict[Key, int] = {}  # grants over both, per key
        self._clock_checked = False
        self._rules_seen: dict[Any, tuple[Rule, str]] = {}
        # Grants the early start of a connect scan made before this ledger existed
        # (`adopt`): (server, port) -> (our address, intent), each used by one admission.
        self._adopted: dict[tuple[str, int], tuple[str, int]] = {}
        self.closed = False

    @property
    def rules(self) -> Rules:
        """The blacklist rules this ledger decides by (data/blacklists.toml unless given):
        read with the first decision, so a SYN scan, which admits only the pairs that answer,
        does not parse them before its first packet."""
        if self._rules is None:
            self._rules = shipped()
        return self._rules

    def adopt(self, grant: admission.FirstGrant) -> None:
        """Take over a grant of this store that `admission.admit_first` made in this process
        (the early start of a connect scan, `vncaudit.connstart`), whose connection may have
        been made: its intent is this ledger's to settle when the pair's result is recorded,
        or to charge at `close` as any of its own, and the pair's next admission is that grant
        instead of a new one."""
        src, dst, port = grant.key
        self._mine[grant.intent] = _Intent(grant.owner, grant.created, {grant.key: 1})
        _add(self._in_flight, grant.key, 1)
        self._adopted[(dst, port)] = (src, grant.intent)

    # -- reading ------------------------------------------------------------------------------

    def _rows(self, conn: Any, pairs: set[tuple[str, int]]) -> dict[Key, _Row]:
        """The ledger rows of these (server, port) pairs, for every source address."""
        out: dict[Key, _Row] = {}
        wanted = sorted(pairs)
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join(["(?, ?)"] * len(chunk))
            # Each pair looked up by the primary key (the pairs first: CROSS JOIN keeps that
            # order), so only the rows asked for are read: by address alone, a scan of many
            # ports per host would read back every other port's row of each host again.
            for values in conn.execute(
                f"WITH wanted (d, p) AS (VALUES {marks}) SELECT {_ROW_COLUMNS} FROM wanted "
                "CROSS JOIN budget_ledger ON dst = d AND port = p",
                [v for pair in chunk for v in pair],
            ):
                row = _row(values)
                out[row.key] = row
        return out

    def _rule(self, row: _Row | None) -> Rule:
        if row is None:
            return self.rules.unknown
        return self.rules.by_id(row.rule.lstrip("?")) or self.rules.unknown

    def _last_read(self, conn: Any, row: _Row | None) -> LastRead | None:
        if row is None or row.read_at is None or row.read_state is None:
            return None
        result: ServiceResult | None = None
        text = row.result
        if text is None and row.scan_id is not None:
            found = conn.execute(
                "SELECT result FROM results WHERE scan_id = ? AND host = ? AND port = ?",
                (row.scan_id, row.dst, row.port),
            ).fetchone()
            text = found[0] if found else None
        if text is not None:
            from vncaudit.models import ServiceResult

            with contextlib.suppress(ValueError, KeyError, TypeError):
                result = ServiceResult.from_dict(json.loads(text))
        # The boot clock of the read is the row's last one only when nothing came after it.
        at = row.last if row.last.wall == row.read_at else Instant(float(row.read_at))
        return LastRead(at, str(row.read_state), result, row.scan_id)

    def last_read(self, host: str, port: int, src: str | None = None) -> LastRead | None:
        """The facts read last from (host, port) from `src` (default: our address for it)."""
        key = (src or self.sources(host), host, port)
        try:
            with self.store.reading("cannot read the connection ledger") as conn:
                return self._last_read(conn, self._rows(conn, {(host, port)}).get(key))
        except StoreError as exc:
            raise LedgerError(str(exc)) from None

    # -- intents --------------------------------------------------------------------------------

    def _refresh(self, conn: Any, now: Instant) -> None:
        """Load the intents other processes added, forget the settled ones, and charge the
        intents of processes that died."""
        live = {int(i): (str(o), float(c)) for i, o, c in conn.execute(
            "SELECT id, owner, created FROM budget_intents")}
        for gone in [i for i in self._others if i not in live]:
            for key, n in self._others.pop(gone).keys.items():
                _add(self._in_flight, key, -n)
        new = [i for i, (owner, _) in live.items()
               if i not in self._others and i not in self._mine]
        dead: list[tuple[int, _Intent]] = []
        for i in new:
            owner, created = live[i]
            (text,) = conn.execute("SELECT pairs FROM budget_intents WHERE id = ?",
                                   (i,)).fetchone()
            intent = _Intent(owner, created, admission.parse_pairs(text))
            if not admission.owner_alive(owner):
                dead.append((i, intent))
                continue
            self._others[i] = intent
            for key, n in intent.keys.items():
                _add(self._in_flight, key, n)
        for i, intent in dead:
            self._charge(conn, intent, now)
            conn.execute("DELETE FROM budget_intents WHERE id = ?", (i,))
            log.warning("budget: a vncaudit process (%s) stopped without recording %d granted "
                        "connection(s); they are counted as made", intent.owner.split("|")[2],
                        sum(intent.keys.values()))

    def _charge(self, conn: Any, intent: _Intent, now: Instant,
                reason: str = ABRUPT_REASON) -> None:
        """Count the connections an intent granted, except where a record after its creation
        shows it was settled; `reason` goes into each row's history."""
        rows = self._rows(conn, {(d, p) for _, d, p in intent.keys})
        for key, n in intent.keys.items():
            row = rows.get(key)
            if row is not None and row.last.wall >= intent.created:
                continue
            entry = [now.iso(), "uncertain", reason]
            if row is None:
                conn.execute(
                    "INSERT INTO budget_ledger (src, dst, port, rule, spent, total, first_at, "
                    "last_at, last_boot, last_uptime, history) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?)",
                    (*key, "?" + self.rules.unknown.id, n, n, now.wall, now.wall, now.boot,
                     now.uptime, json.dumps([entry])),
                )
            else:
                conn.execute(
                    "UPDATE budget_ledger SET spent = spent + ?, total = total + ?, history = ? "
                    "WHERE src = ? AND dst = ? AND port = ?",
                    (n, n, _append(row.history, entry), *key),
                )

    # -- deciding -------------------------------------------------------------------------------

    def _decide(self, target: Target, src: str, rows: Mapping[Key, _Row], conn: Any,
                kind: str, pending: dict[Key, int], intent: int, need: int) -> Decision:
        key = (src, target.host, target.port)
        row = rows.get(key)
        rule = self._rule(row)
        spent = row.spent if row is not None else 0
        in_flight = self._in_flight.get(key, 0) + pending.get(key, 0)
        local = bool(self.alternates) and self.sources.is_this_host(target.host) and \
            ":" not in target.host
        if not rule.limits_probes or spent + in_flight + need <= rule.free:
            return Decision(target, True, src, rule, spent, in_flight, intent=intent, need=need,
                            local=local)
        last = self._last_read(conn, row)
        if local:
            for alt in self.alternates:
                if alt == src:
                    continue
                alt_key = (alt, target.host, target.port)
                alt_row = rows.get(alt_key)
                alt_rule = self._rule(alt_row) if alt_row is not None else rule
                alt_spent = alt_row.spent if alt_row is not None else 0
                alt_flight = self._in_flight.get(alt_key, 0) + pending.get(alt_key, 0)
                if not alt_rule.limits_probes or alt_spent + alt_flight + need <= alt_rule.free:
                    return Decision(target, True, src, alt_rule, alt_spent, alt_flight,
                                    reason=f"{src}'s budget is spent; connecting from {alt}",
                                    bind=alt, intent=intent, last=last, need=need, local=True)
        decision = Decision(target, False, src, rule, spent, in_flight, last=last, need=need,
                            local=local)
        why = self._why(decision, row, kind)
        if local and any(alt != src for alt in self.alternates):
            why += ("; so would one from any other loopback address (each has spent its "
                    "budget)")
        if self.risk_lockout:
            return replace(decision, allowed=True, forced=True, reason=why, intent=intent)
        return replace(decision, reason=why)

    def _why(self, decision: Decision, row: _Row | None, kind: str) -> str:
        rule, src = decision.rule, decision.src
        identified = row is not None and not row.rule.startswith("?")
        who = _product_words(rule, identified)
        block = decision.next_block()
        what = "not re-probed" if row is not None and row.read_at is not None else "not probed"
        if kind != "probe":
            what = f"{kind} skipped"
        if row is not None and row.blocked and decision.spent >= rule.free:
            return (f"{what}: {src} was refused by this server's blacklist; any connection "
                    f"from it now would make {who} refuse it, and everyone else coming from "
                    "it, again and longer")
        if decision.spent < rule.free:
            return (f"{what}: {decision.in_flight} connection(s) from {src} granted to running "
                    f"vncaudit processes use up its budget of {rule.free}; the next one would "
                    f"make {who} refuse it, and everyone else coming from it, for "
                    f"{block or rule.block:g} s")
        return (f"{what}: the next connection from {src} would make {who} refuse it, and "
                f"everyone else coming from it, for {block or rule.block:g} s")

    def admit(self, targets: Sequence[Target], *, kind: str = "probe",
              restarted: Mapping[tuple[str, int], Instant] | None = None,
              need: int = 1) -> list[Decision]:
        """Decide a batch of connections (one per target, in order) in one write transaction;
        the granted ones are an intent other processes count until `record` settles them.

        A ledger that cannot be written grants nothing (the conservative choice) and says
        why in each decision. `kind` names the connections in a denial ("probe", "active
        check", ...). `restarted`: when the server process behind (host, port) started, where
        it is known (`local`): a tally from before that start was reset by the restart. `need`:
        connections per target granted together or not at all (a probe and its checks)."""
        admitted = self.admit_batch(targets, kind=kind, restarted=restarted, need=need)
        return [admitted.decision(i) for i in range(len(targets))]

    def admit_batch(self, targets: Sequence[Target], *, kind: str = "probe",
                    restarted: Mapping[tuple[str, int], Instant] | None = None,
                    need: int = 1) -> Admission:
        """`admit` without a `Decision` per plain grant (a scan admits thousands at once)."""
        if self.closed:
            raise LedgerError("the connection ledger is closed")
        now = self.clock.now()
        sources = self.sources
        srcs = [sources(t.host) for t in targets]
        special: dict[int, Decision] = {}
        granted: dict[Key, int] = {}
        intent_id: int | None = None
        plain_free = self.rules.unknown.free
        in_flight = self._in_flight
        try:
            with self.store.writing("cannot reserve connections in the ledger") as conn:
                self._check_clock(conn, now)
                self._refresh(conn, now)
                rows = self._rows(conn, {(t.host, t.port) for t in targets})
                if restarted:
                    self._forget_before_restart(conn, rows, restarted, now)
                # The write lock is held: the next id is ours, and the grants can carry it.
                intent_id = admission.next_intent_id(conn)
                for i, target in enumerate(targets):
                    if self._adopted and need == 1:
                        early = self._adopted.pop((target.host, target.port), None)
                        if early is not None:  # granted before this ledger existed
                            srcs[i] = early[0]
                            special[i] = Decision(target, True, early[0], self.rules.unknown,
                                                  0, intent=early[1])
                            continue
                    key = (srcs[i], target.host, target.port)
                    if key not in rows:
                        seen = in_flight.get(key, 0) + granted.get(key, 0)
                        if seen + need <= plain_free:  # no history: the common case
                            granted[key] = granted.get(key, 0) + need
                            continue
                    decision = self._decide(target, srcs[i], rows, conn, kind, granted,
                                            intent_id, need)
                    if decision.allowed:
                        granted[decision.key] = granted.get(decision.key, 0) + need
                    special[i] = decision
                if granted:
                    admission.insert_intent(conn, intent_id, self.owner, now.wall, granted)
            self.store.flush()  # other processes must see the intent before we connect
        except StoreError as exc:
            denied = {i: self._unwritable(t, srcs[i], str(exc)) for i, t in enumerate(targets)}
            return Admission(targets, srcs, denied, None, self.rules.unknown, need)
        if granted and intent_id is not None:
            self._mine[intent_id] = _Intent(self.owner, now.wall, granted)
            for key, n in granted.items():
                _add(in_flight, key, n)
        return Admission(targets, srcs, special, intent_id if granted else None,
                         self.rules.unknown, need)

    def _forget_before_restart(self, conn: Any, rows: dict[Key, _Row],
                               restarted: Mapping[tuple[str, int], Instant],
                               now: Instant) -> None:
        """A server process that started after our last connection has a fresh tally."""
        for key, row in list(rows.items()):
            start = restarted.get((row.dst, row.port))
            if start is None or row.spent == 0 or not started_after(row.last, start):
                continue
            history = _append(row.history, [now.iso(), "reset",
                                            f"the server process started at {start.iso()}, "
                                            "after these connections"])
            conn.execute(
                "UPDATE budget_ledger SET spent = 0, passes = 0, blocked = 0, history = ? "
                "WHERE src = ? AND dst = ? AND port = ?", (history, *key))
            rows[key] = replace(row, spent=0, passes=0, blocked=False, history=history)

    def _unwritable(self, target: Target, src: str, why: str) -> Decision:
        last: LastRead | None = None
        with contextlib.suppress(StoreError):
            with self.store.reading("cannot read the connection ledger") as conn:
                rows = self._rows(conn, {(target.host, target.port)})
                last = self._last_read(conn, rows.get((src, target.host, target.port)))
        return Decision(target, False, src, self.rules.unknown, 0, last=last,
                        reason=f"not probed: the {UNWRITABLE} ({why}), so a connection could "
                        "not be counted")

    def _check_clock(self, conn: Any, now: Instant) -> None:
        """Once per ledger: one log line when the wall clock jumped since the last entry."""
        if self._clock_checked:
            return
        self._clock_checked = True
        newest = conn.execute(
            "SELECT last_at, last_boot, last_uptime FROM budget_ledger "
            "ORDER BY last_at DESC LIMIT 1").fetchone()
        if newest is None:
            return
        then = Instant(float(newest[0]), str(newest[1] or ""), newest[2])
        jump = clock_jump(then, now)
        if jump is None and now.wall < then.wall and then.boot != now.boot:
            jump = now.wall - then.wall
        if jump is not None:
            log.warning("budget: the system clock jumped %+.0f s since the ledger's last entry; "
                        "ages are taken from the boot clock where it can tell, and are "
                        "otherwise reported as unknown", jump)

    # -- recording ------------------------------------------------------------------------------

    def record(self, outcomes: Sequence[tuple[Decision, ServiceResult]],
               scan_id: str | None = None, settled: Sequence[tuple[int, Key]] = ()) -> None:
        """Record what granted connections read (a batch), and settle their intents.

        A result of a pair that was never connected (closed, filtered) only settles its grant;
        so does each (intent, key) of `settled`. With `scan_id` a result is linked to that
        scan's stored result; without, the ledger keeps it. A ledger that cannot be written
        is logged (one line): the grants stay, counted as connections, the safe side."""
        settle = list(settled)
        connected: list[tuple[Decision, ServiceResult]] = []
        cut: Counter[Key] = Counter()
        for decision, result in outcomes:
            if not decision.allowed:
                continue
            if decision.intent is not None:
                settle.append((decision.intent, decision.key))
            if result.state not in SILENT_STATES:
                connected.append((decision, result))
            elif connect_cut(result.state, result.error):
                cut[decision.key] += 1
        if not settle and not connected and not cut:
            return
        now = self.clock.now()
        try:
            with self.store.writing("cannot record connections in the ledger") as conn:
                if connected:
                    self._write(conn, connected, scan_id, now)
                if cut:
                    self._charge(conn, _Intent(self.owner, float("inf"), dict(cut)), now,
                                 CUT_REASON)
                self._settle(conn, settle)
        except StoreError as exc:
            log.warning("budget: %s; %d connection(s) stay counted as granted", exc,
                        len(connected))

    def _settle(self, conn: Any, settle: Sequence[tuple[int | None, Key]]) -> None:
        mine, in_flight = self._mine, self._in_flight
        emptied: list[int] = []
        for intent_id, key in settle:
            intent = mine.get(intent_id) if intent_id is not None else None
            if intent is None:
                continue
            left = intent.keys.get(key, 0)
            if left <= 0:
                continue
            if left == 1:
                del intent.keys[key]
                if not intent.keys and intent_id is not None:
                    emptied.append(intent_id)
            else:
                intent.keys[key] = left - 1
            _add(in_flight, key, -1)
        for intent_id in emptied:
            del mine[intent_id]
            conn.execute("DELETE FROM budget_intents WHERE id = ?", (intent_id,))

    def _write(self, conn: Any, connected: Sequence[tuple[Decision, ServiceResult]],
               scan_id: str | None, now: Instant) -> None:
        rows = self._rows(conn, {(d.target.host, d.target.port) for d, _ in connected})
        when = now.iso()
        out: dict[Key, list[Any]] = {}
        for decision, result in connected:
            key = decision.key
            previous = out.get(key)
            row = rows.get(key)
            rule, rule_text = self._rule_of(result, row)
            values = previous or (
                [row.rule, row.spent, row.passes, row.total, row.blocked, row.first_at,
                 row.cleared_at, row.read_at, row.read_state, row.scan_id, row.result,
                 row.history] if row is not None else
                [rule_text, 0, 0, 0, False, now.wall, None, None, None, None, None, "[]"])
            (_, spent, passes, total, blocked, first_at, cleared_at, read_at, read_state,
             link, kept, history) = values
            total += 1
            authenticated = result.rfb is not None and result.rfb.security_result == "ok"
            note = result.state.value
            if authenticated and rule.limits_probes:
                spent, passes, blocked, cleared_at = 0, 0, False, now.wall
                note += ", authenticated: tally cleared"
            elif result.state is State.BLACKLISTED:
                # Refused: the address's tally is at the threshold, from whoever. Any later
                # connection that passes arms a block, so the free budget is gone.
                blocked = True
                spent = max(spent + 1, rule.free)
            else:
                spent += 1
                if rule.limits_probes and spent > rule.free:
                    passes += 1
            if result.state is not State.BLACKLISTED or read_at is None:
                # A refusal is a fact worth reporting only when it is the only one read.
                read_at, read_state = now.wall, result.state.value
                link = scan_id
                kept = None if scan_id is not None else json.dumps(
                    result.to_dict(), separators=(",", ":"), ensure_ascii=True)
            if decision.forced:
                note += ", granted by --risk-lockout"
            history = _append(history, [when, note, decision.target.hostname or ""])
            out[key] = [rule_text, spent, passes, total, blocked, first_at, cleared_at, read_at,
                        read_state, link, kept, history]
        conn.executemany(
            f"INSERT OR REPLACE INTO budget_ledger ({_ROW_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*key, rule_id, spent, passes, total, int(blocked), first_at, now.wall, now.boot,
              now.uptime, cleared_at, read_at, read_state, link, kept, history)
             for key, (rule_id, spent, passes, total, blocked, first_at, cleared_at, read_at,
                       read_state, link, kept, history) in out.items()],
        )

    def _rule_of(self, result: ServiceResult, row: _Row | None) -> tuple[Rule, str]:
        """The rule a result calls for, and how the ledger stores it ("?id": assumed, the
        product not being identified). Remembered per handshake (and product, when the caller
        named one): a scan meets the same few handshakes thousands of times."""
        if result.rfb is None:
            rule = self._rule(row)
            return rule, row.rule if row is not None else "?" + rule.id
        product = result.product
        key = (handshake_key(result), product.name if product else None,
               product.version if product else None)
        known = self._rules_seen.get(key)
        if known is not None:
            return known
        if product is None:
            from vncaudit import fingerprint  # lazily: only results that read RFB need it

            # The backend's product (a web front end's rule is its backend's), worked out
            # here without the grading's memo: this runs once per distinct handshake.
            product = fingerprint.identify_backend(result)
        named = (self.rules.for_product(product.name, product.version)
                 if product.name != "unknown" else None)
        identified = named is not None
        rule = named if named is not None else rule_for(None, candidates_of(result), self.rules)
        if len(self._rules_seen) >= 4096:
            self._rules_seen.clear()
        self._rules_seen[key] = found = (rule, rule.id if identified else "?" + rule.id)
        return found

    def close_grants(self, decisions: Sequence[Decision]) -> None:
        """Settle grants whose use is unknown (a check that failed half-way): charged."""
        self.abandon(decisions, ())

    def unreserved(self, target: Target) -> Decision:
        """A connection another process made without asking first (a cluster worker's first
        contact with a server the ledger had never seen), to be recorded all the same."""
        return Decision(target, True, self.sources(target.host), self.rules.unknown, 0)

    def history(self) -> list[tuple[str, int]]:
        """Every (server, port) the ledger has a row for, from any source address."""
        try:
            with self.store.reading("cannot read the connection ledger") as conn:
                return [(str(d), int(p)) for d, p in conn.execute(
                    "SELECT DISTINCT dst, port FROM budget_ledger")]
        except StoreError as exc:
            raise LedgerError(str(exc)) from None

    def release(self, decisions: Iterable[Decision], count: int | None = None) -> None:
        """Give back grants whose connections were never made (a scan stopped first, a check
        that needed fewer): `count` of each decision's `need` (default: all)."""
        settle = [(d.intent, d.key) for d in decisions if d.allowed and d.intent is not None
                  for _ in range(d.need if count is None else count)]
        if not settle:
            return
        try:
            with self.store.writing("cannot release connections in the ledger") as conn:
                self._settle(conn, settle)
        except StoreError as exc:
            log.warning("budget: %s", exc)

    # -- answering ------------------------------------------------------------------------------

    def answer(self, decision: Decision, liveness: str | None = None) -> ServiceResult:
        """What a pair that was not probed reports: the facts read last (with their age) or,
        without any, only what is known (`liveness`: "open" from a half-open SYN), and why."""
        from vncaudit.models import ServiceResult
        from vncaudit.payloads import BudgetNote

        target = decision.target
        last = decision.last
        now = self.clock.now()
        age = elapsed(last.at, now) if last is not None else None
        reason = decision.reason
        if last is not None:
            reason += f"; facts read {_age_text(age)} ({last.at.iso()})"
            if last.result is None:
                reason += f", state {last.state} (the stored result is no longer kept)"
        if liveness == "open":
            reason += "; the port answers a half-open SYN now"
        note = BudgetNote(False, reason, decision.src, decision.rule.id, decision.spent,
                          decision.rule.free, decision.next_block(),
                          last.at.iso() if last is not None else None, age, liveness)
        base = last.result if last is not None else None
        if base is None:
            # Nothing read before: no state can be claimed but the one the ledger kept, or,
            # with none, "not-probed" with the reason as its error (nothing was sent).
            state = State(last.state) if last is not None else State.NOT_PROBED
            base = ServiceResult(target.host, target.port, state,
                                 error=None if last is not None else reason)
        return replace(base.with_extra(budget=note), host=target.host, port=target.port,
                       hostname=target.hostname, elapsed=0.0, error=base.error)

    # -- closing ------------------------------------------------------------------------------

    def abandon(self, made: Iterable[Decision], unused: Iterable[Decision]) -> None:
        """Settle grants of a run cut short: `made` may have connected without a record (they
        are charged as connections), `unused` never got as far as a connection."""
        made = [d for d in made if d.allowed and d.intent is not None]
        unused = [d for d in unused if d.allowed and d.intent is not None]
        if not made and not unused:
            return
        now = self.clock.now()
        try:
            with self.store.writing("cannot settle connections in the ledger") as conn:
                if made:
                    charged = Counter(d.key for d in made for _ in range(d.need))
                    self._charge(conn, _Intent(self.owner, float("inf"), dict(charged)), now)
                self._settle(conn, [(d.intent, d.key) for d in (*made, *unused)
                                    for _ in range(d.need)])
            self.store.flush()
        except StoreError as exc:
            log.warning("budget: %s; this run's grants stay counted", exc)

    def close(self) -> None:
        """Drop this ledger's intents. A grant still unsettled may have been used: it is
        charged as a connection (`release` first what was certainly not)."""
        if self.closed:
            return
        self.closed = True
        if not self._mine:
            return
        now = self.clock.now()
        leftover: dict[Key, int] = {}
        for intent in self._mine.values():
            for key, n in intent.keys.items():
                _add(leftover, key, n)
        try:
            with self.store.writing("cannot close the connection ledger") as conn:
                if leftover:
                    self._charge(conn, _Intent(self.owner, float("inf"), leftover), now)
                for intent_id in self._mine:
                    conn.execute("DELETE FROM budget_intents WHERE id = ?", (intent_id,))
            self.store.flush()
        except StoreError as exc:
            log.warning("budget: %s; this run's grants stay counted", exc)
        self._mine.clear()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def _append(history: str, entry: list[Any]) -> str:
    """The history JSON with `entry` added (the oldest dropped past HISTORY_KEPT)."""
    if history == "[]":  # a new key: most records of a large scan
        return "[" + _JSON.encode(entry) + "]"
    try:
        items = json.loads(history)
        if not isinstance(items, list):
            items = []
    except ValueError:
        items = []
    items.append(entry)
    return _JSON.encode(items[-HISTORY_KEPT:])
