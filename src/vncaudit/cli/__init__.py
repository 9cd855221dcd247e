"""Command line: `vncaudit scan …` and friends. Thin: parse, call the library, render.

Owns: typer commands, rich progress and tables, exit codes (DESIGN.md §5: 0 ok, 1 findings at
or above --fail-on, 2 usage/input error, 3 runtime failure) and turning every error into one
line on stderr. Must not: hold scanning, grading or formatting logic of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer._click import exceptions as click_errors  # typer vendors click (0.29+)
from typer.core import TyperGroup

from vncaudit import __version__, report
from vncaudit.engine import DEFAULT_CONCURRENCY, ScanOptions, scan_async
from vncaudit.engine import Progress as EngineProgress
from vncaudit.engine import run as run_loop
from vncaudit.exceptions import NetworkError, UsageError, VncAuditError
from vncaudit.models import ServiceResult, Severity, State, Target
from vncaudit.probe import ProbeOptions
from vncaudit.store import ScanRecord, Store, StoreError, UnknownScanError, default_db_path

if TYPE_CHECKING:
    from vncaudit.cluster import ClusterSpec
    from vncaudit.targets import TargetSpace

class _OneLineErrors(TyperGroup):
    """The command group, with click's own usage errors (unknown option, a value out of range,
    a missing argument) printed as one `vncaudit: error:` line like every other failure,
    instead of a usage box. A user's script can then rely on one line and exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:
            # Bare `vncaudit` (or a group without its command): the help is the answer.
            text = exc.format_message().strip()
            if text:
                sys.stderr.write(text + "\n")
            code: int = exc.exit_code
        except click_errors.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            _error_line(exc.format_message() + hint)
            code = exc.exit_code
        except typer.Abort:  # Ctrl-C or end of input at a prompt
            _error_line("aborted; nothing changed")
            code = 130
        else:
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C outside a scan's own handler (check, local, subdomains ...): say so, in
            # the same one line, instead of exiting 130 silently.
            _error_line("interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_OneLineErrors,
    name="vncaudit",
    context_settings={"help_option_names": ["-h", "--help"]},  # -h, as nmap users type it
    epilog="""Examples:

  vncaudit scan 10.0.0.0/24                   VNC on the default ports of a subnet
  vncaudit local                              this machine's VNC listeners and firewall
  vncaudit COMMAND --help                     every option of a command, with examples

Exit codes: 0 ok, 1 a finding at or above --fail-on, 2 usage or input error (one line on
stderr), 3 runtime failure, 130 interrupted.""",
    help="Find exposed VNC services, read what each offers through the RFB handshake without "
    "logging in, grade the risk and show the fix. Scans only the targets you name.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err = Console(stderr=True, highlight=False)
log = logging.getLogger("vncaudit")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vncaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version,
                           help="Print the version and exit.")
    ] = False,
) -> None:
    # `vncaudit --version`, as with nmap and most tools; `vncaudit version` says the same.
    pass


def _error_line(message: str) -> None:
    # Plain write: rich would wrap a long message onto two lines.
    sys.stderr.write("vncaudit: error: " + " ".join(message.split()) + "\n")


def _fail(message: str, code: int = 2) -> typer.Exit:
    _error_line(message)
    return typer.Exit(code)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _security_summary(result: ServiceResult) -> str:
    facts = result.rfb
    if facts is None:
        return ""
    parts = [f"{t.id} {t.name}" for t in facts.security_types]
    text = ", ".join(parts)
    if facts.vencrypt:
        text += " [VeNCrypt: " + ", ".join(s.name for s in facts.vencrypt.subtypes) + "]"
    if facts.tight:
        text += " [Tight auth: " + (
            ", ".join(c.signature for c in facts.tight.auth) or "none") + "]"
    if facts.tls_inner_types is not None:
        text += " [inside TLS: " + ", ".join(t.name for t in facts.tls_inner_types) + "]"
    return text


_SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


