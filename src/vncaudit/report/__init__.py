"""Render a scan (its metadata and service results) into the output formats.

Owns: turning `ScanMeta` + `ServiceResult`s into text: json and jsonl (schema v1,
docs/design.md §7; its JSON Schema is `schema`) here, csv (`csv_report`), nmap-compatible XML
(`nmap_xml`), a self-contained HTML page (`html`, with the fix guide and embedded
screenshots), SARIF 2.1.0 (`sarif`) and DefectDojo's Generic Findings Import (`defectdojo`) in
their own modules, plus the small helpers they share. Must not: probe, grade, or touch the
store; it only formats what it is
given. Every string a server sent (desktop names, reasons, banners) is hostile input: each
format neutralises it in its own way (CSV formula prefixes, XML-illegal characters, HTML
autoescaping).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vncaudit.basics import SCHEMA_VERSION, SILENT_STATES, Severity

if TYPE_CHECKING:
    from vncaudit.models import Finding, ServiceResult
    from vncaudit.remedies import Remedy

log = logging.getLogger(__name__)

FORMATS = ("json", "jsonl", "csv", "xml", "html", "sarif", "defectdojo")


def utc_time(text: str | None) -> dt.datetime | None:
    """A scan's ISO-8601 time (`ScanMeta.started`, `finished`) as an aware UTC datetime; a
    time without a zone is taken as UTC. None when absent or unreadable."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


@dataclass(frozen=True)
class ScanMeta:
    id: str
    started: str  # ISO-8601
    finished: str | None
    targets: Sequence[str]
    ports: str
    tool: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "started": self.started,
            "finished": self.finished,
            "targets": list(self.targets),
            "ports": self.ports,
            "tool": self.tool,
        }
        d.update(self.extra)
        return d


def visible(results: Iterable[ServiceResult], include_all: bool = False) -> list[ServiceResult]:
    """The services a report shows: all of them with --all, else not closed/filtered."""
    return [r for r in results if include_all or r.state not in SILENT_STATES]


def to_document(
    meta: ScanMeta, results: Iterable[ServiceResult], include_all: bool = False
) -> dict[str, Any]:
    """The schema-v1 document (docs/design.md §7)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "scan": meta.to_dict(),
        "services": [r.to_dict() for r in visible(results, include_all)],
    }


def render(
    fmt: str, meta: ScanMeta, results: Iterable[ServiceResult], include_all: bool = False
) -> str:
    """Render to one of FORMATS; raises ValueError for an unknown format."""
    if fmt == "json":
        from vncaudit.jsontext import dumps_indented  # orjson: not before a scan's packets

        return dumps_indented(to_document(meta, results, include_all)) + "\n"
    if fmt == "jsonl":
        return "".join(jsonl_line(r) for r in visible(results, include_all))
    if fmt == "csv":
        from vncaudit.report import csv_report

        return csv_report.render_csv(visible(results, include_all))
    if fmt == "xml":
        from vncaudit.report import nmap_xml

        return nmap_xml.render_xml(meta, visible(results, include_all))
    if fmt == "html":
        from vncaudit.report import html

        return html.render_html(meta, visible(results, include_all))
    if fmt == "sarif":
        from vncaudit.report import sarif

        return sarif.render_sarif(meta, visible(results, include_all))
    if fmt == "defectdojo":
        from vncaudit.report import defectdojo

        return defectdojo.render_defectdojo(meta, visible(results, include_all))
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


# -- helpers shared by the formats ---------------------------------------------------------------


def jsonl_line(result: ServiceResult) -> str:
    """One `-o jsonl` line: the service in schema v1, compact, newline-terminated."""
    return json.dumps(result.to_dict(), separators=(",", ":")) + "\n"


def endpoint_text(result: ServiceResult) -> str:
    """'10.0.0.5:5900', '[2001:db8::5]:5900': the address and port as one would type them."""
    host = f"[{result.host}]" if ":" in result.host else result.host
    return f"{host}:{result.port}"


def fix_guide(result: ServiceResult) -> list[Remedy]:
    """The fix guide for the service (steps and commands filled with its host and port); a
    remediation id the guide does not know is left out with a warning, not an error."""
    from vncaudit.remedies import remedies_for

    if not result.findings:
        return []
    try:
        return list(remedies_for(result))
    except (KeyError, ValueError) as exc:
        log.warning("fix guide for %s: %s", endpoint_text(result), exc)
        return []


def security_types_text(result: ServiceResult) -> str:
    """'19 VeNCrypt; 2 VNC Authentication' — numbers first, so a spreadsheet sorts them."""
    facts = result.rfb
    if facts is None:
        return ""
    return "; ".join(f"{t.id} {t.name}" for t in facts.security_types)


def geometry_text(result: ServiceResult) -> str:
    """'640x480x24' (width x height x depth) when ServerInit was read, else ''."""
    fb = result.rfb.framebuffer if result.rfb else None
    return f"{fb.width}x{fb.height}x{fb.depth}" if fb else ""


def sorted_findings(result: ServiceResult) -> list[Finding]:
    """The service's findings, worst first (stable for equal severities)."""
    return sorted(result.findings, key=lambda f: -f.severity.rank)


def severity_counts(results: Iterable[ServiceResult]) -> dict[Severity, int]:
    """Findings per severity over all services, every severity present, worst first."""
    counts = dict.fromkeys(sorted(Severity, key=lambda s: -s.rank), 0)
    for r in results:
        for f in r.findings:
            counts[f.severity] += 1
    return counts
