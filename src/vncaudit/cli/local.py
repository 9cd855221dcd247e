"""Commands `vncaudit local`, `vncaudit harden` and `vncaudit check`: the host's own view.

Owns: their options, tables, prompts and exit codes. Must not: hold audit, firewall or fix
logic (that is `vncaudit.local`, `vncaudit.firewall`, `vncaudit.harden`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vncaudit import firewall, harden
from vncaudit import local as local_mod
from vncaudit.budget import Ledger, ScanGate, table_note
from vncaudit.cli.common import (
    DbOpt,
    JsonAliasOpt,
    RiskLockoutOpt,
    check_not_everyone,
    check_output_file,
    err,
    fail,
    finite,
    output_format,
    output_option,
    setup_logging,
    write_out,
)
from vncaudit.cli.output import (
    SEVERITY_STYLE,
    Column,
    fitted_table,
    security_summary,
    text_cell,
)
from vncaudit.cli.program import app
from vncaudit.display import escape
from vncaudit.exceptions import UsageError, VncAuditError
from vncaudit.models import SILENT_STATES, ServiceResult, Severity, State, Target
from vncaudit.store import Store, StoreError

PortsOpt = Annotated[
    str, typer.Option("-p", "--ports", metavar="PORTS",
                      help="Ports that count as VNC whatever listens on them.")
]
OnlyPortOpt = Annotated[
    list[int] | None,
    typer.Option("--only-port", metavar="PORT",
                 help="Look at this port only (repeatable); others are not "
                 "listed, sniffed or probed."),
]
VerboseOpt = Annotated[
    int, typer.Option("-v", "--verbose", count=True, help="More log lines on stderr (-vv: debug).")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.1, metavar="SECONDS", callback=finite,
                        help="Seconds per probe of a listener.")
]
DEFAULT_LOCAL_PORTS = "5800-5999"


def _ports(spec: str) -> tuple[int, ...]:
    from vncaudit.targets import parse_ports

    try:
        return parse_ports(spec)
    except UsageError as exc:
        raise fail(str(exc)) from None


def _check_only_ports(only_port: list[int] | None) -> None:
    for port in only_port or ():
        if not 1 <= port <= 65535:
            raise fail(f"invalid --only-port {port}: ports are 1-65535")


def _run_audit(ports: str, only_port: list[int] | None, sniff: bool, probe: bool,
               timeout: float, db: Path | None = None,
               risk_lockout: bool = False) -> local_mod.LocalAudit:
    """The local audit, its banner reads and probes counted in the store's connection ledger.
    A store that cannot be opened costs the connections, not the audit: listeners, processes
    and the firewall are still read, and the report says what was not probed and why."""
    _check_only_ports(only_port)
    parsed = _ports(ports)
    store: Store | None = None
    unprobed: str | None = None
    if sniff or probe:
        where = _checked_db(db)
        try:
            store = Store.open(where)
        except StoreError as exc:
            unprobed = (f"no listener probed or banner read: the connection ledger cannot be "
                        f"opened ({exc}), so a connection could not be counted")
            sniff = probe = False
    try:
        if store is None:
            audit = local_mod.audit(parsed, only_ports=only_port, sniff=sniff,
                                    probe_listeners=probe, timeout=timeout)
        else:
            with store, Ledger(store, risk_lockout=risk_lockout) as ledger:
                audit = local_mod.audit(parsed, only_ports=only_port, sniff=sniff,
                                        probe_listeners=probe, timeout=timeout, ledger=ledger)
    except VncAuditError as exc:
        raise fail(str(exc), 3) from None
    if unprobed is not None:
        audit = replace(audit, blind_spots=[*audit.blind_spots, unprobed])
    return audit


def _checked_db(db: Path | None) -> Path | None:
    """A --db the user typed must name a file in a directory that exists (as for scan)."""
    if db is not None and str(db) != ":memory:":
        where = db.expanduser()
        if where.is_dir():
            raise fail(f"--db {db}: is a directory; give the database file's path")
        if not where.parent.is_dir():
            raise fail(f"--db {db}: directory {where.parent} does not exist")
    return db


def _verdict_text(x: local_mod.Listener) -> str:
    if x.scope == "loopback":
        return "n/a (loopback)"
    parts = []
    for fam, v in x.firewall.items():
        style = "green" if v.blocked else "yellow" if v.action in (
            firewall.Action.RESTRICTED, firewall.Action.UNKNOWN) else "red"
        parts.append(f"{fam}: [{style}]{v}[/]")
    return "\n".join(parts) or "[dim]not read[/]"


LOCAL_COLUMNS = (
    Column("bind", whole=True), Column("port", whole=True), Column("process"),
    Column("user", drop=2), Column("product", drop=3), Column("security", drop=1),
    Column("auth", whole=True), Column("firewall"), Column("risk", whole=True),
)


def local_table(audit: local_mod.LocalAudit, width: int | None = None) -> Table:
    """The listeners, one row each; at `width` columns an address is never broken and the
    columns that matter least give way."""
    rows: list[list[str | Text]] = []
    for x in audit.listeners:
        r = x.result
        bind = f"[{x.address}]" if ":" in x.address else x.address
        scope = {"all-interfaces": Text("all interfaces", style="bold red"),
                 "loopback": Text("loopback only"), "address": Text("one address")}[x.scope]
        if x.family == firewall.IPV6 and x.scope == "all-interfaces":
            scope.append("\nIPv6 wildcard", style="bold")
        # Process names, user names and what the server sent are anyone's text: cells, never
        # markup ("[/]" as a process name would crash the table, escapes reach the terminal).
        proc: Text = Text("not visible", style="dim")
        if x.process is not None:
            proc = text_cell(f"{x.process.pid} {x.process.name or '?'}")
        auth = Text("")
        if r is not None and r.rfb is not None:
            auth = {True: Text("required"), False: Text("NONE", style="bold red"),
                    None: Text("?")}[r.rfb.auth_required]
        elif r is not None:
            auth = Text(r.state.value, style="dim")
        worst = x.severity
        risk = Text(worst.value, style=SEVERITY_STYLE[worst]) if worst else Text("")
        rows.append([Text(bind + "\n").append_text(scope), str(x.port), proc,
                     text_cell(x.process.user or "" if x.process else ""),
                     text_cell(x.product or ""),
                     text_cell(security_summary(r) if r is not None else ""), auth,
                     Text.from_markup(_verdict_text(x)), risk])
    return fitted_table(LOCAL_COLUMNS, rows, width, show_lines=True)


def _print_local(audit: local_mod.LocalAudit, out: Console) -> None:
    if audit.listeners:
        out.print(local_table(audit, out.width))
    else:
        out.print("no VNC listener found on this machine", markup=False)
    for x in audit.listeners:
        lines = []
        if x.process is not None and x.process.cmdline:
            lines.append(f"  command line: {local_mod.command_line(x.process)}")
        if x.process is not None and x.process.unit:
            lines.append(f"  systemd unit: {x.process.unit}")
        lines += [f"  {c.source}: {c.setting} {c.value} — {c.meaning}".replace("  —", " —")
                  for c in x.config]
        lines.append(f"  counted as VNC because: {'; '.join(x.reasons)}")
        ledger_note = x.result.extra.budget if x.result is not None else None
        if ledger_note is not None and ledger_note.reason:
            lines.append(f"  connection ledger: {ledger_note.reason}")
        if x.result is not None:
            for f in x.result.findings:
                if f.severity.rank >= Severity.LOW.rank:
                    lines.append(f"  [{f.severity.value}] {f.title}")
        out.print(f"{x.address}:{x.port}", markup=False, style="bold")
        for line in lines:
            # markup=False leaves ESC sequences from a command line or config file intact.
            out.print(escape(line), markup=False, soft_wrap=True)
    if audit.firewall is not None:
        err.print("firewall: " + "; ".join(audit.firewall.describe()), style="dim",
                  markup=False, soft_wrap=True)
    for b in audit.blind_spots:
        err.print(f"could not see: {b}", style="yellow", markup=False, soft_wrap=True)
    sockets = "socket" if audit.sockets_seen == 1 else "sockets"
    err.print(f"{audit.sockets_seen} listening TCP {sockets} seen, {len(audit.listeners)} VNC"
              + ("" if audit.root else " (not root: other users' processes are hidden)"),
              style="dim", markup=False)


@app.command("local", epilog="""Examples:

  vncaudit local                              every listener on 5800-5999, plus sniffing
  sudo vncaudit local -o json --output-file inside.json   for `vncaudit check --inside`
  vncaudit local --fail-on high               exit 1 when a finding is high or worse""")
def local_cmd(
    ports: PortsOpt = DEFAULT_LOCAL_PORTS,
    only_port: OnlyPortOpt = None,
    no_sniff: Annotated[
        bool, typer.Option("--no-sniff", help="Do not read a banner from other listeners to "
                           "find VNC on unusual ports.")
    ] = False,
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="Do not probe the VNC listeners on loopback.")
    ] = False,
    timeout: TimeoutOpt = 5.0,
    risk_lockout: RiskLockoutOpt = False,
    db: DbOpt = None,
    output: Annotated[str, output_option(("table", "json"),
                                         " (json: the file `vncaudit check --inside` reads)")
                      ] = "table",
    output_file: Annotated[
        Path | None, typer.Option("--output-file", metavar="FILE",
                                  help="Write the report here, not stdout.")
    ] = None,
    fail_on: Annotated[
        str | None, typer.Option("--fail-on", metavar="SEVERITY",
                                  help="Exit 1 if a finding is at or above this severity "
                                  "(critical, high, medium, low, info).")
    ] = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Audit THIS machine: VNC listeners, bind addresses, processes, configs, firewall."""
    setup_logging(verbose)
    output_format(output, False, ("table", "json"))
    threshold = _threshold(fail_on)
    check_output_file(output_file)
    audit = _run_audit(ports, only_port, not no_sniff, not no_probe, timeout, db, risk_lockout)
    if output == "json":
        write_out(output_file, json.dumps(audit.to_dict(), indent=2) + "\n")
    elif output_file is None:
        _print_local(audit, Console(highlight=False))
    else:
        try:
            with output_file.open("w", encoding="utf-8") as handle:
                _print_local(audit, Console(file=handle, highlight=False))
        except OSError as exc:
            raise fail(f"cannot write {output_file}: {exc.strerror or exc}", 3) from None
    if threshold is not None and audit.worst is not None and audit.worst.rank >= threshold.rank:
        raise typer.Exit(1)


