"""Terminal rendering of results: the results table, findings with their fix commands, and
`_emit`, which writes a scan's results as a table or any `report.FORMATS` format.

Owns: how results look on a terminal (rich tables, severity styles, escaping of text a server
sent). Must not: define commands, scan, grade or build report documents (that is
`vncaudit.report`); it only renders what the library returns.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vncaudit import report
from vncaudit.cli.common import _fail, err
from vncaudit.models import ServiceResult, Severity, State
from vncaudit.store import ScanRecord


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


def _emit(
    record: ScanRecord,
    results: list[ServiceResult],
    output: str,
    output_file: Path | None,
    include_all: bool,
    *,
    show_fix: bool = True,
    trusted: str | None = None,
    quiet: bool = False,
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
        if quiet:
            return
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
