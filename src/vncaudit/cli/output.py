"""Terminal rendering of results: the results table, findings with their fix commands, and
`emit`, which writes a scan's results as a table or any `report.FORMATS` format.

Owns: how results look on a terminal (rich tables, severity styles, escaping of text a server
sent). Must not: define commands, scan, grade or build report documents (that is
`vncaudit.report`); it only renders what the library returns.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vncaudit import report
from vncaudit.budget import summary_note, table_note
from vncaudit.cli.common import err, fail
from vncaudit.display import escape, shown
from vncaudit.models import ServiceResult, Severity, State
from vncaudit.store import ScanRecord

if TYPE_CHECKING:
    from vncaudit.report.spool import JsonSpool


def security_summary(result: ServiceResult) -> str:
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


SEVERITY_STYLE = {
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
    return escape(text)


def _reason_cell(text: str) -> Text:
    # A reason can be 64 KiB of binary (a 3.3 failure full of garbage): a cell shows its head.
    return Text(shown(text, 60), style="dim")


def text_cell(text: str, second: str | None = None) -> Text:
    # Text, never markup: a desktop name such as "[bold]x" or "[/]" must print as it is.
    cell = Text(_plain(text))
    if second:
        cell.append("\n" + _plain(second), style="dim")
    return cell


@dataclass(frozen=True)
class Column:
    """A table column and how it behaves when the terminal is narrow."""

    name: str
    whole: bool = False  # never broken across lines: ids, addresses, ports, short words
    drop: int = 0  # 0: always shown; otherwise dropped when too narrow, highest first
    head: bool = False  # the first line is never broken (an address, a state), notes fold


_FLEX_MIN = 10  # a column that may fold still needs room for a word


_LONGEST_WORD = 40  # an IPv6 address is at most 39 characters
_KEPT_WORD = 14  # a folding column keeps words up to this long whole ("Authentication")


def _text_width(cell: str | Text, first_line: bool = False) -> int:
    lines = (cell.plain if isinstance(cell, Text) else cell).split("\n")
    return max((len(line) for line in (lines[:1] if first_line else lines)), default=0)


def _head_width(cell: str | Text) -> int:
    """What a `head` cell needs: its first line whole, and no word of the lines under it (an
    address among several) broken, up to an address's length."""
    plain = cell.plain if isinstance(cell, Text) else cell
    words = [len(w) for w in plain.split()]
    return max(_text_width(cell, True), min(max(words, default=0), _LONGEST_WORD))


def fitted_table(columns: Sequence[Column], rows: Sequence[Sequence[str | Text]],
                 width: int | None, *, show_lines: bool = False) -> Table:
    """A table that never breaks a `whole` cell (a scan id, an address): at `width` columns,
    optional columns are dropped (highest `drop` first) until the whole ones fit, and the
    others fold. A whole cell's first line is what must fit (an address, a state word); a
    note under it (a host name, a server's reason) is cut with "…" rather than widen the
    column. `width` None: every column, as wide as it likes."""
    need = [max(_text_width(c.name), *(_text_width(r[i], True) for r in rows)) if c.whole
            else max(_text_width(c.name), *(_head_width(r[i]) for r in rows)) if c.head
            else min(_FLEX_MIN, max(_text_width(c.name), *(_text_width(r[i]) for r in rows)))
            for i, c in enumerate(columns)]
    shown = list(range(len(columns)))

    def total() -> int:
        return sum(need[i] for i in shown) + 3 * len(shown) + 1  # padding and rules

    if width is not None:
        for i in sorted((i for i, c in enumerate(columns) if c.drop),
                        key=lambda i: -columns[i].drop):
            if total() <= width:
                break
            shown.remove(i)
    flex = _flex_widths(columns, rows, shown, need, width)
    table = Table(title=None, show_lines=show_lines, expand=False)
    for i in shown:
        c = columns[i]
        if c.whole:
            table.add_column(c.name, no_wrap=True, min_width=need[i], max_width=need[i],
                             overflow="ellipsis")
        elif c.head:
            table.add_column(c.name, min_width=need[i], overflow="fold")
        elif i in flex:
            table.add_column(c.name, min_width=flex[i], max_width=flex[i], overflow="fold")
        else:
            table.add_column(c.name, overflow="fold")
    for r in rows:
        table.add_row(*(r[i] for i in shown))
    return table


def _longest_word(cells: Iterable[str | Text]) -> int:
    return max((len(w) for c in cells for w in (c.plain if isinstance(c, Text) else c).split()),
               default=0)