def _threshold(fail_on: str | None) -> Severity | None:
    if fail_on is None:
        return None
    try:
        return Severity(fail_on.lower())
    except ValueError:
        raise fail(f"unknown severity {fail_on!r} for --fail-on") from None


@app.command("harden", epilog="""Examples:

  vncaudit harden                             print the plan, change nothing
  vncaudit harden --allow 192.0.2.0/24        allow-list a network instead of a block
  sudo vncaudit harden --apply                run the firewall part (asks; a backup first)
  sudo vncaudit harden --rollback             restore the rules saved by the last --apply""")
def harden_cmd(
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", metavar="NETWORK",
                     help="Keep access from this network (CIDR, repeatable): "
                     "allow-list instead of a block."),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Run the firewall commands (root; asks first).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --apply.")] = False,
    do_rollback: Annotated[
        bool, typer.Option("--rollback", help="Restore the rules saved by the last --apply.")
    ] = False,
    backup: Annotated[
        str | None, typer.Option("--backup", metavar="NAME",
                                 help="With --rollback: which backup (its name).")
    ] = None,
    backend: Annotated[
        str, typer.Option("--backend", metavar="BACKEND",
                          help="auto (ufw if active, else nftables, else "
                          "iptables), ufw, nftables or iptables.")
    ] = "auto",
    backup_dir: Annotated[
        Path, typer.Option("--backup-dir", metavar="DIR", help="Where --apply keeps its backups.")
    ] = harden.DEFAULT_BACKUP_DIR,
    ports: PortsOpt = DEFAULT_LOCAL_PORTS,
    only_port: OnlyPortOpt = None,
    timeout: TimeoutOpt = 5.0,
    output: Annotated[str, output_option(("table", "json"), " (the plan)")] = "table",
    as_json: JsonAliasOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Print the exact fix commands for this host; --apply runs the firewall part."""
    setup_logging(verbose)
    as_json = output_format(output, as_json, ("table", "json")) == "json"
    if backend not in harden.BACKENDS:
        raise fail(f"unknown backend {backend!r}; choose {', '.join(harden.BACKENDS)}")
    if do_rollback:
        _rollback(backup_dir, backup, yes)
        return
    if apply:
        _check_may_apply(yes)
    for network in allow or ():
        check_not_everyone(network, "--allow")
    audit = _run_audit(ports, only_port, True, True, timeout)
    try:
        plan = harden.build_plan(audit, allow=allow or (), backend=backend)
    except UsageError as exc:
        raise fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(plan.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(plan.render())
    if apply:
        _apply(plan, yes, backup_dir)


def _check_may_apply(yes: bool) -> None:
    """--apply needs root, and a terminal to ask on unless --yes: checked before the audit."""
    try:
        harden.require_root("harden --apply")
    except UsageError as exc:
        raise fail(str(exc)) from None
    if not yes and not sys.stdin.isatty():
        raise fail("--apply asks before changing the firewall; pass --yes when there is "
                   "no terminal")


def _apply(plan: harden.Plan, yes: bool, backup_dir: Path) -> None:
    """Run the plan's firewall commands (after asking, unless --yes) and say what changed
    and how to undo it."""
    if not plan.can_apply:
        reason = ("nothing to apply" if not plan.firewall_commands
                  else f"--apply does not change {plan.backend}; run the commands above "
                       "yourself or pass --backend nftables|iptables")
        raise fail(reason)
    if not yes and not typer.confirm(f"Run the {len(plan.firewall_commands)} firewall "
                                     "commands above now?", default=False, err=True):
        raise fail("nothing changed")
    try:
        report = harden.apply(plan, backup_dir=backup_dir)
    except UsageError as exc:
        raise fail(str(exc)) from None
    except VncAuditError as exc:
        raise fail(str(exc), 3) from None
    err.print(f"applied {len(report.ran)} commands; backup: {report.backup.path}",
              markup=False, soft_wrap=True)
    for key, v in report.verdicts.items():
        err.print(f"  now {key}: {v}", markup=False)
    for port, ok in report.loopback.items():
        err.print(f"  loopback port {port}: {'answers RFB' if ok else 'NO RFB ANSWER'}",
                  markup=False)
    err.print(f"undo with: vncaudit harden --rollback --backup {report.backup.path.name}"
              + (f" --backup-dir {backup_dir}" if backup_dir != harden.DEFAULT_BACKUP_DIR
                 else ""), markup=False, soft_wrap=True)


def _rollback(backup_dir: Path, backup_id: str | None, yes: bool) -> None:
    try:
        harden.require_root("harden --rollback")
        b = harden.load_backup(backup_dir, backup_id)
    except UsageError as exc:
        raise fail(str(exc)) from None
    sys.stdout.write(f"Restoring {b.backend} rules from {b.path}:\n")
    for cmd in harden.rollback_commands(b):
        sys.stdout.write(f"     {cmd}\n")
    if not yes and (not sys.stdin.isatty() or not typer.confirm("Restore now?", default=False,
                                                                err=True)):
        raise fail("nothing changed (pass --yes to restore without asking)")
    try:
        diff = harden.rollback(b)
    except VncAuditError as exc:
        raise fail(str(exc), 3) from None
    if diff:
        raise fail(f"restored, but {len(diff)} rule lines differ from the backup: "
                    + "; ".join(diff[:3]), 3)
    err.print("restored: the rules are exactly as before --apply", markup=False)


# --------------------------------------------------------------------------- #
# check: inside vs outside
# --------------------------------------------------------------------------- #


def compare(inside: list[dict[str, Any]], outside: list[ServiceResult],
            over_loopback: bool = False) -> list[dict[str, Any]]:
    """Per port: what the host sees (listener, firewall) next to what the scan saw.

    `over_loopback`: the "outside" scan went to a loopback address (`check 127.0.0.1`), so it
    came from this host itself: a loopback listener answering is what it should do, and an
    answer says nothing about what other hosts reach."""
    by_port: dict[int, ServiceResult] = {}
    for r in outside:
        if r.port not in by_port or r.state is State.VNC:
            by_port[r.port] = r
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    for x in inside:
        port = int(x["port"])
        if port in seen:
            continue
        seen.add(port)
        same_port = [y for y in inside if int(y["port"]) == port]
        scopes = sorted({y["scope"] for y in same_port})
        fw = "; ".join(f"{f}: {v['text']}" for y in same_port
                       for f, v in (y.get("firewall") or {}).items())
        seen_out: ServiceResult | None = by_port.get(port)
        outside_state = seen_out.state.value if seen_out is not None else "not scanned"
        local_only = scopes == ["loopback"]
        open_out = seen_out is not None and seen_out.state not in SILENT_STATES
        outside_note = table_note(seen_out) if seen_out is not None else None
        ledger = seen_out.extra.budget if seen_out is not None else None
        if ledger is not None and not ledger.probed and ledger.read_at is None:
            # The ledger answered without any facts: nothing was sent, so the state it gives
            # says nothing about the path; only a half-open SYN's answer does.
            open_out = ledger.liveness == "open"
            outside_state = "open" if open_out else "not probed"
            seen_out = seen_out if open_out else None
        if over_loopback:
            verdict = _loopback_verdict(seen_out, open_out, local_only, outside_state)
        elif seen_out is None:
            verdict = "not scanned from outside"
        elif open_out and local_only:
            verdict = "open outside but bound to loopback here: another host or a port forward"
        elif open_out:
            verdict = "EXPOSED: reachable from outside"
        elif local_only:
            verdict = "loopback only: not reachable (as expected)"
        else:
            verdict = f"open inside, {outside_state} outside: the firewall (or the path) works"
        rows.append({"port": port, "inside": ", ".join(f"{y['address']}" for y in same_port),
                     "scope": ", ".join(scopes), "firewall": fw, "outside": outside_state,
                     "outside_note": outside_note, "verdict": verdict})
    for port, r in sorted(by_port.items()):
        if port in seen or r.state in SILENT_STATES:
            continue
        verdict = ("answers over loopback, but no listener seen inside: a process hidden from "
                   "this audit (another user's, or in a container)" if over_loopback else
                   "open outside, no listener seen inside: NAT/port forward, another host, or a "
                   "process hidden from this audit")
        rows.append({"port": port, "inside": "", "scope": "", "firewall": "",
                     "outside": r.state.value, "outside_note": table_note(r),
                     "verdict": verdict})
    return sorted(rows, key=lambda d: d["port"])


def _loopback_verdict(seen_out: ServiceResult | None, open_out: bool, local_only: bool,
                      state: str) -> str:
    if seen_out is None:
        return "not scanned"
    if open_out and local_only:
        return "loopback only, as it should be"
    if open_out:
        return ("bound beyond loopback: the scan went over loopback, which cannot tell what "
                "other hosts reach; check the host's network address from another machine")
    if local_only:
        return f"bound to loopback, but {state} over loopback: the server stopped or refuses"
    return (f"listening, but {state} over loopback: a firewall rule on lo, or the server "
            "stopped")


def is_loopback_host(host: str) -> bool:
    """Whether `host` is a loopback address, or a name that resolves to loopback only."""
    import ipaddress
    import socket

    try:
        return ipaddress.ip_address(host.partition("%")[0].strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    found = {str(i[4][0]).partition("%")[0] for i in infos}
    try:
        return bool(found) and all(ipaddress.ip_address(a).is_loopback for a in found)
    except ValueError:
        return False


@app.command("check", epilog="""Examples:

  vncaudit check 127.0.0.1                    audit here and scan HOST from here
  vncaudit check 10.1.2.3 --inside inside.json    inside view saved by `vncaudit local -o json`
  vncaudit check 10.1.2.3 --outside scan.json     outside view from `vncaudit scan -o json`""")
def check_cmd(
    host: Annotated[str, typer.Argument(metavar="HOST",
                                        help="The host's address as seen from here.")],
    inside: Annotated[
        Path | None,
        typer.Option("--inside", metavar="FILE",
                     help="The host's own view: a `vncaudit local -o json` file. "
                     "Without it, the local audit runs here (when HOST is this machine)."),
    ] = None,
    outside: Annotated[
        Path | None,
        typer.Option("--outside", metavar="FILE",
                     help="The outside view: a `vncaudit scan -o json` file made "
                     "from another vantage point. Without it, HOST is scanned from here."),
    ] = None,
    ports: Annotated[
        str | None, typer.Option("-p", "--ports", metavar="PORTS",
                                 help="Ports to scan (default: the inside "
                                 "listeners' ports plus 5800,5900-5910).")
    ] = None,
    only_port: OnlyPortOpt = None,
    timeout: TimeoutOpt = 3.0,
    risk_lockout: RiskLockoutOpt = False,
    db: DbOpt = None,
    output: Annotated[str, output_option(("table", "json"))] = "table",
    as_json: JsonAliasOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Inside vs outside: compare the host's own audit with a scan of HOST from here.

    Exit code 1 when a port is EXPOSED (reachable from outside), else 0.
    """
    setup_logging(verbose)
    as_json = output_format(output, as_json, ("table", "json")) == "json"
    _check_only_ports(only_port)
    _check_one_host(host)
    listeners = _inside_view(inside, only_port, timeout, db, risk_lockout)
    if outside is not None:
        results = _outside_view(outside, host, only_port)
    else:
        results = _scan_from_here(host, ports, only_port, listeners, timeout, db, risk_lockout)
    _show_check(host, listeners, results, as_json)


