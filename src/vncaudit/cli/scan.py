"""The `vncaudit scan` command: its options, turned into `ScanOptions` and a target space,
the scan record in the store, the run (`cli/scan_run.py`) and the output.

Owns: the scan command's options, help and exit codes. Must not: hold probing, grading or
report formatting of its own (engine, assess, report do that); input and active-check
plumbing lives in `cli/scan_inputs.py`, running with progress in `cli/scan_run.py`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from vncaudit import __version__, report
from vncaudit.budget import Ledger, ScanGate
from vncaudit.cli import app
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
    _check_output_file,
    _check_trusted,
    _fail,
    _open_store,
    _setup_logging,
    err,
    finite,
    known_password,
)
from vncaudit.cli.live import LiveOutput, StreamWriteError, check_status_file
from vncaudit.cli.output import _emit
from vncaudit.cli.scan_inputs import (
    _active_options,
    _check_discovery,
    _domain_targets,
    _kept_input,
    _post_probe,
    _space_from_spec,
)
from vncaudit.cli.scan_run import _run_sharded, _run_with_progress, _sigterm_as_interrupt
from vncaudit.discovery import Marks
from vncaudit.engine import DEFAULT_CONCURRENCY, ScanOptions
from vncaudit.engine import Progress as EngineProgress
from vncaudit.exceptions import NetworkError, UsageError, VncAuditError
from vncaudit.models import ServiceResult, Severity, State
from vncaudit.probe import ProbeOptions
from vncaudit.store import StoreError, UnknownScanError

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


@app.command(epilog=_SCAN_EXAMPLES)
def scan(
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", help="IPs, CIDRs (10.0.0.0/24, fd00::/120), ranges "
                       "(10.0.0.1-10.0.0.50), nmap patterns (10.0.0.*, 10.0.0-1.1-254, "
                       "10.0.0.1,3, host.example/30), hostnames. Nothing is scanned without "
                       "targets."),
    ] = None,
    ports: Annotated[
        str | None,
        typer.Option("-p", "--ports", metavar="PORTS",
                     help="Ports: 5900-5910,5800; display numbers :0-:9; "
                     "'-' for all 65535. Default: 5800,5900-5910."),
    ] = None,
    input_list: Annotated[
        list[Path] | None,
        typer.Option("-iL", "--input-list", metavar="FILE",
                     help="File of target expressions, one per line."),
    ] = None,
    nmap_xml: Annotated[
        list[Path] | None,
        typer.Option("--nmap-xml", metavar="FILE",
                     help="Hosts (and open ports) from an nmap -oX file."),
    ] = None,
    masscan: Annotated[
        list[Path] | None,
        typer.Option("--masscan", metavar="FILE",
                     help="Open ports from masscan output (-oJ, -oD, -oL, -oX)."),
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", metavar="DOMAIN",
                     help="Find this domain's hosts by DNS (zone transfer, "
                     "wordlist) and scan them (repeatable)."),
    ] = None,
    resolver: Annotated[
        str | None, typer.Option("--resolver", metavar="IP[:PORT]",
                                 help="DNS server for --domain, IP[:PORT].")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", metavar="TARGET",
                                       help="Targets to leave out (repeatable).")
    ] = None,
    exclude_file: Annotated[
        list[Path] | None, typer.Option("--exclude-file", metavar="FILE",
                                        help="File of targets to leave out.")
    ] = None,
    allow_special: Annotated[
        bool, typer.Option("--allow-special", help="Allow multicast/reserved/broadcast ranges.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, metavar="SECONDS", callback=finite,
                            help="One deadline per probe, in seconds.")
    ] = 5.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, metavar="N", help="Probes in flight at once.")
    ] = DEFAULT_CONCURRENCY,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0.1, metavar="PER_SECOND", callback=finite,
                                   help="Max new connections per second "
                                   "(--discovery syn: SYN packets per second, default 50000).")
    ] = None,
    discovery_mode: Annotated[
        str, typer.Option("--discovery", metavar="connect|syn",
                          help="How to find answering ports: connect (no root) "
                          "or syn (root: raw SYN scan; IPv6 falls back to connect).")
    ] = "connect",
    retries: Annotated[
        int | None, typer.Option("--retries", min=0, metavar="N",
                                 help="Extra attempts for ports that did "
                                 "not answer (default: connect 0, syn 1).")
    ] = None,
    no_init: Annotated[
        bool,
        typer.Option("--no-init", help="Do not select an offered no-auth type (skips "
                     "SecurityResult and desktop name)."),
    ] = False,
    output: OutputOpt = "table",
    output_file: OutputFileOpt = None,
    include_all: AllOpt = False,
    show_fix: FixOpt = True,
    trusted: TrustedOpt = None,
    fail_on: Annotated[
        str | None,
        typer.Option("--fail-on", metavar="SEVERITY",
                     help="Exit 1 if any finding is at or above this severity "
                     "(critical, high, medium, low, info)."),
    ] = None,
    screenshot: Annotated[
        bool,
        typer.Option("--screenshot", help="Active: save a PNG of the desktop where no password "
                     "is needed (or with --password); tells login screen from live desktop."),
    ] = False,
    password: PasswordOpt = None,
    password_file: PasswordFileOpt = None,
    check_passwords: Annotated[
        bool,
        typer.Option("--check-passwords", help="Active: try common VNC passwords, at most "
                     "--max-attempts per server, stopping before the server's lockout."),
    ] = False,
    wordlist: Annotated[
        Path | None, typer.Option("--wordlist", metavar="FILE",
                                  help="Passwords for --check-passwords.")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, max=4, metavar="N",
                          help="Password tries per server.")
    ] = 3,
    show_passwords: Annotated[
        bool, typer.Option("--show-passwords", help="Print found passwords (masked otherwise).")
    ] = False,
    active_checks: Annotated[
        bool,
        typer.Option("--active-checks", help="Active: extra connections for auth-bypass "
                     "(CVE-2006-2369: un-offered None) and honeypot checks."),
    ] = False,
    web: Annotated[
        bool,
        typer.Option("--web/--no-web", help="Look for noVNC/websockify and Java-viewer web "
                     "front ends on web ports (6080, 6901, 5800-5803, 80, 443, 8080, 8443) "
                     "that did not answer RFB."),
    ] = True,
    risk_lockout: RiskLockoutOpt = False,
    db: DbOpt = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="SCAN_ID",
                     help="Continue an interrupted scan by its id: nothing lost, "
                     "nothing probed twice."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", metavar="N", help="Split the scan into shards and run them on a "
                     "Dask LocalCluster of N worker processes on this machine."),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", metavar="tcp://HOST:PORT",
                     help="Run the shards on an existing Dask cluster, e.g. "
                     "tcp://scheduler:8786 (workers need the same vncaudit version)."),
    ] = None,
    quiet: QuietOpt = False,
    status_file: StatusFileOpt = None,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log lines on stderr "
                          "(-vv: debug).")
    ] = 0,
) -> None:
    """Scan targets for VNC: one connection per port, no password ever sent.

    Every result is recorded in the store as it arrives; a killed scan continues with --resume.
    """
    _setup_logging(-1 if quiet else verbose)
    if output not in OUTPUTS:
        raise _fail(f"unknown output format {output!r}; choose one of {', '.join(OUTPUTS)}")
    _check_trusted(trusted)
    threshold: Severity | None = None
    if fail_on is not None:
        try:
            threshold = Severity(fail_on.lower())
        except ValueError:
            raise _fail(f"unknown severity {fail_on!r} for --fail-on") from None
    cluster_spec = None
    if workers is not None or cluster is not None:
        from vncaudit.cluster import ClusterSpec

        try:
            dask_level = logging.WARNING if verbose else logging.CRITICAL
            cluster_spec = ClusterSpec(workers=workers, address=cluster, silence_logs=dask_level)
        except UsageError as exc:
            raise _fail(str(exc)) from None
    if resume is None:
        _check_discovery(discovery_mode)
    if resolver is not None and not domain:
        raise _fail("--resolver is the DNS server of --domain; add --domain (host names "
                    "given as targets use the system resolver)")
    if resume is not None:
        if targets or domain or input_list or nmap_xml or masscan:
            raise _fail("--resume takes no targets: it continues the stored scan as it was")
    else:
        spec: dict[str, Any] = {
            "expressions": list(targets or []),
            # `-p ""` is a mistake, not a request for the defaults.
            "ports": ports if ports is not None else DEFAULT_PORTS_SPEC,
            "input_files": [str(p) for p in input_list or []],
            "nmap_xml": [str(p) for p in nmap_xml or []],
            "masscan": [str(p) for p in masscan or []],
            "excludes": list(exclude or []),
            "exclude_files": [str(p) for p in exclude_file or []],
            "allow_special": allow_special,
            "resolved": {},
            "timeout": timeout,
            "concurrency": concurrency,
            "rate": rate,
            "discovery_mode": discovery_mode,
            "retries": retries,
            "no_init": no_init,
        }
    # Everything the user typed is checked before the store gets a scan record: a bad
    # --wordlist or --output-file must not leave a "running" scan that never ran behind.
    _check_output_file(output_file, [db, wordlist, *(input_list or ()), *(nmap_xml or ()),
                                     *(masscan or ()), *(exclude_file or ())])
    check_status_file(status_file, [output_file, db, wordlist, *(input_list or ())])
    password = known_password(password, password_file)
    try:
        active = _active_options(screenshot, password, check_passwords, wordlist,
                                 max_attempts, show_passwords, active_checks, output_file)
    except UsageError as exc:
        raise _fail(str(exc)) from None
    store = _open_store(db)
    copies: dict[str, str] = {}
    with store:
        try:
            if resume is not None:
                record = store.require_scan(resume)
                if record.status == "finished":
                    raise _fail(f"scan {resume} is already finished; nothing to resume")
                spec = dict(record.options)
                space = _space_from_spec(spec)
                scan_id = record.id
                store.reopen_scan(scan_id)
            else:
                if domain:
                    names, resolved, discovery = _domain_targets(domain, resolver)
                    spec["expressions"] = [*spec["expressions"], *names]
                    spec["resolved"] = resolved
                    spec["discovery"] = discovery
                for key in ("input_files", "nmap_xml", "masscan"):
                    kept = [_kept_input(p, store) for p in spec[key]]
                    copies.update((k, p) for k, p in zip(kept, spec[key], strict=True) if k != p)
                    spec[key] = kept
                space = _space_from_spec(spec)
                spec["seed"] = space.seed
                scan_id = store.create_scan(space.describe(), spec["ports"], spec,
                                            tool=f"vncaudit {__version__}")
            done = store.done_pairs(scan_id)
        except (UsageError, UnknownScanError) as exc:
            message = str(exc)
            for copy, given in copies.items():  # name the input as the user gave it
                message = message.replace(copy, given)
            raise _fail(message) from None
        except (NetworkError, StoreError) as exc:
            raise _fail(str(exc), 3) from None

        probe_options = ProbeOptions(timeout=float(spec["timeout"]),
                                     read_server_init=not spec["no_init"],
                                     active_checks=active_checks)
        _check_discovery(spec.get("discovery_mode", "connect"))
        # Every connection is counted in the store's ledger and none is made that would arm
        # a server's blacklist (unless --risk-lockout): vncaudit.budget.
        ledger = Ledger(store, risk_lockout=risk_lockout)
        options = ScanOptions(
            concurrency=int(spec["concurrency"]),
            rate=spec["rate"],
            discovery=spec.get("discovery_mode", "connect"),
            retries=spec.get("retries"),
            probe=probe_options,
            # A sharded run ships these options to workers, which write no store: there the
            # checks after the probe are not counted (README, Connection budget).
            post_probe=_post_probe(active, probe_options, web,
                                   ledger if cluster_spec is None else None),
        )
        pending = space.walk(skip=done)
        progress_state = EngineProgress(total=len(space) - len(done))

        marks: list[tuple[str, int, State]] = []
        found: list[ServiceResult] = []
        marked_at = [time.monotonic()]

        def flush_marks() -> None:
            if marks:
                store.mark_done_many(scan_id, marks)
                marks.clear()
            if found:
                store.add_results(scan_id, found)
                found.clear()
            marked_at[0] = time.monotonic()

        def save(result: ServiceResult) -> None:
            # Thousands per second on a big range: one store call per batch, not per pair (a
            # pair not yet written when the scan is killed is simply probed again on resume).
            if result.state in report.HIDDEN_BY_DEFAULT:
                marks.append((result.host, result.port, result.state))
            else:
                found.append(result)
            if (len(marks) >= 1024 or len(found) >= 256
                    or time.monotonic() - marked_at[0] > 0.5):
                flush_marks()

        def save_marks(batch: Marks) -> None:
            state = batch.state
            marks.extend((host, port, state) for host, port in batch.pairs)
            if len(marks) >= 1024 or time.monotonic() - marked_at[0] > 0.5:
                flush_marks()

        terminated: list[int] = []
        # --active-checks: the probe's honeypot checks make up to 3 more connections, granted
        # together with the probe's own or not at all.
        gate = ScanGate(ledger, scan_id, extra=3 if active_checks else 0)
        show = err.is_terminal and not quiet and str(status_file) != "-"
        try:
            live = LiveOutput(output, output_file, include_all, status_file, scan_id,
                              progress_state)
        except StreamWriteError as exc:
            ledger.close()
            store.finish_scan(scan_id, "interrupted")
            raise _fail(str(exc), 3) from None
        try:
            try:
                if resume is not None:  # what the scan found before: the stream is complete
                    live.resumed(store.results(scan_id, include_closed=include_all))
                with _sigterm_as_interrupt(terminated):
                    if cluster_spec is not None:
                        _run_sharded(space, options, store, scan_id, cluster_spec,
                                     progress_state, show, ledger, on_result=live.result,
                                     quiet=quiet)
                    else:
                        _run_with_progress(pending, options, progress_state, show,
                                           live.saving(save), live.saving_marks(save_marks),
                                           gate)
            finally:
                flush_marks()
                ledger.close()
        except KeyboardInterrupt:
            store.finish_scan(scan_id, "interrupted")
            live.end("interrupted", store.results(scan_id, include_closed=include_all))
            how, code = ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)
            raise _fail(f"{how}; {progress_state.done} ports recorded. Resume with: "
                        f"vncaudit scan --resume {scan_id}", code) from None
        except StreamWriteError as exc:
            store.finish_scan(scan_id, "interrupted")
            live.end("interrupted", store.results(scan_id, include_closed=include_all))
            raise _fail(f"{exc}; the results are kept. Resume with: vncaudit scan --resume "
                        f"{scan_id}", 3) from None
        except VncAuditError as exc:
            store.finish_scan(scan_id, "interrupted")
            live.end("failed", store.results(scan_id, include_closed=include_all))
            raise _fail(str(exc), 3) from None
        record = store.finish_scan(scan_id)
        results = store.results(scan_id, include_closed=include_all)
        live.end("finished", results)

    failing = [f for r in results for f in r.findings
               if threshold is not None and f.severity.rank >= threshold.rank]
    reason = None
    if threshold is not None and failing:
        reason = (f"{len(failing)} finding{'' if len(failing) == 1 else 's'} at "
                  f"{threshold.value} or worse (--fail-on {threshold.value})")
    # -o jsonl went out line by line while the scan ran: only the summary is left.
    _emit(record, results, output, output_file, include_all, show_fix=show_fix,
          trusted=trusted, exit_reason=reason, quiet=quiet, written=output == "jsonl")
    if reason is not None:
        raise typer.Exit(1)


DEFAULT_PORTS_SPEC = "5800,5900-5910"
