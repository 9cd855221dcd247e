"""The `vncaudit scan` command: its options turned into a `ScanSpec`, the scan run by
`vncaudit.runner.StoredScan` (with a progress bar, `cli/scan_run.py`) and the output.

Owns: the scan command's options, help and exit codes, and which options a resume refuses.
Must not: hold probing, grading, storing or report formatting of its own (runner, engine,
assess, store and report do that); input plumbing lives in `cli/scan_inputs.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.core import ParameterSource  # typer vendors click (0.29+)

from vncaudit import __version__
from vncaudit.basics import Severity
from vncaudit.cli.common import (
    OUTPUTS,
    AllOpt,
    DbOpt,
    FixOpt,
    OutputFileOpt,
    OutputOpt,
    PasswordFileOpt,
    PasswordOpt,
    QuietOpt,
    RiskLockoutOpt,
    StatusFileOpt,
    TrustedOpt,
    check_output_file,
    check_trusted_option,
    err,
    fail,
    finite,
    known_password,
    make_console,
    open_store,
    setup_logging,
    stderr_is_terminal,
)
from vncaudit.cli.live import LiveOutput, StreamWriteError, check_status_file
from vncaudit.cli.program import app
from vncaudit.cli.scan_inputs import check_discovery, domain_targets, kept_input
from vncaudit.cli.scan_run import scan_progress, sigterm_as_interrupt
from vncaudit.discovery import Mode
from vncaudit.engine import DEFAULT_CONCURRENCY
from vncaudit.engine import Progress as EngineProgress
from vncaudit.exceptions import NetworkError, UsageError, VncAuditError
from vncaudit.runner import StoredScan, read_wordlist
from vncaudit.spec import DEFAULT_PORTS, ActiveSpec, ScanSpec
from vncaudit.store import Store, StoreError, UnknownScanError

if TYPE_CHECKING:  # importing the cluster module pulls in Dask
    from vncaudit.cluster import ClusterSpec
    from vncaudit.models import ServiceResult
    from vncaudit.report.spool import JsonSpool
    from vncaudit.store import ScanRecord

_SCAN_HELP = """Scan targets for VNC: one connection per port, no password ever sent.

Every result is recorded in the store as it arrives; a killed scan continues with --resume."""

_SCAN_EXAMPLES = """Examples:

  vncaudit scan 10.1.2.3                      the default VNC ports (5800, 5900-5910)
  vncaudit scan 10.0.0.0/24 -p 5900-5999,5800
  vncaudit scan 10.0.0-3.1-254 10.9.0.1,5     nmap's octet ranges and lists
  vncaudit scan host.example.org -p :0-:9     display numbers: ports 5900-5909
  vncaudit scan -iL hosts.txt --exclude 10.0.0.7 -o json > report.json
  vncaudit scan 10.0.0.0/24 --fail-on high    exit 1 when a finding is high or worse
  vncaudit scan --resume s-20261124-ab12cd    continue an interrupted scan