def _inside_view(inside: Path | None, only_port: list[int] | None, timeout: float,
                 db: Path | None, risk_lockout: bool) -> list[dict[str, Any]]:
    """The host's listeners: from a `local -o json` file, or audited here."""
    if inside is not None:
        doc = _read_json(inside, "--inside")
        try:
            if not isinstance(doc, dict):
                raise ValueError("not a `vncaudit local -o json` document")
            listeners = local_mod.from_dict(doc)
        except ValueError as exc:
            raise fail(f"--inside {inside}: {exc}") from None
    else:
        listeners = _run_audit(DEFAULT_LOCAL_PORTS, only_port, True, True, timeout, db,
                               risk_lockout).to_dict()["listeners"]
    if only_port:
        listeners = [x for x in listeners if int(x["port"]) in only_port]
    return listeners


def _outside_view(outside: Path, host: str, only_port: list[int] | None) -> list[ServiceResult]:
    """HOST's results in a `scan -o json` file made elsewhere."""
    doc = _read_json(outside, "--outside")
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), list):
        raise fail(f"--outside {outside}: not a `vncaudit scan -o json` file (no "
                   "\"services\" list)")
    try:
        results = [ServiceResult.from_dict(d) for d in doc["services"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise fail(f"--outside {outside}: not a `vncaudit scan -o json` file ({exc})") \
            from None
    results = [r for r in results if r.host == host or r.hostname == host]
    if only_port:
        results = [r for r in results if r.port in only_port]
    return results


def _scan_from_here(host: str, ports: str | None, only_port: list[int] | None,
                    listeners: list[dict[str, Any]], timeout: float, db: Path | None,
                    risk_lockout: bool) -> list[ServiceResult]:
    """Scan HOST from here on --only-port and -p, else on the inside listeners' ports and
    the default ones; every connection counted in the ledger."""
    from vncaudit.targets import DEFAULT_PORTS, build_target_space, parse_ports

    scan_ports: set[int] = set(only_port or ())
    if ports is not None:  # `-p ""` is a mistake, not a request for the defaults
        scan_ports |= set(_ports(ports))
    if not scan_ports:
        scan_ports = {int(x["port"]) for x in listeners} | set(parse_ports(DEFAULT_PORTS))
    try:
        space = build_target_space([host], tuple(sorted(scan_ports)))
    except UsageError as exc:
        raise fail(str(exc)) from None
    from vncaudit.engine import ScanOptions, scan_async
    from vncaudit.probe import ProbeOptions

    targets: list[Target] = list(space.iter_targets())
    options = ScanOptions(probe=ProbeOptions(timeout=timeout))
    try:
        store = Store.open(_checked_db(db))
    except StoreError as exc:
        raise fail(f"{host} not scanned: the connection ledger cannot be opened ({exc}), so "
                   "a connection could not be counted", 3) from None
    with store, Ledger(store, risk_lockout=risk_lockout) as ledger:
        return asyncio.run(scan_async(targets, options, gate=ScanGate(ledger)))


def _read_json(path: Path, option: str) -> Any:
    """A JSON file named on the command line; every way of not being one is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise fail(f"{option} {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise fail(f"{option} {path}: not UTF-8 text (a JSON report was expected)") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise fail(f"{option} {path}: not JSON ({exc})") from None


def _check_one_host(host: str) -> None:
    """`check` compares one host's inside and outside views port by port: a network or an
    address range would mix many hosts' ports into one table."""
    import ipaddress

    from vncaudit.targets import build_target_space

    try:
        is_range = "/" in host or ("-" in host and bool(ipaddress.ip_address(
            host.split("-", 1)[0].strip())))
    except ValueError:
        is_range = False  # a host name with a dash
    if not is_range:
        return
    try:
        space = build_target_space([host], (1,))
    except UsageError as exc:
        raise fail(str(exc)) from None
    if len(space) > 1:
        raise fail(f"check takes one host, not the {len(space)} addresses of {host!r}; give "
                    "one address or host name")


CHECK_COLUMNS = (Column("port", whole=True), Column("inside (bind)", head=True),
                 Column("firewall here", drop=1), Column("outside", whole=True),
                 Column("verdict"))


def _verdict_cell(verdict: str, outside_note: str | None, style: str) -> Text:
    """The verdict, and under it what the connection ledger says of the outside facts (the
    outside column stays one word wide)."""
    cell = Text(escape(verdict), style=style)
    if outside_note:
        cell.append("\noutside: " + escape(outside_note), style="dim")
    return cell


def _show_check(host: str, listeners: list[dict[str, Any]], results: list[ServiceResult],
                as_json: bool) -> None:
    over_loopback = is_loopback_host(host)
    rows = compare(listeners, results, over_loopback)
    if as_json:
        sys.stdout.write(json.dumps({"host": host, "ports": rows}, indent=2) + "\n")
    else:
        cells: list[list[str | Text]] = []
        for row in rows:
            style = "bold red" if row["verdict"].startswith("EXPOSED") else ""
            # --inside / --outside are files anyone may have written: cells, never markup.
            # One address a line, so that an address is never broken.
            where = [a.strip() for a in str(row["inside"]).split(",") if a.strip()]
            if row["scope"]:
                where.append(str(row["scope"]))
            cells.append([str(row["port"]), Text("\n".join(escape(w) for w in where)),
                          text_cell(row["firewall"]), text_cell(row["outside"]),
                          _verdict_cell(row["verdict"], row.get("outside_note"), style)])
        console = Console(highlight=False)
        console.print(fitted_table(CHECK_COLUMNS, cells, console.width))
        if over_loopback and rows:
            console.print(Text(f"Scanned over loopback ({host}): this shows what answers on "
                               "this host, not what other hosts reach; scan the host's network "
                               "address from another machine and compare with --outside FILE."))
    if any(row["verdict"].startswith("EXPOSED") for row in rows):
        raise typer.Exit(1)