def _plain(text: str) -> str:
    """Server-supplied text (desktop names, reasons, Tight signatures) made inert for a terminal:
    control and format characters (ANSI escapes, bidi overrides, newlines that could forge a
    line of the fix list) become visible escapes."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)


def _cell(text: str, second: str | None = None) -> Text:
    # Text, never markup: a desktop name such as "[bold]x" or "[/]" must print as it is.
    cell = Text(_plain(text))
    if second:
        cell.append("\n" + _plain(second), style="dim")
    return cell


def results_table(results: list[ServiceResult]) -> Table:
    """The human summary printed at the end of a scan."""
    table = Table(title=None, show_lines=False, expand=False)
    for col in ("host", "port", "state", "version", "security", "auth", "desktop", "risk"):
        table.add_column(col, overflow="fold")
    for r in results:
        facts = r.rfb
        auth = ""
        if facts is not None:
            auth = {True: "required", False: "NONE", None: "?"}[facts.auth_required]
        desktop = ""
        if facts is not None and facts.desktop_name is not None:
            desktop = facts.desktop_name
            if facts.framebuffer:
                desktop += f" ({facts.framebuffer.width}x{facts.framebuffer.height})"
        worst = r.worst_severity
        risk = Text(worst.value, style=_SEVERITY_STYLE[worst]) if worst else Text("")
        note = None
        if r.error and r.state is not State.VNC:
            note = r.error
        elif r.rfb and r.rfb.failure_reason:
            note = r.rfb.failure_reason
        table.add_row(
            _cell(r.host, r.hostname),
            str(r.port),
            _cell(r.state.value, note),
            _cell(facts.server_version or "" if facts else ""),
            _cell(_security_summary(r)),
            auth,
            _cell(desktop),
            risk,
        )
    return table


_EVIDENCE_SHOWN = 4  # the terminal list stays short; the reports keep every line
_WHY_SHOWN = 400


def print_findings(
    out: Console, results: list[ServiceResult], show_fix: bool = True, *,
    trusted: str | None = None,
) -> None:
    """After the table: per service with findings, each finding (severity, title, evidence,
    why) and, with `show_fix`, the fix guide's steps and commands for that host and port.

    Prose wraps with its indent kept; commands are printed unwrapped (soft wrap) so that a copy
    from the terminal stays one line. Nothing is read as markup.
    """
    from vncaudit.remedies import remedies_for

    def prose(text: Text, indent: int) -> None:
        for line in text.wrap(out, max(out.width - indent, 30)):
            line.rstrip()
            out.print(Text(" " * indent) + line, soft_wrap=True)

    for r in results:
        if not r.findings:
            continue
        head = Text(_plain(f"{r.host}:{r.port}"), style="bold")
        if r.hostname:
            head.append(_plain(f" ({r.hostname})"))
        if r.product is not None and r.product.name != "unknown":
            head.append(_plain(f"  {r.product.name} {r.product.version or ''}".rstrip()),
                        style="dim")
        out.print()
        out.print(head)
        for f in sorted(r.findings, key=lambda f: -f.severity.rank):
            line = Text(f"{f.severity.value:<8} ", style=_SEVERITY_STYLE[f.severity])
            line.append(_plain(f.title), style="bold")
            line.append(_plain(f"  [{f.id}]"), style="dim")
            prose(line, 2)
            for item in f.evidence[:_EVIDENCE_SHOWN]:
                prose(Text("evidence: " + _plain(item), style="dim"), 11)
            if len(f.evidence) > _EVIDENCE_SHOWN:
                more = len(f.evidence) - _EVIDENCE_SHOWN
                prose(Text(f"(+{more} more evidence lines in -o json / -o html)", style="dim"),
                      11)
            if f.why:
                why = f.why if len(f.why) <= _WHY_SHOWN else (
                    f.why[:_WHY_SHOWN].rsplit(" ", 1)[0] + " ... (all of it in -o json / -o html)")
                prose(Text("why: " + _plain(why)), 11)
        if not show_fix:
            continue
        fixes = remedies_for(r, trusted=trusted)
        if fixes:
            prose(Text("fix:", style="bold green"), 2)
        for fix in fixes:
            title = Text(_plain(fix.title), style="bold")
            title.append(f"  [{fix.id}]", style="dim")
            prose(title, 4)
            for step in fix.steps:
                text = Text(f"{step.platform}: ", style="bold")
                text.append(_plain(step.text))
                prose(text, 6)
                for command in step.commands:
                    out.print(Text("          " + _plain(command), style="cyan"),
                              soft_wrap=True)


def _progress_bar(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s"),
        TextColumn("vnc: {task.fields[vnc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


OUTPUTS = ("table", *report.FORMATS)


OutputOpt = Annotated[
    str, typer.Option("-o", "--output", metavar="FORMAT",
                      help=f"Output format: {', '.join(OUTPUTS)}.")
]
OutputFileOpt = Annotated[
    Path | None, typer.Option("--output-file", metavar="FILE",
                              help="Write the report here, not stdout.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Also list closed and filtered ports.")]
DbOpt = Annotated[
    Path | None,
    typer.Option("--db", metavar="FILE", help="SQLite store. Default: $VNCAUDIT_DB, else "
                 "~/.local/share/vncaudit/vncaudit.db."),
]
def finite(value: float | None) -> float | None:
    """Option callback: `inf` passes click's range check (and `nan` any comparison), but no
    deadline or rate is infinite; `inf` used to fail later as "options are not
    JSON-serialisable" (exit 3), or wait forever."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _check_trusted(trusted: str | None) -> None:
    """--trusted goes into commands meant for a root shell: refuse it before any scanning."""
    from vncaudit.remedies import UnsafeValueError, check_trusted

    if trusted is not None:
        try:
            check_trusted(trusted)
        except UnsafeValueError as exc:
            raise _fail(f"--trusted: {exc}") from None
        _check_not_everyone(trusted, "--trusted")