Exit codes: 0 done, 1 a finding at or above --fail-on, 2 usage or input error, 3 runtime
failure, 130 interrupted (Ctrl-C; the resume command is printed)."""

DEFAULT_PORTS_SPEC = DEFAULT_PORTS

# -- the options, one alias each (their help is the command's --help) ------------------------

TargetsArg = Annotated[
    list[str] | None,
    typer.Argument(metavar="TARGET", help="IPs, CIDRs (10.0.0.0/24, fd00::/120), ranges "
                   "(10.0.0.1-10.0.0.50), nmap patterns (10.0.0.*, 10.0.0-1.1-254, "
                   "10.0.0.1,3, host.example/30), hostnames. Nothing is scanned without "
                   "targets."),
]
PortsOpt = Annotated[
    str | None,
    typer.Option("-p", "--ports", metavar="PORTS",
                 help="Ports: 5900-5910,5800; display numbers :0-:9; "
                 "'-' for all 65535. Default: 5800,5900-5910."),
]
InputListOpt = Annotated[
    list[Path] | None,
    typer.Option("-iL", "--input-list", metavar="FILE",
                 help="File of target expressions, one per line."),
]
NmapXmlOpt = Annotated[
    list[Path] | None,
    typer.Option("--nmap-xml", metavar="FILE",
                 help="Hosts (and open ports) from an nmap -oX file."),
]
MasscanOpt = Annotated[
    list[Path] | None,
    typer.Option("--masscan", metavar="FILE",
                 help="Open ports from masscan output (-oJ, -oD, -oL, -oX)."),
]
DomainOpt = Annotated[
    list[str] | None,
    typer.Option("--domain", metavar="DOMAIN",
                 help="Find this domain's hosts by DNS (zone transfer, "
                 "wordlist) and scan them (repeatable)."),
]
ResolverOpt = Annotated[
    str | None, typer.Option("--resolver", metavar="IP[:PORT]",
                             help="DNS server for --domain, IP[:PORT].")
]
ExcludeOpt = Annotated[
    list[str] | None, typer.Option("--exclude", metavar="TARGET",
                                   help="Targets to leave out (repeatable).")
]
ExcludeFileOpt = Annotated[
    list[Path] | None, typer.Option("--exclude-file", metavar="FILE",
                                    help="File of targets to leave out.")
]
AllowSpecialOpt = Annotated[
    bool, typer.Option("--allow-special", help="Allow multicast/reserved/broadcast ranges.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.1, metavar="SECONDS", callback=finite,
                        help="One deadline per probe, in seconds.")
]
ConcurrencyOpt = Annotated[
    int, typer.Option("--concurrency", min=1, metavar="N", help="Probes in flight at once.")
]
RateOpt = Annotated[
    float | None, typer.Option("--rate", min=0.1, metavar="PER_SECOND", callback=finite,
                               help="Max new connections per second "
                               "(--discovery syn: SYN packets per second, default 50000).")
]
DiscoveryOpt = Annotated[
    str, typer.Option("--discovery", metavar="connect|syn",
                      help="How to find answering ports: connect (no root) "
                      "or syn (root: raw SYN scan; IPv6 falls back to connect).")
]
RetriesOpt = Annotated[
    int | None, typer.Option("--retries", min=0, metavar="N",
                             help="Extra attempts for ports that did "
                             "not answer (default: connect 0, syn 1).")
]
NoInitOpt = Annotated[
    bool, typer.Option("--no-init", help="Do not select an offered no-auth type (skips "
                       "SecurityResult and desktop name).")
]
FailOnOpt = Annotated[
    str | None,
    typer.Option("--fail-on", metavar="SEVERITY",
                 help="Exit 1 if any finding is at or above this severity "
                 "(critical, high, medium, low, info)."),
]
ScreenshotOpt = Annotated[
    bool,
    typer.Option("--screenshot", help="Active: save a PNG of the desktop where no password "
                 "is needed (or with --password); tells login screen from live desktop."),
]
CheckPasswordsOpt = Annotated[
    bool,
    typer.Option("--check-passwords", help="Active: try common VNC passwords, at most "
                 "--max-attempts per server, stopping before the server's lockout."),
]
WordlistOpt = Annotated[
    Path | None, typer.Option("--wordlist", metavar="FILE",
                              help="Passwords for --check-passwords.")
]
MaxAttemptsOpt = Annotated[
    int, typer.Option("--max-attempts", min=1, max=4, metavar="N",
                      help="Password tries per server.")
]
ShowPasswordsOpt = Annotated[
    bool, typer.Option("--show-passwords", help="Print found passwords (masked otherwise).")
]
ActiveChecksOpt = Annotated[
    bool,
    typer.Option("--active-checks", help="Active: extra connections for auth-bypass "
                 "(CVE-2006-2369: un-offered None) and honeypot checks."),
]
WebOpt = Annotated[
    bool,
    typer.Option("--web/--no-web", help="Look for noVNC/websockify and Java-viewer web "
                 "front ends on web ports (6080, 6901, 5800-5803, 80, 443, 8080, 8443) "
                 "that did not answer RFB."),
]
ResumeOpt = Annotated[
    str | None,
    typer.Option("--resume", metavar="SCAN_ID",
                 help="Continue an interrupted scan by its id: nothing lost, "
                 "nothing probed twice."),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", metavar="N", help="Split the scan into shards and run them on a "
                 "Dask LocalCluster of N worker processes on this machine."),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", metavar="tcp://HOST:PORT",
                 help="Run the shards on an existing Dask cluster, e.g. "
                 "tcp://scheduler:8786 (workers need the same vncaudit version)."),
]
VerboseOpt = Annotated[
    int, typer.Option("-v", "--verbose", count=True, help="More log lines on stderr "
                      "(-vv: debug).")
]

# Options that are part of the stored spec: a resume runs with the stored values, so giving
# one of them again would be silently ignored; it is refused instead.
_SPEC_OPTIONS = ("ports", "exclude", "exclude_file", "allow_special", "timeout", "concurrency",
                 "rate", "discovery_mode", "retries", "no_init", "screenshot",
                 "check_passwords", "wordlist", "max_attempts", "show_passwords",
                 "active_checks", "web", "risk_lockout")


@app.command(help=_SCAN_HELP, epilog=_SCAN_EXAMPLES)
def scan(
    ctx: typer.Context,
    targets: TargetsArg = None,
    ports: PortsOpt = None,
    input_list: InputListOpt = None,
    nmap_xml: NmapXmlOpt = None,
    masscan: MasscanOpt = None,
    domain: DomainOpt = None,
    resolver: ResolverOpt = None,
    exclude: ExcludeOpt = None,
    exclude_file: ExcludeFileOpt = None,
    allow_special: AllowSpecialOpt = False,
    timeout: TimeoutOpt = 5.0,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    rate: RateOpt = None,
    discovery_mode: DiscoveryOpt = "connect",
    retries: RetriesOpt = None,
    no_init: NoInitOpt = False,
    output: OutputOpt = "table",
    output_file: OutputFileOpt = None,
    include_all: AllOpt = False,
    show_fix: FixOpt = True,
    trusted: TrustedOpt = None,
    fail_on: FailOnOpt = None,
    screenshot: ScreenshotOpt = False,
    password: PasswordOpt = None,
    password_file: PasswordFileOpt = None,
    check_passwords: CheckPasswordsOpt = False,
    wordlist: WordlistOpt = None,
    max_attempts: MaxAttemptsOpt = 3,
    show_passwords: ShowPasswordsOpt = False,
    active_checks: ActiveChecksOpt = False,
    web: WebOpt = True,
    risk_lockout: RiskLockoutOpt = False,
    db: DbOpt = None,
    resume: ResumeOpt = None,
    workers: WorkersOpt = None,
    cluster: ClusterOpt = None,
    quiet: QuietOpt = False,
    status_file: StatusFileOpt = None,
    verbose: VerboseOpt = 0,
) -> None:
    """`vncaudit scan`: one parameter per option (typer reads the options from this
    signature, so it is as long as the option list); the body checks what was typed in the
    order a user meets the errors, builds the `ScanSpec` and hands it to the runner."""
    setup_logging(-1 if quiet else verbose)
    report = _Report(output, output_file, include_all, show_fix, trusted, quiet, status_file,
                     _report_checks(output, trusted, fail_on))
    cluster_spec = _cluster_spec(workers, cluster, verbose)
    _check_resume(ctx, resume, discovery_mode, resolver, domain,
                  bool(targets or domain or input_list or nmap_xml or masscan))
    # Everything the user typed is checked before the store gets a scan record: a bad
    # --wordlist or --output-file must not leave a "running" scan that never ran behind.
    check_output_file(output_file, [db, wordlist, *(input_list or ()), *(nmap_xml or ()),
                                     *(masscan or ()), *(exclude_file or ())])
    check_status_file(status_file, [output_file, db, wordlist, *(input_list or ())])
    password = known_password(password, password_file)
    draft: ScanSpec | None = None
    words: list[str] | None = None
    if resume is None:
        try:
            draft = ScanSpec(
                expressions=tuple(targets or ()),
                # `-p ""` is a mistake, not a request for the defaults.
                ports=ports if ports is not None else DEFAULT_PORTS,
                input_files=_names(input_list), nmap_xml=_names(nmap_xml),
                masscan=_names(masscan), excludes=tuple(exclude or ()), seed=_early_seed(),
                exclude_files=_names(exclude_file), allow_special=allow_special,
                domains=tuple(domain or ()), resolver=resolver, timeout=timeout,
                concurrency=concurrency, rate=rate, discovery=Mode(discovery_mode),
                retries=retries, no_init=no_init, web=web, risk_lockout=risk_lockout,
                active=_active_spec(screenshot, password, check_passwords, wordlist,
                                    max_attempts, show_passwords, active_checks, output_file))
            words = read_wordlist(wordlist) if wordlist is not None else None
        except UsageError as exc:
            raise fail(str(exc)) from None
    with open_store(db) as store:
        stored = _open_scan(store, resume, draft, password, words)
        record, results = _run_stored(stored, cluster_spec, report, resumed=resume is not None)
    _report(record, results, report)


@dataclass(frozen=True)
class _Report:
    """How the results go out: -o, --output-file, --all, --fix, --trusted, -q,
    --status-file, and the --fail-on threshold (None: none given)."""

    output: str
    output_file: Path | None
    include_all: bool
    show_fix: bool
    trusted: str | None
    quiet: bool
    status_file: Path | None
    threshold: Severity | None


def _check_resume(ctx: typer.Context, resume: str | None, discovery_mode: str,
                  resolver: str | None, domain: list[str] | None, has_targets: bool) -> None:
    """--discovery and --resolver for a new scan; for --resume, no targets and none of the
    settings stored with the scan."""
    if resume is None:
        check_discovery(discovery_mode)
    if resolver is not None and not domain:
        raise fail("--resolver is the DNS server of --domain; add --domain (host names "
                   "given as targets use the system resolver)")
    if resume is not None:
        if has_targets:
            raise fail("--resume takes no targets: it continues the stored scan as it was")
        _refuse_settings(ctx, resume)


def _run_stored(stored: StoredScan, cluster_spec: ClusterSpec | None, report: _Report, *,
                resumed: bool) -> tuple[ScanRecord, list[ServiceResult] | JsonSpool]:
    """Run the scan with its live streams; the record and the results as stored, or, for
    -o json, the report's spool (`report.spool`: built as the results came, nothing read
    back from the store)."""
    spool = None
    if report.output == "json" and not report.include_all:
        from vncaudit.report.spool import JsonSpool

        spool = JsonSpool()
    try:
        live = _live(stored, report.output, report.output_file, report.include_all,
                     report.status_file, resumed=resumed, spool=spool)
        record = _run(stored, cluster_spec, live, report.quiet, str(report.status_file) == "-")
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    if spool is not None:
        live.end("finished")
        return record, spool
    results = stored.store.results(stored.scan_id, include_closed=report.include_all)
    live.end("finished", results)
    return record, results


def _report(record: ScanRecord, results: list[ServiceResult] | JsonSpool,
            report: _Report) -> None:
    """Print or write the report; exit 1 when a finding is at or above --fail-on."""
    threshold = report.threshold
    if isinstance(results, list):
        failing = sum(1 for r in results for f in r.findings
                      if threshold is not None and f.severity.rank >= threshold.rank)
    else:
        failing = results.tally.at_or_above(threshold) if threshold is not None else 0
    reason = None
    if threshold is not None and failing:
        reason = (f"{failing} finding{'' if failing == 1 else 's'} at "
                  f"{threshold.value} or worse (--fail-on {threshold.value})")
    from vncaudit.cli.output import emit, emit_spooled  # rich and the report: after the scan

    if not isinstance(results, list):
        with results:
            emit_spooled(record, results, report.output_file, exit_reason=reason,
                         quiet=report.quiet)
    else:
        # -o jsonl went out line by line while the scan ran: only the summary is left.
        emit(record, results, report.output, report.output_file, report.include_all,
             show_fix=report.show_fix, trusted=report.trusted, exit_reason=reason,
             quiet=report.quiet, written=report.output == "jsonl")
    if reason is not None:
        raise typer.Exit(1)


def _early_seed() -> int | None:
    """The walk's seed the early start (`cli.launch`) drew and sent its first SYNs or made
    its first connect in, so the scan is stored with it and its sweep takes them over; None
    without one."""
    from vncaudit import connstart, synstart

    early = synstart.started() or connstart.started()
    return early.seed if early is not None else None


def _names(paths: list[Path] | None) -> tuple[str, ...]:
    return tuple(str(p) for p in paths or ())


def _report_checks(output: str, trusted: str | None, fail_on: str | None) -> Severity | None:
    """-o, --trusted and --fail-on, checked first; returns the --fail-on threshold."""
    if output not in OUTPUTS:
        raise fail(f"unknown output format {output!r}; choose one of {', '.join(OUTPUTS)}")
    check_trusted_option(trusted)
    if fail_on is None:
        return None
    try:
        return Severity(fail_on.lower())
    except ValueError:
        raise fail(f"unknown severity {fail_on!r} for --fail-on") from None


def _cluster_spec(workers: int | None, address: str | None, verbose: int) -> ClusterSpec | None:
    if workers is None and address is None:
        return None
    from vncaudit.cluster import ClusterSpec

    try:
        dask_level = logging.WARNING if verbose else logging.CRITICAL
        return ClusterSpec(workers=workers, address=address, silence_logs=dask_level)
    except UsageError as exc:
        raise fail(str(exc)) from None


def _refuse_settings(ctx: typer.Context, scan_id: str) -> None:
    """A resume runs with the settings stored with the scan; an option that would change
    them is refused (one line, exit 2) rather than silently ignored."""
    given = [p for p in ctx.command.params if p.name in _SPEC_OPTIONS
             and ctx.get_parameter_source(p.name or "") in (ParameterSource.COMMANDLINE,
                                                            ParameterSource.ENVIRONMENT)]
    if given:
        # As typed: --no-web, not --web, when the flag's off side was given.
        flags = ", ".join(p.secondary_opts[0] if p.secondary_opts and ctx.params[p.name or ""]
                          is False else max(p.opts, key=len) for p in given)
        raise fail(f"--resume continues scan {scan_id} with the settings it was started "
                    f"with; leave out {flags}")


def _active_spec(
    screenshot: bool,
    password: str | None,
    check_passwords: bool,
    wordlist: Path | None,
    max_attempts: int,
    show_passwords: bool,
    active_checks: bool,
    output_file: Path | None,
) -> ActiveSpec:
    # Absolute, so a report rendered later from the store (`results -o html`) finds the PNGs.
    shots = ((output_file.parent if output_file else Path.cwd()) / "screenshots").absolute()
    return ActiveSpec(
        screenshot=screenshot,
        screenshot_dir=str(shots) if screenshot else None,
        check_passwords=check_passwords,
        wordlist=str(wordlist) if wordlist is not None else None,
        max_attempts=max_attempts,
        show_passwords=show_passwords,
        active_checks=active_checks,
        uses_password=password is not None,
    )


def _open_scan(store: Store, resume: str | None, draft: ScanSpec | None,
               password: str | None, words: list[str] | None) -> StoredScan:
    """The scan to run: reopened (--resume), or created from `draft` once --domain names are
    found and piped inputs kept. Every failure is one line: exit 2 for input, 3 otherwise."""
    copies: dict[str, str] = {}
    try:
        if resume is not None:
            return StoredScan.resume(store, resume, password=password)
        assert draft is not None
        spec, labels = draft, {}
        if draft.domains:
            names, resolved, found = domain_targets(list(draft.domains), draft.resolver)
            spec = replace(spec, expressions=(*spec.expressions, *names),
                           resolved=tuple((n, tuple(a)) for n, a in resolved.items()))
            labels = {"discovery": found}

        def keep(given: tuple[str, ...]) -> tuple[str, ...]:
            kept = tuple(kept_input(p, store) for p in given)
            copies.update((k, p) for k, p in zip(kept, given, strict=True) if k != p)
            return kept

        spec = replace(spec, input_files=keep(spec.input_files), nmap_xml=keep(spec.nmap_xml),
                       masscan=keep(spec.masscan))
        return StoredScan.create(store, spec, password=password, wordlist=words,
                                 labels=labels, tool=f"vncaudit {__version__}")
    except (UsageError, UnknownScanError) as exc:
        message = str(exc)
        for copy, given_name in copies.items():  # name the input as the user gave it
            message = message.replace(copy, given_name)
        raise fail(message) from None
    except (NetworkError, StoreError) as exc:
        raise fail(str(exc), 3) from None


def _live(stored: StoredScan, output: str, output_file: Path | None, include_all: bool,
          status_file: Path | None, *, resumed: bool, spool: JsonSpool | None = None
          ) -> LiveOutput:
    """The streams of a running scan (`cli/live.py`): -o jsonl lines and --status-file; a
    resumed scan's earlier results go out first, so the stream is the whole scan."""
    state = EngineProgress(total=stored.remaining)
    try:
        live = LiveOutput(output, output_file, include_all, status_file, stored.scan_id, state,
                          spool)
        if resumed:
            live.resumed(stored.store.results(stored.scan_id, include_closed=include_all))
    except StreamWriteError as exc:
        stored.store.finish_scan(stored.scan_id, "interrupted")
        raise fail(f"{exc}; resume with: vncaudit scan --resume {stored.scan_id}", 3) from None
    return live