def _flex_widths(columns: Sequence[Column], rows: Sequence[Sequence[str | Text]],
                 shown: list[int], need: list[int], width: int | None) -> dict[int, int]:
    """Widths for the folding columns at `width` columns, each with room for its words up to
    `_KEPT_WORD` long ("Authentication" is not cut in two), the rest of the line shared out
    up to what each cell needs. Empty when they cannot all have that: rich folds as it can."""
    flex = [i for i in shown if not columns[i].whole and not columns[i].head]
    if width is None or not flex:
        return {}
    room = width - sum(need[i] for i in shown if i not in flex) - 3 * len(shown) - 1
    natural = {i: max(_text_width(columns[i].name), *(_text_width(r[i]) for r in rows))
               for i in flex}
    got = {i: min(natural[i], max(_text_width(columns[i].name),
                                  min(_KEPT_WORD, _longest_word(r[i] for r in rows))))
           for i in flex}
    if sum(got.values()) > room:
        return {}
    spare = room - sum(got.values())
    while spare > 0 and any(got[i] < natural[i] for i in flex):
        for i in flex:
            if spare > 0 and got[i] < natural[i]:
                got[i] += 1
                spare -= 1
    return got


RESULT_COLUMNS: Final = (
    Column("host", head=True), Column("port", whole=True), Column("state", head=True),
    Column("version", whole=True, drop=3), Column("security", drop=2), Column("auth", whole=True),
    Column("desktop", drop=1), Column("risk", whole=True),
)


def results_table(results: list[ServiceResult], width: int | None = None) -> Table:
    """The human summary printed at the end of a scan; at `width` columns the host (an address)
    stays on one line and the columns that matter least give way."""
    rows: list[list[str | Text]] = []
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
        risk = Text(worst.value, style=SEVERITY_STYLE[worst]) if worst else Text("")
        note = table_note(r)  # the ledger answered: say how old the facts are
        if note is None and r.error and r.state is not State.VNC:
            note = r.error
        elif note is None and r.rfb and r.rfb.failure_reason:
            note = r.rfb.failure_reason
        state = text_cell(r.state.value)
        if note:
            state.append("\n")
            state.append_text(_reason_cell(note))
        rows.append([
            text_cell(r.host, r.hostname),
            str(r.port),
            state,
            text_cell(facts.server_version or "" if facts else ""),
            text_cell(security_summary(r)),
            auth,
            text_cell(shown(desktop, 80) if len(desktop) > 80 else desktop),
            risk,
        ])
    return fitted_table(RESULT_COLUMNS, rows, width)


_EVIDENCE_SHOWN = 4  # the terminal list stays short; the reports keep every line
_WHY_SHOWN = 400