def _check_not_everyone(network: str, option: str) -> None:
    """An allow-list entry as broad as 0.0.0.0/0 (or anything past /8, IPv6 past /16) keeps
    the port open to the internet while the plan reads as fixed: refuse it, as the web
    service's allow-list does."""
    import ipaddress

    try:
        net = ipaddress.ip_network(network.strip(), strict=False)
    except ValueError:
        return  # a host name or a single address
    limit = 8 if net.version == 4 else 16
    if net.prefixlen < limit:
        bits = net.max_prefixlen - net.prefixlen
        what = "every address" if net.prefixlen == 0 else f"2**{bits} addresses"
        raise _fail(f"{option} {network}: allows {what}, which keeps the port open to the "
                    f"internet; list your own networks (/{limit} or narrower)")


FixOpt = Annotated[
    bool,
    typer.Option("--fix/--no-fix", help="Table output: after the table, list every finding "
                 "with the commands that fix it for that host and port."),
]
TrustedOpt = Annotated[
    str | None,
    typer.Option("--trusted", metavar="NETWORK",
                 help="Table output: the network that keeps access (IP, CIDR or "
                 "host name), filled into the firewall allow-list commands."),
]


_SCAN_EXAMPLES = """Examples:

  vncaudit scan 10.1.2.3                      the default VNC ports (5800, 5900-5910)
  vncaudit scan 10.0.0.0/24 -p 5900-5999,5800
  vncaudit scan host.example.org -p :0-:9     display numbers: ports 5900-5909
  vncaudit scan -iL hosts.txt --exclude 10.0.0.7 -o json --output-file report.json
  vncaudit scan 10.0.0.0/24 --fail-on high    exit 1 when a finding is high or worse
  vncaudit scan --resume s-20261124-ab12cd    continue an interrupted scan

Exit codes: 0 done, 1 a finding at or above --fail-on, 2 usage or input error, 3 runtime
failure, 130 interrupted (Ctrl-C; the resume command is printed)."""


@app.command(epilog=_SCAN_EXAMPLES)
def scan(
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", help="IPs, CIDRs (10.0.0.0/24, fd00::/120), ranges "
                       "(10.0.0.1-10.0.0.50), hostnames. Nothing is scanned without targets."),
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
    password: Annotated[
        str | None,
        typer.Option("--password", metavar="PASSWORD",
                     help="Active: authenticate with this known password to read "
                     "the desktop name (and --screenshot) on protected servers."),
    ] = None,
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
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log lines on stderr "
                          "(-vv: debug).")
    ] = 0,
) -> None:
    """Scan targets for VNC: one connection per port, no password ever sent.

    Every result is recorded in the store as it arrives; a killed scan continues with --resume.
    """
    _setup_logging(verbose)
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
        options = ScanOptions(
            concurrency=int(spec["concurrency"]),
            rate=spec["rate"],
            discovery=spec.get("discovery_mode", "connect"),
            retries=spec.get("retries"),
            probe=probe_options,
            post_probe=_post_probe(active, probe_options, web),
        )
        pending = (t for t in space.iter_targets() if (t.host, t.port) not in done)
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

        terminated: list[int] = []
        try:
            try:
                with _sigterm_as_interrupt(terminated):
                    if cluster_spec is not None:
                        _run_sharded(space, options, store, scan_id, cluster_spec,
                                     progress_state, err.is_terminal)
                    else:
                        _run_with_progress(pending, options, progress_state, err.is_terminal,
                                           save)
            finally:
                flush_marks()
        except KeyboardInterrupt:
            store.finish_scan(scan_id, "interrupted")
            how, code = ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)
            raise _fail(f"{how}; {progress_state.done} ports recorded. Resume with: "
                        f"vncaudit scan --resume {scan_id}", code) from None
        except VncAuditError as exc:
            store.finish_scan(scan_id, "interrupted")
            raise _fail(str(exc), 3) from None
        record = store.finish_scan(scan_id)
        results = store.results(scan_id, include_closed=include_all)

    _emit(record, results, output, output_file, include_all, show_fix=show_fix,
          trusted=trusted)
    if threshold is not None and any(
        f.severity.rank >= threshold.rank for r in results for f in r.findings
    ):
        raise typer.Exit(1)


