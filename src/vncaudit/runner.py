"""Run a stored scan end to end: the library entry point behind ``vncaudit scan``, the web
service's jobs and ``vncaudit watch`` cycles.

Owns: `StoredScan` (create the scan record from a `ScanSpec`, or reopen one for a resume; run
the engine, or the cluster, with the spec's options; write every verdict through one
`ResultWriter`; mark the record finished, or interrupted when the run stops early), and the
step after each probe that the spec asks for (web front-end detection, active checks).

Must not: parse command-line options, print, or draw progress (callers pass `on_result` and
`progress`); decide whether a target may be scanned (the caller built the spec or targets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from vncaudit.basics import SILENT_STATES, State, Target
from vncaudit.discovery import Mode
from vncaudit.engine import Progress, ScanOptions, iter_results
from vncaudit.engine import run as run_loop
from vncaudit.exceptions import UsageError
from vncaudit.jsontext import dumps_both
from vncaudit.probe_options import ProbeOptions
from vncaudit.spec import ScanSpec
from vncaudit.store import ScanRecord, Store, StoreError
from vncaudit.store.writer import MAX_AGE, ResultWriter

if TYPE_CHECKING:
    from vncaudit.active import ActiveOptions
    from vncaudit.budget import Decision, Gate, Ledger
    from vncaudit.cluster import ClusterSpec, ShardedRun
    from vncaudit.models import ServiceResult
    from vncaudit.report.spool import JsonSpool
    from vncaudit.targets import TargetSpace

__all__ = ["Grader", "OnResult", "PostProbe", "StoredScan", "read_wordlist"]

log = logging.getLogger(__name__)

# The result type by name: it is imported with the first result, not before the first packet.
PostProbe = Callable[["ServiceResult"], Awaitable["ServiceResult"]]
Grader = Callable[["ServiceResult"], "ServiceResult"]
OnResult = Callable[["ServiceResult"], None]

MAX_WORDLIST_LINE: Final = 4096  # a VNC password counts 8 bytes; a longer line is not one


class ScanFinishedError(UsageError):
    """A resume of a scan that already finished."""


@dataclass
class StoredScan:
    """A scan record in the store with its spec, ready to run (`run` / `run_async`).

    Build it with `create` (a new scan) or `resume` (an interrupted or killed one). `done`
    holds the pairs already recorded (empty for a new scan); `sharded` is what a cluster
    run did, once it ran.
    """

    store: Store
    scan_id: str
    spec: ScanSpec
    space: TargetSpace | None
    done: frozenset[tuple[str, int]]
    active: ActiveOptions | None  # None: no active check asked for
    sharded: ShardedRun | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: Store,
        spec: ScanSpec,
        *,
        password: str | None = None,
        wordlist: Sequence[str] | None = None,
        labels: Mapping[str, Any] | None = None,
        targets: Sequence[str] | None = None,
        tool: str | None = None,
    ) -> StoredScan:
        """Check everything (raw-socket rights for syn, the password list, every target),
        then record a new running scan. Nothing is written when a check fails.

        `password` (never stored) and `wordlist` (the words, when the caller has read
        `spec.active.wordlist` already) go with the run. `labels` are kept beside the spec in
        the scan's options (``{"source": "watch", "monitor": name}``). `targets` replaces the
        spec's target space by a description of targets the caller iterates itself (the web
        service: the policy's literal addresses, given to `run_async`).
        """
        _check_rights(spec)
        active = active_options(spec, password, wordlist)
        space = None
        if targets is None:
            space = spec.target_space()
            spec = replace(spec, seed=space.seed)
            targets = space.describe()
        options = {**(labels or {}), **spec.to_options()}
        scan_id = store.create_scan(targets, spec.ports, options, tool=tool)
        return cls(store, scan_id, spec, space, frozenset(), active)

    @classmethod
    def resume(cls, store: Store, scan_id: str, *, password: str | None = None) -> StoredScan:
        """Reopen an interrupted or killed scan with the spec it was stored with. Raises
        `UnknownScanError`, `ScanFinishedError`, or `UsageError` (targets no longer readable,
        a password needed again)."""
        record = store.require_scan(scan_id)
        if record.status == "finished":
            raise ScanFinishedError(f"scan {scan_id} is already finished; nothing to resume")
        spec = ScanSpec.from_options(record.options)
        if spec.active.uses_password and password is None:
            raise UsageError(f"scan {scan_id} was started with --password, which is not "
                             "stored; give it again to resume")
        _check_rights(spec)
        active = active_options(spec, password, None)
        space = spec.target_space()
        store.reopen_scan(scan_id)
        done = frozenset(store.done_pairs(scan_id))
        return cls(store, scan_id, spec, space, done, active)

    # -- what it runs ----------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Targets still to probe."""
        return len(self.space) - len(self.done) if self.space is not None else 0

    def pending(self) -> Iterable[Target]:
        """The targets still to probe, in the scan's seeded order (a walk the SYN sender
        reads in blocks)."""
        if self.space is None:
            return ()
        return self.space.walk(skip=self.done)

    def engine_options(self, post_probe: PostProbe | None = None,
                       ledger: Callable[[], Ledger] | None = None) -> ScanOptions:
        """The engine's options for this spec; `post_probe` replaces the spec's own step,
        whose connections are counted in the ledger `ledger` returns when one is given."""
        spec = self.spec
        probe = ProbeOptions(timeout=spec.timeout, read_server_init=not spec.no_init)
        own = post_probe is None
        return ScanOptions(
            concurrency=spec.concurrency, rate=spec.rate, discovery=spec.discovery,
            retries=spec.retries, probe=probe,
            post_probe=post_probe or post_probe_for(spec, self.active, probe, ledger),
            post_probe_wanted=post_probe_wanted(spec, self.active) if own else None)

    def ledger(self) -> Ledger:
        """The store's connection ledger (`vncaudit.budget`) with the spec's --risk-lockout:
        every connection of a run is admitted there first, none arms a server's blacklist."""
        from vncaudit.budget import Ledger

        return Ledger(self.store, risk_lockout=self.spec.risk_lockout)

    def _adopt_early(self, ledger: Ledger) -> None:
        """The grant of this process's early connect (`vncaudit.connstart`), when it was made
        in this scan's store, becomes `ledger`'s: the connect sweep takes its connection over
        when it meets the pair, and the ledger settles, or charges, its intent."""
        if self.spec.discovery is not Mode.CONNECT:
            return
        from vncaudit import connstart

        path = self.store.path
        grant = connstart.claim_grant(str(path) if path is not None else None)
        if grant is not None:
            ledger.adopt(grant)
            grant.close()  # the store's own connection stays open: no checkpoint here

    def grader(self) -> Grader:
        """`vncaudit.assess.assess` with the spec's exposure (by address when it has none)."""
        from vncaudit.assess import Exposure, assess

        if self.spec.exposure is None:
            return assess
        chosen = Exposure(self.spec.exposure)
        return lambda result: assess(result, exposure=chosen)

    # -- running ---------------------------------------------------------------------------

    async def run_async(
        self,
        *,
        targets: Iterable[Target] | None = None,
        post_probe: PostProbe | None = None,
        grade: Grader | None = None,
        on_result: OnResult | None = None,
        progress: Progress | None = None,
        max_age: float = MAX_AGE,
        spool: JsonSpool | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> ScanRecord:
        """Probe `targets` (default: `pending()`), grade each answer (`grade`, default
        `grader()`), hand it to `on_result`, write it; then mark the scan finished and return
        its record. If anything stops the run (an error, cancellation, Ctrl-C) what was probed
        is written, the scan is marked interrupted and the exception goes on. Closed and
        filtered verdicts a SYN sweep gives in bulk go straight to the store, not through
        `on_result` (`progress` counts them).

        A verdict waits at most `max_age` seconds before it is written and committed, even
        when the results pause (a reader, the web page, sees it by then). Every connection
        goes through the connection ledger (`ledger()`), a denied pair's result being the
        ledger's answer. With `spool` (the -o json report built as the scan runs) every
        result that is not closed or filtered goes there too, its JSON made once for the
        report and the stored row.

        While a SYN sweep's last window waits for late answers (`engine.iter_results`'s
        `on_idle`), what is written so far is committed and checkpointed into the database
        file, so that closing the store after the window has little left to copy; then
        `on_idle` runs, the caller's own work for that moment.

        Length: the ledger opened on demand, the commit timer and the idle step are small
        closures over this run's one writer and ledger, which the loop and the clean-up
        share; apart, each would take all of them as arguments."""
        opened: list[Ledger] = []

        def ledger() -> Ledger:
            if not opened:
                opened.append(self.ledger())
                self._adopt_early(opened[0])
            return opened[0]

        def scan_gate() -> Gate:
            from vncaudit.budget import ScanGate

            return ScanGate(ledger(), self.scan_id)

        options = self.engine_options(post_probe, ledger)
        # The connections after the probe (the active checks, the honeypot checks among them)
        # are granted by `post_probe_for`'s own admission, from one source address.
        gate = _GateOnDemand(scan_gate) if self.spec.discovery is Mode.SYN else scan_gate()
        loop = asyncio.get_running_loop()
        writer = ResultWriter(self.store, self.scan_id, max_age=max_age)
        timer: list[asyncio.TimerHandle | None] = [None]

        def written() -> None:
            timer[0] = None
            if writer.pending:
                writer.flush(commit=True)

        def idle() -> None:
            writer.flush()
            self.store.checkpoint()
            if on_idle is not None:
                on_idle()

        try:
            async for result in iter_results(self.pending() if targets is None else targets,
                                             options, progress, writer.add_marks, gate=gate,
                                             on_idle=idle):
                if result.state not in SILENT_STATES:
                    # Imported with the first result to grade, not before the first packet.
                    grade = grade or self.grader()
                    result = grade(result)
                if on_result is not None:
                    on_result(result)
                if spool is not None and result.state not in SILENT_STATES:
                    compact, indented = dumps_both(result.to_dict())
                    spool.add(result, indented)
                    writer.add(result, compact)
                else:
                    writer.add(result)
                if timer[0] is None:
                    timer[0] = loop.call_later(max_age, written)
            writer.flush()
        except BaseException:
            self._interrupted(writer)
            raise
        finally:
            if timer[0] is not None:
                timer[0].cancel()
            if opened:
                opened[0].close()
        return self.store.finish_scan(self.scan_id)

    def run(
        self,
        *,
        on_result: OnResult | None = None,
        progress: Progress | None = None,
        cluster: ClusterSpec | None = None,
        spool: JsonSpool | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> ScanRecord:
        """`run_async` in an event loop of its own (`engine.run`: uvloop, lean GC), or, with
        `cluster`, sharded over Dask (`vncaudit.cluster`; `sharded` says what it did). Raises
        `ClusterError` when shards are left unfinished (the scan is then interrupted).
        `spool`, `on_idle`: see `run_async` (on a cluster, `spool` gets each newly stored
        result; `on_idle` is not called)."""
        if cluster is None:
            return run_loop(self.run_async(on_result=on_result, progress=progress,
                                           spool=spool, on_idle=on_idle))
        if spool is not None:
            on_result = _spooling(spool, on_result)
        from vncaudit import cluster as cluster_mod

        if self.space is None:
            raise UsageError("a sharded scan needs the spec's own targets")
        ledger = self.ledger()
        try:
            # The options go to workers, which write no store: there the checks after the
            # probe are not counted (README, Connection budget); the probes themselves are.
            self.sharded = run = cluster_mod.scan_sharded(
                self.space, self.engine_options(), self.store, self.scan_id, cluster,
                ledger=ledger, on_result=on_result, progress=progress,
                exposure=self.spec.exposure)
        except BaseException:
            self._interrupted(None)
            raise
        finally:
            ledger.close()
        if run.failed:
            self._interrupted(None)
            index, why = sorted(run.failed.items())[0]
            raise cluster_mod.ClusterError(
                f"{len(run.failed)} of {run.shards} shards did not finish (shard {index}: "
                f"{why}); resume with: vncaudit scan --resume {self.scan_id} --workers N")
        return self.store.finish_scan(self.scan_id)

    def _interrupted(self, writer: ResultWriter | None) -> None:
        # The exception on its way out matters more than a store that fails now as well.
        with contextlib.suppress(StoreError):
            if writer is not None:
                writer.flush()
        with contextlib.suppress(StoreError):
            self.store.finish_scan(self.scan_id, "interrupted")


class _GateOnDemand:
    """SYN discovery's connection gate: the ledger (`vncaudit.budget`, ~40 ms of imports and
    set-up) is opened for the first pair that answered, which the engine admits after the
    SYNs went out, instead of before the first SYN. Until a pair is admitted there is nothing
    to settle: a closed verdict passes as it is, as `ScanGate.settle` passes a pair it never
    granted. Every admission still comes before its connection."""

    def __init__(self, make: Callable[[], Gate]) -> None:
        self._make = make
        self._gate: Gate | None = None

    def _opened(self) -> Gate:
        if self._gate is None:
            self._gate = self._make()
        return self._gate

    def admit(self, targets: Sequence[Target]) -> list[Decision | None]:
        return self._opened().admit(targets)

    def started(self, target: Target) -> None:
        self._opened().started(target)

    def settle(self, result: ServiceResult) -> ServiceResult:
        return result if self._gate is None else self._gate.settle(result)

    def answer(self, decision: Decision, liveness: str | None = None) -> ServiceResult:
        return self._opened().answer(decision, liveness)

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()


def _spooling(spool: JsonSpool, then: OnResult | None) -> OnResult:
    def both(result: ServiceResult) -> None:
        if result.state not in SILENT_STATES:
            spool.add(result)
        if then is not None:
            then(result)
    return both


def _check_rights(spec: ScanSpec) -> None:
    if spec.discovery is Mode.SYN:
        from vncaudit import discovery

        discovery.check_syn_allowed()


# ---------------------------------------------------------------------------------------------
# Active checks


def active_options(spec: ScanSpec, password: str | None,
                   wordlist: Sequence[str] | None) -> ActiveOptions | None:
    """The active checks' options for a spec: the password given now, and the password list
    (`wordlist`, else read from `spec.active.wordlist`; `UsageError` if it cannot be). None
    when no check is asked for: the `active` package is then never imported (start-up)."""
    wanted = spec.active
    if not (wanted.screenshot or wanted.check_passwords or wanted.active_checks or password):
        return None
    from vncaudit import active

    words = list(wordlist) if wordlist is not None else None
    if words is None and wanted.wordlist is not None:
        words = read_wordlist(Path(wanted.wordlist))
    return active.ActiveOptions(
        screenshot=wanted.screenshot,
        screenshot_dir=Path(wanted.screenshot_dir) if wanted.screenshot_dir else None,
        password=password,
        check_passwords=wanted.check_passwords,
        wordlist=words,
        wordlist_source="wordlist" if words else "builtin",
        max_attempts=wanted.max_attempts,
        show_passwords=wanted.show_passwords,
        active_checks=wanted.active_checks,
    )


def read_wordlist(path: Path) -> list[str]:
    """A password list, line by line with a bound (a binary file or /dev/zero is refused, never
    loaded whole); bytes that are not UTF-8 are kept as replacement characters. `UsageError`
    (one line) when it cannot be read."""
    from vncaudit import active

    def lines(stream: IO[str]) -> Iterator[str]:
        lineno = 0
        while line := stream.readline(MAX_WORDLIST_LINE + 1):
            lineno += 1
            if len(line) > MAX_WORDLIST_LINE:
                raise UsageError(f"{path}:{lineno}: line longer than {MAX_WORDLIST_LINE} "
                                 "characters; not a password list")
            yield line

    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return active.read_wordlist(lines(fh))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def post_probe_for(spec: ScanSpec, active_options: ActiveOptions | None,
                   probe_options: ProbeOptions, ledger_of: Callable[[], Ledger] | None = None
                   ) -> PostProbe | None:
    """What runs after each probe: web front-end detection (`spec.web`), then the active
    checks the spec asks for; None when neither is wanted. With `ledger_of` (the scan's
    ledger, opened when first asked for), every connection they make is granted and counted
    there first."""
    web = spec.web
    checks = active_options if active_options is not None and active_options.enabled else None
    if not web and checks is None:
        return None

    async def post(result: ServiceResult) -> ServiceResult:
        # Imported with the first result that needs them, not before the first packet.
        from vncaudit import active, websocket
        from vncaudit.budget.extra import checked
        from vncaudit.payloads import ActiveChecks

        ledger = ledger_of() if ledger_of is not None else None
        listed = result.port in websocket.WEB_PORTS
        if web and (listed or _maybe_http(result)) and result.state in _WEB_STATES:
            # VNC is found on any port by its banner; a web front end on any port by one GET
            # (an HTTP server waits silently for it); on the usual web ports, always.
            target = Target(result.host, result.port, result.hostname)
            found: ServiceResult | None
            if ledger is None:
                found = await websocket.probe_web(target, probe_options,
                                                  require_http=not listed)
            else:
                found = await _web_checked(ledger, target, probe_options, listed)
            if found is not None and (found.state is State.VNC
                                      or (found.extra.web and found.extra.web.transport)):
                result = found
        if checks is not None and result.state is State.VNC:
            connector = None
            ws = result.extra.web.websocket if result.extra.web else None
            if ws is not None and ws.path:
                connector = websocket.connector(ws.path)
            wanted = (checks.password is not None) + bool(checks.screenshot) \
                + bool(checks.active_checks)
            probed = result

            async def run(used: int | None, bind: str | None) -> ServiceResult:
                # The ledger's grant names the source address its count is kept for.
                via: active.Connector | None = connector
                if via is None and bind is not None:
                    via = active.bound_connector(bind)
                done: ServiceResult = await active.run_active(
                    probed, checks, via, connections_used=used)
                return done

            try:
                if ledger is None:
                    result = await active.run_active(result, checks, connector)
                else:
                    result = await checked(ledger, result, run, required=wanted)
            except Exception as exc:  # an active check must never cost the probe's result
                log.warning("active checks on %s:%s failed: %s", result.host, result.port, exc)
                error = f"{type(exc).__name__}: {exc}"
                result = result.with_extra(active=ActiveChecks(error=error))
        return result

    return post


_WEB_STATES: Final = (State.TARPIT, State.OPEN_NOT_VNC)  # what a web front end may look like


def _web_plans(listed: bool) -> Iterator[tuple[bool, tuple[str, ...]]]:
    """The web checks to ask the ledger for, fullest first, as (GET / first, upgrade paths):
    fewer connections when the server's budget has fewer left. Off the usual web ports GET /
    comes first always (nothing more is tried without an HTTP answer)."""
    from vncaudit.websocket import WEBSOCKET_PATHS

    for n in range(len(WEBSOCKET_PATHS), 0, -1):
        yield True, WEBSOCKET_PATHS[:n]
    if listed:
        yield False, WEBSOCKET_PATHS[:1]


async def _web_checked(ledger: Ledger, target: Target, probe_options: ProbeOptions,
                       listed: bool) -> ServiceResult | None:
    """The web check of `target` through the ledger: every TCP connection it may make is
    granted first, all from one source address (another loopback address when 127.0.0.1's
    budget at a local server is spent: the check connects from it), and each one made is
    recorded from there; the unused ones go back. None when the budget cannot take even the
    smallest check, or the grant is from another address but the front end was read before as
    a gateway to a VNC server elsewhere (that server counts the gateway's address, not ours)."""
    from vncaudit import websocket
    from vncaudit.models import ServiceResult

    for fetch_page, paths in _web_plans(listed):
        need = websocket.connections_at_most(paths, fetch_page)
        (grant,) = ledger.admit([target], kind="web check", need=need)
        if grant.allowed:
            break
    else:
        return None
    if grant.bind is not None and _read_as_gateway(grant):
        ledger.release([grant])
        return None
    try:
        checked = await websocket.check_web(
            target, probe_options, paths=paths, fetch_page=fetch_page, require_http=not listed,
            source=grant.bind, through_gateway=grant.bind is None)
    except BaseException:
        ledger.close_grants([grant])
        raise
    found, made = checked.result, min(checked.connections, need)
    # Each connection is one row of the ledger's count; what was read goes last, so it is the
    # key's last read (the others are the front page and refused upgrades).
    plain = ServiceResult(target.host, target.port, State.OPEN_NOT_VNC,
                          error="a connection of the web check", hostname=target.hostname)
    last = found if found.state not in SILENT_STATES else plain
    outcomes = [(grant, plain)] * (made - 1) + [(grant, last)] if made else []
    ledger.record(outcomes)
    if made < need:
        ledger.release([grant], count=need - made)
    return found


def _read_as_gateway(grant: Decision) -> bool:
    """Did the facts read last through this front end show a gateway to a VNC server (RFB
    through its WebSocket, or a gateway's front page)?"""
    from vncaudit.websocket import GATEWAY_KINDS

    read = grant.last.result if grant.last is not None else None
    web = read.extra.web if read is not None else None
    if web is None:
        return False
    return web.websocket is not None or (web.http is not None
                                         and web.http.kind in GATEWAY_KINDS)


def post_probe_wanted(spec: ScanSpec, active_options: ActiveOptions | None
                      ) -> Callable[[ServiceResult], bool] | None:
    """Which results `post_probe_for`'s step has work for: with web detection, those that may
    be a web front end; with active checks, VNC services. A VNC service of a scan without
    active checks (most results) needs nothing after its probe."""
    web = spec.web
    checks = active_options is not None and active_options.enabled
    if not web and not checks:
        return None

    def wanted(result: ServiceResult) -> bool:
        state = result.state
        return (web and state in _WEB_STATES) or (checks and state is State.VNC)

    return wanted


def _maybe_http(result: ServiceResult) -> bool:
    """Could an HTTP server be behind this non-RFB answer? Silence (HTTP waits for the client),
    a close before any byte, or text that looks like HTTP; not SSH, SMTP and the like."""
    if result.state is State.TARPIT:
        return True
    guess = result.extra.protocol_guess
    return result.state is State.OPEN_NOT_VNC and guess in (None, "http", "xml/html", "json")
