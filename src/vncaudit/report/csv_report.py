"""CSV report: one row per service, stable columns, safe to open in a spreadsheet.

Owns: `COLUMNS` (a contract like the JSON field names: add at the end, rename none) and
`render_csv()`. Must not: grade or reorder facts; it flattens what `ServiceResult` holds.

Desktop names, failure reasons and banners come from the network. A spreadsheet runs a cell
that starts with `=`, `+`, `-` or `@` (or tab / CR, which some strip first) as a formula
(OWASP "CSV injection"), so every text cell that would start like that gets a leading `'`.
The `csv` module does the quoting of commas, quotes and newlines; other control characters
(NUL, ESC …) are dropped, since some CSV readers stop at a NUL and a terminal `cat` would run
escape sequences (the JSON report keeps the exact bytes).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from typing import Final

from vncaudit.models import ServiceResult
from vncaudit.report import geometry_text, security_types_text, sorted_findings

COLUMNS: Final = (
    "host",
    "port",
    "hostname",
    "state",
    "server_version",
    "security_types",
    "vencrypt_subtypes",
    "tight_auth",
    "auth_required",
    "security_result",
    "desktop_name",
    "geometry",
    "product",
    "product_version",
    "worst_severity",
    "finding_ids",
    "failure_reason",
    "error",
)

# Leading characters that make Excel, LibreOffice or Google Sheets evaluate a cell; the full-width
# forms are folded to these by some spreadsheet locales.
_FORMULA_START: Final = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_CONTROL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def neutralise(value: str) -> str:
    """Prefix `'` when a cell would start a formula (leading spaces are skipped by some apps);
    drop control characters other than tab, CR and LF."""
    value = _CONTROL.sub("", value)
    stripped = value.lstrip(" ")
    if stripped and stripped[0] in _FORMULA_START:
        return "'" + value
    return value


def _bool(value: bool | None) -> str:
    return "" if value is None else "true" if value else "false"


def row(result: ServiceResult) -> dict[str, str]:
    """The CSV cells of one service, already neutralised."""
    facts = result.rfb
    product = result.product
    worst = result.worst_severity
    cells = {
        "host": result.host,
        "port": str(result.port),
        "hostname": result.hostname or "",
        "state": result.state.value,
        "server_version": (facts.server_version or "") if facts else "",
        "security_types": security_types_text(result),
        "vencrypt_subtypes": (
            "; ".join(f"{s.id} {s.name}" for s in facts.vencrypt.subtypes)
            if facts and facts.vencrypt
            else ""
        ),
        "tight_auth": (
            "; ".join(f"{c.code} {c.vendor} {c.signature}" for c in facts.tight.auth)
            if facts and facts.tight
            else ""
        ),
        "auth_required": _bool(facts.auth_required) if facts else "",
        "security_result": (facts.security_result or "") if facts else "",
        "desktop_name": (facts.desktop_name or "") if facts else "",
        "geometry": geometry_text(result),
        "product": product.name if product else "",
        "product_version": (product.version or "") if product else "",
        "worst_severity": worst.value if worst else "",
        "finding_ids": " ".join(f.id for f in sorted_findings(result)),
        "failure_reason": (facts.failure_reason or "") if facts else "",
        "error": result.error or "",
    }
    return {k: neutralise(v) if k != "port" else v for k, v in cells.items()}


def render_csv(results: Iterable[ServiceResult]) -> str:
    """Header plus one row per service, CRLF line ends (RFC 4180, what spreadsheets expect)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for result in results:
        writer.writerow(row(result))
    return buf.getvalue()