DEFAULT_PORTS_SPEC = "5800,5900-5910"


@contextlib.contextmanager
def _sigterm_as_interrupt(seen: list[int]) -> Iterator[None]:
    """While a scan runs, SIGTERM (kill, systemd, timeout(1)) stops it the way Ctrl-C does:
    what is done is stored, the scan is marked interrupted and the resume command printed,
    instead of dying with the scan left "running". A handler someone else set is kept."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        seen.append(signum)
        # The SIGINT path is the one that stops the event loop cleanly (asyncio.Runner).
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _check_output_file(path: Path | None, keep: Iterable[Path | str | None] = ()) -> None:
    """--output-file is checked before any work, so a long scan never ends in "cannot write"
    (the store keeps the results either way). The file itself is not created yet. *keep*:
    files the report must not overwrite (the store, the input lists)."""
    if path is None:
        return
    for other in (*keep, default_db_path()):
        if other is None or str(other) in ("", "-", ":memory:"):
            continue
        with contextlib.suppress(OSError):
            if path.exists() and os.path.samefile(path, Path(other).expanduser()):
                raise _fail(f"--output-file {path} would overwrite {other} (the store or an "
                            "input of this command); write the report elsewhere")
    shown = str(path) or "''"
    if not str(path).strip() or path.is_dir():
        raise _fail(f"--output-file {shown}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise _fail(f"--output-file {shown}: directory {parent} does not exist")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise _fail(f"--output-file {shown}: permission denied")


def _open_store(db: Path | None) -> Store:
    """Open the store for a command; a --db the user typed must name a file in a directory
    that exists (only the default location is created), so a typo is an error, not a new
    empty database somewhere."""
    if db is not None and str(db) != ":memory:":
        where = db.expanduser()
        if where.is_dir():
            raise _fail(f"--db {db}: is a directory; give the database file's path")
        if not where.parent.is_dir():
            raise _fail(f"--db {db}: directory {where.parent} does not exist")
    try:
        return Store.open(db)
    except StoreError as exc:
        raise _fail(str(exc), 3) from None


def _check_discovery(mode: str) -> None:
    """--discovery: a known mode, and raw-socket rights for syn (exit 2 before any packet)."""
    from vncaudit import discovery

    if mode not in tuple(discovery.Mode):
        raise _fail(f"unknown --discovery {mode!r}; use connect or syn")
    if mode == discovery.Mode.SYN:
        try:
            discovery.check_syn_allowed()
        except UsageError as exc:
            raise _fail(str(exc)) from None


def _active_options(
    screenshot: bool,
    password: str | None,
    check_passwords: bool,
    wordlist: Path | None,
    max_attempts: int,
    show_passwords: bool,
    active_checks: bool,
    output_file: Path | None,
) -> Any:
    from vncaudit import active

    if wordlist is not None and not check_passwords:
        # Read and then ignored, a list would let the user believe it had been tried.
        raise UsageError("--wordlist is the password list of --check-passwords; add "
                         "--check-passwords (or leave --wordlist out)")
    try:
        words = _read_password_list(wordlist) if wordlist else None
    except OSError as exc:
        raise UsageError(f"cannot read {wordlist}: {exc.strerror}") from None
    # Absolute, so a report rendered later from the store (`results -o html`) finds the PNGs.
    shots = ((output_file.parent if output_file else Path.cwd()) / "screenshots").absolute()
    return active.ActiveOptions(
        screenshot=screenshot,
        screenshot_dir=shots if screenshot else None,
        password=password,
        check_passwords=check_passwords,
        wordlist=words,
        wordlist_source="wordlist" if words else "builtin",
        max_attempts=max_attempts,
        show_passwords=show_passwords,
        active_checks=active_checks,
    )


_MAX_STREAM_INPUT = 64 * 1024 * 1024  # bytes of an -iL/--nmap-xml/--masscan stream kept


def _kept_input(name: str, store: Store) -> str:
    """An input file that cannot be read twice (`-` for stdin, a pipe, `<(cmd)`, /dev/stdin) is
    copied next to the store first, and the copy is what the scan records: --resume must see
    the same targets in the same order, and the masscan reader looks at a file twice."""
    import stat

    path = Path(name)
    if name != "-":
        try:
            mode = path.stat().st_mode
        except OSError:
            return name  # the target reader reports it
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return name  # a file (or a device, a directory: the reader refuses those)
    if store.path is None:
        return name  # an in-memory store (tests): nothing to resume
    import hashlib
    import tempfile

    shown = "standard input" if name == "-" else name
    kept = store.path.parent / "inputs"
    try:
        kept.mkdir(mode=0o700, exist_ok=True)
        source = sys.stdin.buffer if name == "-" else path.open("rb")
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=kept, delete=False) as copy:
            try:
                size = 0
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    if size > _MAX_STREAM_INPUT:
                        raise UsageError(f"{shown} holds more than "
                                         f"{_MAX_STREAM_INPUT >> 20} MiB; write it to a file "
                                         "and name that file")
                    digest.update(chunk)
                    copy.write(chunk)
            except BaseException:
                os.unlink(copy.name)
                raise
            finally:
                if source is not sys.stdin.buffer:
                    source.close()
        final = kept / f"{digest.hexdigest()[:32]}.txt"
        os.replace(copy.name, final)
    except OSError as exc:
        raise UsageError(f"cannot read {shown}: {exc.strerror or exc}") from None
    return str(final)


_MAX_WORDLIST_LINE = 4096  # a VNC password counts 8 bytes; a longer line is not a password


def _read_password_list(path: Path) -> list[str]:
    """--wordlist, line by line with a bound (a binary file or /dev/zero is refused, never
    loaded whole); bytes that are not UTF-8 are kept as replacement characters."""
    from vncaudit import active

    def lines(stream: IO[str]) -> Iterator[str]:
        lineno = 0
        while line := stream.readline(_MAX_WORDLIST_LINE + 1):
            lineno += 1
            if len(line) > _MAX_WORDLIST_LINE:
                raise UsageError(f"{path}:{lineno}: line longer than {_MAX_WORDLIST_LINE} "
                                 "characters; not a password list")
            yield line

    with path.open(encoding="utf-8", errors="replace") as fh:
        return active.read_wordlist(lines(fh))


def _post_probe(
    active_options: Any, probe_options: ProbeOptions, web: bool
) -> Callable[[ServiceResult], Awaitable[ServiceResult]] | None:
    """What runs after each probe: web front-end detection, then the opt-in active checks."""
    from dataclasses import replace

    from vncaudit import active, websocket

    if not web and not active_options.enabled:
        return None

    async def post(result: ServiceResult) -> ServiceResult:
        if (web and result.port in websocket.WEB_PORTS
                and result.state in (State.TARPIT, State.OPEN_NOT_VNC)):
            target = Target(result.host, result.port, result.hostname)
            found = await websocket.probe_web(target, probe_options)
            if found.state is State.VNC or (found.extra.get("web") or {}).get("transport"):
                result = found
        if active_options.enabled and result.state is State.VNC:
            connector = None
            ws = (result.extra.get("web") or {}).get("websocket") or {}
            if ws.get("path"):
                connector = websocket.connector(ws["path"])
            try:
                checks = await active.run_active(result, active_options, connector)
            except Exception as exc:  # an active check must never cost the probe's result
                log.warning("active checks on %s:%s failed: %s", result.host, result.port, exc)
                checks = {"error": f"{type(exc).__name__}: {exc}"}
            if checks:
                result = replace(result, extra={**result.extra, "active": checks})
        return result

    return post


def _space_from_spec(spec: dict[str, Any]) -> Any:
    """The target space a stored or new scan describes (same seed → same order on resume)."""
    from vncaudit import targets as targets_mod

    resolved: dict[str, list[str]] = spec.get("resolved") or {}

    def resolve(name: str) -> list[str]:
        # Names found by --domain keep the addresses discovery saw: resolved once, even on resume.
        return resolved.get(name) or targets_mod.default_resolver(name)

    space = targets_mod.build_target_space(
        spec["expressions"],
        targets_mod.parse_ports(spec["ports"]),
        resolve=resolve,
        input_files=spec["input_files"],
        nmap_xml=spec["nmap_xml"],
        masscan=spec["masscan"],
        excludes=spec["excludes"],
        exclude_files=spec["exclude_files"],
        allow_special=spec["allow_special"],
    )
    if spec.get("seed") is not None:
        space.seed = int(spec["seed"])
    return space


def _emit(
    record: ScanRecord,
    results: list[ServiceResult],
    output: str,
    output_file: Path | None,
    include_all: bool,
    *,
    show_fix: bool = True,
    trusted: str | None = None,
) -> None:
    meta = report.ScanMeta(
        id=record.id,
        started=record.started,
        finished=record.finished,
        targets=list(record.targets),
        ports=record.ports,
        tool=record.tool,
        extra={"discovery": record.options["discovery"]} if record.options.get("discovery")
        else {},
    )
    results = sorted(results, key=lambda r: (_host_key(r.host), r.port))
    shown = report.visible(results, include_all)
    if output == "table":
        import io

        # Into a buffer first when it goes to a file: a failing write (disk full) is then
        # the one "cannot write" line below, never an error from inside rich.
        buffer = io.StringIO() if output_file else None
        out = Console(file=buffer, highlight=False)
        if shown:
            out.print(results_table(shown))
            print_findings(out, shown, show_fix, trusted=trusted)
        elif record.counts.get("done"):
            out.print("nothing answered on the probed ports (--all lists closed and "
                      "filtered)")
        if output_file and buffer is not None:
            try:
                output_file.write_text(buffer.getvalue(), encoding="utf-8")
            except OSError as exc:
                raise _fail(f"cannot write {output_file}: {exc.strerror or exc}; the results "
                            f"are kept: vncaudit results {record.id}", 3) from None
        counts = record.counts
        err.print(f"scan {record.id}: {counts.get('done', len(results))} ports probed, "
                  f"{counts.get('vnc', 0)} VNC, {len(shown)} shown", style="dim", markup=False)
        return
    text = report.render(output, meta, results, include_all)
    if output_file:
        try:
            # UTF-8 whatever the locale: the HTML page declares it, and server strings vary.
            output_file.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise _fail(f"cannot write {output_file}: {exc.strerror or exc}; the results are "
                        f"kept: vncaudit results {record.id} -o {output}", 3) from None
    else:
        sys.stdout.write(text)


def _host_key(host: str) -> tuple[int, bytes]:
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (2, host.encode())
    return (ip.version, ip.packed)


def _run_with_progress(
    pending: Iterable[Target],
    options: ScanOptions,
    state: EngineProgress,
    show: bool,
    on_result: Callable[[ServiceResult], None],
) -> None:
    bar = _progress_bar(err) if show else None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        task_id = bar.add_task("scan", total=state.total, rate=0.0, vnc=0) if bar else None
        shown = [started]

        def draw() -> None:
            if bar is not None and task_id is not None:
                now = loop.time()
                shown[0] = now
                bar.update(task_id, completed=state.done,
                           rate=state.done / max(now - started, 1e-6), vnc=state.vnc)

        def update(result: ServiceResult) -> None:
            on_result(result)
            # The bar redraws a few times a second anyway: thousands of updates a second
            # would cost the scan, not show more.
            if bar is not None and loop.time() - shown[0] >= 0.1:
                draw()

        await scan_async(pending, options, on_result=update, progress=state, collect=False)
        draw()

    if bar is None:
        run_loop(run())
        return
    with bar:
        run_loop(run())


def _run_sharded(
    space: TargetSpace,
    options: ScanOptions,
    store: Store,
    scan_id: str,
    spec: ClusterSpec,
    state: EngineProgress,
    show: bool,
) -> None:
    """--workers / --cluster: the same scan, sharded over Dask (vncaudit.cluster), which
    stores the results itself; raises VncAuditError when shards are left unfinished."""
    import contextlib
    import time

    from vncaudit import cluster

    bar = _progress_bar(err) if show else None
    started = time.monotonic()
    task_id = bar.add_task("scan", total=state.total, rate=0.0, vnc=0) if bar else None

    def update(result: ServiceResult) -> None:
        if bar is not None and task_id is not None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(task_id, completed=state.done, rate=state.done / elapsed, vnc=state.vnc)

    with bar if bar is not None else contextlib.nullcontext():
        run = cluster.scan_sharded(space, options, store, scan_id, spec, on_result=update,
                                   progress=state)
    err.print(f"{run.shards} shards ({run.ran} run now, {run.skipped} done before) on "
              f"{run.workers} workers in {run.elapsed:.1f} s; {run.reruns} reruns, "
              f"{run.duplicates} repeated verdicts ignored", style="dim", markup=False,
              soft_wrap=True)
    if run.failed:
        index, why = sorted(run.failed.items())[0]
        raise cluster.ClusterError(f"{len(run.failed)} of {run.shards} shards did not finish "
                                   f"(shard {index}: {why}); resume with: vncaudit scan "
                                   f"--resume {scan_id} --workers N")


def _domain_targets(
    domains: list[str], resolver: str | None
) -> tuple[list[str], dict[str, list[str]], list[dict[str, Any]]]:
    """Discover each domain's hosts: their names, the addresses each resolved to, and the
    discovery records (how every name was found) to keep with the scan.

    Names that resolve to special addresses (black-holed to 0.0.0.0, multicast, reserved) are
    dropped with a warning instead of aborting the whole scan.
    """
    import ipaddress

    from vncaudit import subdomains

    names: list[str] = []
    known: dict[str, list[str]] = {}
    records: list[dict[str, Any]] = []
    for name in domains:
        found = subdomains.discover_sync(name, resolver=resolver)
        records.append(found.to_dict())
        for host in found.hosts:
            if not host.addresses or subdomains.is_external(host, found.domain):
                continue
            usable = []
            for address in host.addresses:
                ip = ipaddress.ip_address(address)
                if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
                    err.print(f"warning: {host.name} resolves to {address}; not scanned",
                              style="yellow", markup=False)
                    continue
                usable.append(address)
            if usable and not _plain_target_name(host.name, usable):
                # A zone transfer may carry any label ("a/b", "x:y", "10.0.0.1-9."): one such
                # name must not abort the scan of the domain's other hosts.
                err.print(f"warning: {_plain(host.name)} is not a plain host name; not scanned",
                          style="yellow", markup=False)
                continue
            if usable:
                names.append(host.name)
                known[host.name] = usable
        err.print(f"{found.domain}: {len(known)} hosts found "
                  f"({found.queries} DNS queries)", style="dim", markup=False)

    return names, known, records


def _plain_target_name(name: str, addresses: list[str]) -> bool:
    """Does the target parser take *name* as a host name (not a network, range or error)?"""
    from vncaudit import targets as targets_mod

    try:
        space = targets_mod.build_target_space([name], (1,), allow_special=True,
                                               resolve=lambda _name: addresses)
    except UsageError:
        return False
    return space.describe() == [name.lower().removesuffix(".")]


@app.command(epilog="""Examples:

  vncaudit subdomains example.org
  vncaudit subdomains example.org --resolver 192.0.2.53 --wordlist labels.txt --json
  vncaudit scan --domain example.org          find the hosts and scan them""")
def subdomains(
    domain: Annotated[str, typer.Argument(help="The domain whose hosts to find.")],
    resolver: Annotated[
        str | None, typer.Option("--resolver", help="DNS server to ask, IP[:PORT].")
    ] = None,
    wordlist: Annotated[
        list[Path] | None, typer.Option("--wordlist", help="Extra host labels, one per line.")
    ] = None,
    no_builtin: Annotated[
        bool, typer.Option("--no-builtin-wordlist", help="Use only --wordlist labels.")
    ] = False,
    no_axfr: Annotated[bool, typer.Option("--no-axfr", help="Do not try zone transfers.")] = False,
    concurrency: Annotated[
        int, typer.Option("--dns-concurrency", min=1, help="DNS queries in flight.")
    ] = 50,
    rate: Annotated[
        float | None, typer.Option("--dns-rate", min=0.1, callback=finite,
                                    help="Max DNS queries per second.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--dns-timeout", min=0.1, callback=finite,
                             help="Seconds per DNS query.")
    ] = 3.0,
    axfr_port: Annotated[int, typer.Option("--axfr-port", hidden=True)] = 53,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Find a domain's hosts by DNS: zone transfer, a wordlist of common labels, wildcard aware."""
    import json

    from vncaudit import subdomains as sub

    try:
        words: list[str] = []
        for path in wordlist or []:
            words += sub.read_wordlist(path)
        found = sub.discover_sync(
            domain, resolver=resolver, wordlist=words or None, builtin=not no_builtin,
            concurrency=concurrency, rate=rate, timeout=timeout, axfr=not no_axfr,
            axfr_port=axfr_port,
        )
    except UsageError as exc:
        raise _fail(str(exc)) from None
    except NetworkError as exc:
        raise _fail(str(exc), 3) from None
    if as_json:
        sys.stdout.write(json.dumps(found.to_dict(), indent=2) + "\n")
        return
    out = Console(highlight=False)
    table = Table()
    for col in ("name", "addresses", "cname chain", "found by"):
        table.add_column(col, overflow="fold")
    for host in found.hosts:
        # Names come from the zone's servers (AXFR): "[/]x" is a valid label, not markup.
        table.add_row(_cell(host.name), "\n".join(host.addresses) or "[dim](none)[/]",
                      _cell(" -> ".join(host.cnames)), ", ".join(host.sources))
    out.print(table)
    if found.wildcard is not None:
        out.print(f"wildcard DNS: random names resolve to {', '.join(found.wildcard)}; "
                  f"{found.wildcard_dropped} wordlist names dropped as wildcard answers")
    for server, status in found.axfr.items():
        style = "bold red" if status == "ok" else "dim"
        note = " (zone transfer open to anyone)" if status == "ok" else ""
        out.print(f"[{style}]zone transfer from {server}: {status}{note}[/]")
    for line in found.errors:
        err.print(line, style="dim", markup=False)