def _run(stored: StoredScan, cluster_spec: ClusterSpec | None, live: LiveOutput,
         quiet: bool = False, status_on_stderr: bool = False) -> ScanRecord:
    """Run the scan with a progress bar (none with -q, or when the status stream is on
    stderr); Ctrl-C and SIGTERM end it interrupted, with the resume command (exit 130 / 143),
    a stream that cannot be written too (exit 3), any other failure is one line (exit 3)."""
    state = live.state
    terminated: list[int] = []
    show = False if quiet or status_on_stderr else stderr_is_terminal

    def stored_results() -> list[ServiceResult]:
        return stored.store.results(stored.scan_id, include_closed=live.include_all)

    try:
        with sigterm_as_interrupt(terminated), scan_progress(state, show) as update:
            record = stored.run(on_result=live.chain(update), progress=state,
                                cluster=cluster_spec, spool=live.spool,
                                on_idle=_ready_for_the_report)
    except KeyboardInterrupt:
        live.end("interrupted", stored_results())
        how, code = ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)
        raise fail(f"{how}; {state.done} ports recorded. Resume with: "
                    f"vncaudit scan --resume {stored.scan_id}", code) from None
    except StreamWriteError as exc:
        live.end("interrupted", stored_results())
        raise fail(f"{exc}; the results are kept. Resume with: vncaudit scan --resume "
                    f"{stored.scan_id}", 3) from None
    except VncAuditError as exc:
        live.end("failed", stored_results())
        _shards_line(stored, quiet)
        raise fail(str(exc), 3) from None
    _shards_line(stored, quiet)
    return record


def _ready_for_the_report() -> None:
    """While a SYN sweep's last window waits for late answers: load what the report and the
    summary lines need (rich, the report code) then, so that after the window only the
    report itself is left."""
    import vncaudit.cli.output  # noqa: F401  (imported for what it loads)

    make_console()
    # The summary lines' print replaces emoji codes: rich loads its table of them (~15 ms)
    # the first time it looks, which is then now.
    err.render_str("", markup=False)


def _shards_line(stored: StoredScan, quiet: bool = False) -> None:
    run = stored.sharded
    if run is not None and not quiet:
        err.print(f"{run.shards} shards ({run.ran} run now, {run.skipped} done before) on "
                  f"{run.workers} workers in {run.elapsed:.1f} s; {run.reruns} reruns, "
                  f"{run.duplicates} repeated verdicts ignored", style="dim", markup=False,
                  soft_wrap=True)