def print_findings(
    out: Console, results: list[ServiceResult], show_fix: bool = True, *,
    trusted: str | None = None, scan_id: str | None = None,
) -> None:
    """After the table: per service with findings, each finding (severity, title, evidence,
    why) and, with `show_fix`, the fix guide's steps and commands for that host and port.

    When the product is unknown, the candidate products' own steps are not printed: one line
    per product says how many there are, and how to see them (the HTML report of `scan_id`
    folds them per product). Prose wraps with its indent kept; commands are printed unwrapped
    (soft wrap) so that a copy from the terminal stays one line. Nothing is read as markup.
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
            line = Text(f"{f.severity.value:<8} ", style=SEVERITY_STYLE[f.severity])
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
        folded: dict[str, int] = {}
        for fix in fixes:
            for group in fix.by_product:
                folded[group.product] = folded.get(group.product, 0) + len(group.steps)
        if folded:
            prose(Text("product not identified; its own steps, if it is one of these:",
                       style="bold"), 4)
            for name, count in folded.items():
                prose(Text(f"{_plain(name)}: {count} step{'' if count == 1 else 's'}"), 6)
            prose(Text("each product's steps, folded, are in the HTML report:", style="dim"),
                  6)
            where = (f"vncaudit results {scan_id} -o html --output-file fix.html"
                     if scan_id else "vncaudit results SCAN-ID -o html --output-file fix.html")
            out.print(Text("          " + _plain(where), style="cyan"), soft_wrap=True)


def emit(
    record: ScanRecord,
    results: list[ServiceResult],
    output: str,
    output_file: Path | None,
    include_all: bool,
    *,
    show_fix: bool = True,
    trusted: str | None = None,
    exit_reason: str | None = None,
    quiet: bool = False,
    written: bool = False,
) -> None:
    """Write the report, then ONE summary line on stderr: the scan id, what was found, where
    the report went and, when the command is about to exit 1, why (`exit_reason`). `quiet`
    (-q): no summary. `written`: the report went out already (-o jsonl, streamed while the
    scan ran); only the summary is left."""
    meta = _meta(record)
    results = sorted(results, key=lambda r: (_host_key(r.host), r.port))
    shown = report.visible(results, include_all)
    if output == "table":
        import io

        # Into a buffer first when it goes to a file: a failing write (disk full) is then
        # the one "cannot write" line below, never an error from inside rich.
        buffer = io.StringIO() if output_file else None
        out = Console(file=buffer, highlight=False)
        if shown:
            out.print(results_table(shown, width=out.width))
            print_findings(out, shown, show_fix, trusted=trusted, scan_id=record.id)
        elif record.counts.get("done"):
            out.print("nothing answered on the probed ports (--all lists closed and "
                      "filtered)")
        if output_file and buffer is not None:
            try:
                output_file.write_text(buffer.getvalue(), encoding="utf-8")
            except OSError as exc:
                raise fail(f"cannot write {output_file}: {exc.strerror or exc}; the results "
                            f"are kept: vncaudit results {record.id}", 3) from None
        if not quiet:
            _summary(record, results, shown, output, output_file, exit_reason)
        return
    if written:
        if not quiet and (output_file or exit_reason):
            _summary(record, results, shown, output, output_file, exit_reason)
        return
    text = report.render(output, meta, results, include_all)
    if output_file:
        try:
            # UTF-8 whatever the locale: the HTML page declares it, and server strings vary.
            output_file.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot write {output_file}: {exc.strerror or exc}; the results are "
                        f"kept: vncaudit results {record.id} -o {output}", 3) from None
        if not quiet:
            _summary(record, results, shown, output, output_file, exit_reason)
    else:
        sys.stdout.write(text)
        if exit_reason and not quiet:  # the report is on stdout; the reason is not in it
            _summary(record, results, shown, output, None, exit_reason)
        elif not quiet:  # services the ledger answered for: said on stderr in any format
            _ledger_note(results)


def emit_spooled(
    record: ScanRecord,
    spool: JsonSpool,
    output_file: Path | None,
    *,
    exit_reason: str | None = None,
    quiet: bool = False,
) -> None:
    """`emit` for -o json built while the scan ran (`report.spool`): the same report and
    summary line, written a service at a time from the spool."""
    meta = _meta(record)
    tally = spool.tally
    if output_file:
        try:
            with output_file.open("w", encoding="utf-8") as out:
                spool.write(meta, out)
        except OSError as exc:
            raise fail(f"cannot write {output_file}: {exc.strerror or exc}; the results are "
                        f"kept: vncaudit results {record.id} -o json", 3) from None
    else:
        spool.write(meta, sys.stdout)
        if not exit_reason:
            if not quiet:
                _note(summary_note(tally.budget_notes))
            return
    if not quiet:
        counts = {s.value: n for s, n in tally.findings.items() if n}
        line = _summary_text(record, len(spool), counts, tally.shown, "json", output_file,
                             exit_reason)
        err.print(line, style="dim", markup=False, soft_wrap=True)
        _note(summary_note(tally.budget_notes))


def _meta(record: ScanRecord) -> report.ScanMeta:
    return report.ScanMeta(
        id=record.id,
        started=record.started,
        finished=record.finished,
        targets=list(record.targets),
        ports=record.ports,
        tool=record.tool,
        extra={"discovery": record.options["discovery"]} if record.options.get("discovery")
        else {},
    )


def summary_line(
    record: ScanRecord,
    results: list[ServiceResult],
    shown: list[ServiceResult],
    output: str,
    output_file: Path | None,
    exit_reason: str | None = None,
) -> str:
    """"scan ID: 3 ports probed, 1 VNC (1 high, 1 info), 1 shown; report (json) written to F;
    exit 1: ..." -- what a person or a CI log needs when the report itself went elsewhere."""
    worst: dict[str, int] = {}
    for r in results:
        for f in r.findings:
            worst[f.severity.value] = worst.get(f.severity.value, 0) + 1
    return _summary_text(record, len(results), worst, len(shown), output, output_file,
                         exit_reason)


def _summary_text(record: ScanRecord, results: int, worst: dict[str, int], shown: int,
                  output: str, output_file: Path | None, exit_reason: str | None) -> str:
    probed = record.counts.get("done", results)
    line = (f"scan {record.id}: {probed} port{'' if probed == 1 else 's'} probed, "
            f"{record.counts.get('vnc', 0)} VNC")
    if worst:
        order = sorted(worst, key=lambda s: -Severity(s).rank)
        line += " (" + ", ".join(f"{worst[s]} {s}" for s in order) + ")"
    line += f", {shown} shown"
    if output_file is not None:
        what = "report" if output == "table" else f"report ({output})"
        line += f"; {what} written to {output_file}"
    if exit_reason:
        line += f"; exit 1: {exit_reason}"
    return line


def _summary(record: ScanRecord, results: list[ServiceResult], shown: list[ServiceResult],
             output: str, output_file: Path | None, exit_reason: str | None) -> None:
    err.print(summary_line(record, results, shown, output, output_file, exit_reason),
              style="dim", markup=False, soft_wrap=True)
    _ledger_note(results)


def _ledger_note(results: list[ServiceResult]) -> None:
    _note(summary_note(r.extra.budget for r in results))


def _note(note: str | None) -> None:
    if note:
        err.print(note, style="yellow", markup=False, soft_wrap=True)


def _host_key(host: str) -> tuple[int, bytes]:
    import ipaddress

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (2, host.encode())
    return (ip.version, ip.packed)