@app.command(epilog="""Examples:

  vncaudit results                            the recent scans
  vncaudit results --target 10.0.0.0/24       only scans of this target
  vncaudit results s-20261124-ab12cd -o html --output-file report.html""")
def results(
    scan_id: Annotated[
        str | None, typer.Argument(help="A scan id to show; without it, list recent scans.")
    ] = None,
    output: OutputOpt = "table",
    output_file: OutputFileOpt = None,
    include_all: AllOpt = False,
    show_fix: FixOpt = True,
    trusted: TrustedOpt = None,
    target: Annotated[
        str | None, typer.Option("--target", metavar="TARGET", help="Only scans of this target.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N",
                                       help="How many scans to list.")] = 50,
    db: DbOpt = None,
) -> None:
    """List past scans, or show / export one of them in any output format."""
    if output not in OUTPUTS:
        raise _fail(f"unknown output format {output!r}; choose one of {', '.join(OUTPUTS)}")
    if scan_id is None and output not in ("table", "json"):
        raise _fail(f"the list of scans is printed as table or json, not {output}; give a scan "
                    f"id to export that scan as {output}")
    _check_trusted(trusted)
    _check_output_file(output_file, [db])
    try:
        with _open_store(db) as store:
            if scan_id is None:
                records = store.list_scans(limit=limit, target=target)
                stored: list[ServiceResult] = []
            else:
                record = store.require_scan(scan_id)
                stored = store.results(scan_id, include_closed=include_all)
    except StoreError as exc:
        raise _fail(str(exc), 2 if isinstance(exc, UnknownScanError) else 3) from None
    if scan_id is not None:
        _emit(record, stored, output, output_file, include_all, show_fix=show_fix,
              trusted=trusted)
        return
    if output != "table":
        import json

        _write_out(output_file, json.dumps([r.to_dict() for r in records], indent=2) + "\n")
        return
    table = Table()
    for col in ("scan", "status", "started", "targets", "ports", "probed", "vnc", "no auth",
                "worst"):
        table.add_column(col, overflow="fold")
    for r in records:
        c = r.counts
        worst = next((sev.value for sev in Severity if c.get(sev.value)), "")
        table.add_row(r.id, r.status, r.started, " ".join(r.targets)[:60], r.ports,
                      str(c.get("done", "")), str(c.get("vnc", "")), str(c.get("no_auth", "")),
                      worst)
    if not records and output_file is None:
        where = db or default_db_path()
        err.print(f"no scans stored{' of ' + target if target else ''} in {where}",
                  markup=False, soft_wrap=True)
        return
    if output_file is None:
        Console(highlight=False).print(table)
        return
    import io

    buffer = io.StringIO()
    Console(file=buffer, highlight=False, width=200).print(table)
    _write_out(output_file, buffer.getvalue())


