"""The `vncaudit results` and `vncaudit diff` commands: past scans read back from the store.

Owns: listing, showing and exporting stored scans and rendering a diff between two. Must not:
scan, or write to the store beyond opening it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from vncaudit.cli.common import (
    OUTPUTS,
    AllOpt,
    DbOpt,
    FixOpt,
    JsonAliasOpt,
    OutputFileOpt,
    OutputOpt,
    TrustedOpt,
    check_output_file,
    check_trusted_option,
    err,
    fail,
    open_store,
    output_format,
    output_option,
    write_out,
)
from vncaudit.cli.output import Column, emit, fitted_table
from vncaudit.cli.program import app
from vncaudit.models import ServiceResult, Severity
from vncaudit.store import StoreError, UnknownScanError, default_db_path


@app.command(epilog="""Examples:

  vncaudit results                            the recent scans
  vncaudit results --target 10.0.0.0/24       only scans of this target
  vncaudit results s-20261124-ab12cd -o html --output-file report.html""")
def results(
    scan_id: Annotated[
        str | None, typer.Argument(metavar="SCAN_ID",
                                   help="A scan id to show; without it, list recent scans.")
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
        raise fail(f"unknown output format {output!r}; choose one of {', '.join(OUTPUTS)}")
    if scan_id is None and output not in ("table", "json"):
        raise fail(f"the list of scans is printed as table or json, not {output}; give a scan "
                    f"id to export that scan as {output}")
    check_trusted_option(trusted)
    check_output_file(output_file, [db])
    try:
        with open_store(db) as store:
            if scan_id is None:
                records = store.list_scans(limit=limit, target=target)
                stored: list[ServiceResult] = []
            else:
                record = store.require_scan(scan_id)
                stored = store.results(scan_id, include_closed=include_all)
    except StoreError as exc:
        raise fail(str(exc), 2 if isinstance(exc, UnknownScanError) else 3) from None
    if scan_id is not None:
        emit(record, stored, output, output_file, include_all, show_fix=show_fix,
              trusted=trusted)
        return
    if output != "table":
        import json

        write_out(output_file, json.dumps([r.to_dict() for r in records], indent=2) + "\n")
        return
    rows: list[list[str | Text]] = []
    for r in records:
        c = r.counts
        worst = next((sev.value for sev in Severity if c.get(sev.value)), "")
        rows.append([r.id, r.status, _minute(r.started), " ".join(r.targets)[:60], r.ports,
                     str(c.get("done", "")), str(c.get("vnc", "")), str(c.get("no_auth", "")),
                     worst])
    if not records and output_file is None:
        where = db or default_db_path()
        err.print(f"no scans stored{' of ' + target if target else ''} in {where}",
                  markup=False, soft_wrap=True)
        return
    if output_file is None:
        console = Console(highlight=False)
        console.print(fitted_table(SCAN_LIST_COLUMNS, rows, console.width))
        return
    import io

    buffer = io.StringIO()
    Console(file=buffer, highlight=False, width=200).print(fitted_table(SCAN_LIST_COLUMNS, rows,
                                                                        200))
    write_out(output_file, buffer.getvalue())


# A scan id is what the next command needs: never broken; the columns that matter least give way
# on a narrow terminal.
SCAN_LIST_COLUMNS = (
    # The id carries the date, so "started" may go first after the two least needed columns.
    Column("scan", whole=True), Column("status", whole=True),
    Column("started", whole=True, drop=2), Column("targets"), Column("ports", drop=4),
    Column("probed", whole=True, drop=1), Column("vnc", whole=True),
    Column("no auth", whole=True, drop=3), Column("worst", whole=True),
)


def _minute(iso: str) -> str:
    """"2026-12-06T15:35:42+00:00" as "2026-12-06 15:35" (the list's start column)."""
    return iso[:16].replace("T", " ") if len(iso) >= 16 and iso[10:11] == "T" else iso


@app.command(epilog="""Example:

  vncaudit diff s-20261124-ab12cd s-20261125-cd34ef -o json""")
def diff(
    scan_a: Annotated[str, typer.Argument(metavar="SCAN_A", help="The earlier scan id.")],
    scan_b: Annotated[str, typer.Argument(metavar="SCAN_B", help="The later scan id.")],
    output: Annotated[str, output_option(("table", "json"))] = "table",
    as_json: JsonAliasOpt = False,
    db: DbOpt = None,
) -> None:
    """What changed between two scans: services that appeared, disappeared or changed."""
    as_json = output_format(output, as_json, ("table", "json")) == "json"
    try:
        with open_store(db) as store:
            changes = store.diff(scan_a, scan_b)
    except StoreError as exc:
        raise fail(str(exc), 2 if isinstance(exc, UnknownScanError) else 3) from None
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