def _write_out(output_file: Path | None, text: str) -> None:
    """*text* to --output-file (UTF-8) or stdout; a failure to write is one line, exit 3."""
    if output_file is None:
        sys.stdout.write(text)
        return
    try:
        output_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {output_file}: {exc.strerror or exc}", 3) from None


@app.command(epilog="""Example:

  vncaudit diff s-20261124-ab12cd s-20261125-cd34ef --json""")
def diff(
    scan_a: Annotated[str, typer.Argument(help="The earlier scan id.")],
    scan_b: Annotated[str, typer.Argument(help="The later scan id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOpt = None,
) -> None:
    """What changed between two scans: services that appeared, disappeared or changed."""
    try:
        with _open_store(db) as store:
            changes = store.diff(scan_a, scan_b)
    except StoreError as exc:
        raise _fail(str(exc), 2 if isinstance(exc, UnknownScanError) else 3) from None
    if as_json:
        import json

        sys.stdout.write(json.dumps(changes.to_dict(), indent=2) + "\n")
        return
    lines = changes.lines()
    out = Console(highlight=False)
    if not lines:
        out.print(f"no changes between {scan_a} and {scan_b}", markup=False)
    for line in lines:
        out.print(line, markup=False)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"vncaudit {__version__}")


# Commands that live in their own modules register themselves on `app` when imported.
# (Each module imports `app` and the shared helpers above from this package.)


def main() -> None:
    """Console-script entry point: map any escaping error to one line and exit code 3."""
    try:
        app()
    except VncAuditError as exc:
        _error_line(str(exc))
        sys.exit(3)
    except MemoryError:
        _error_line("out of memory (an input file or a target range too large for this "
                    "machine?)")
        sys.exit(3)
    except Exception as exc:  # a bug: one line for the user, the traceback for -vv
        log.debug("unexpected error", exc_info=True)
        _error_line(f"internal error: {type(exc).__name__}: {exc} (run with -vv for details)")
        sys.exit(3)
from vncaudit.cli import local as _local  # noqa: E402,F401
from vncaudit.cli import serve as _serve  # noqa: E402,F401
