"""DefectDojo's Generic Findings Import (JSON): findings a vulnerability manager tracks.

Owns: one DefectDojo finding per (service, finding) with the fields the importer's JSON parser
accepts (DefectDojo `dojo/tools/generic/json_parser.py`: `title`, `severity` and
`description` required; only its known keys allowed; `endpoints`, `tags`, `vulnerability_ids`
handled apart): severity in DefectDojo's spelling, the service as an endpoint (protocol, host,
port), the evidence and why in the description, the fix guide's steps and commands for that
host and port as `mitigation`, and `unique_id_from_tool` for re-imports. Must not: grade or
probe; services without findings produce no finding.

DefectDojo deduplicates Generic Findings Import by a hash of title, cwe, line, file path and
description: the description starts with the service's address, so one problem on two hosts
stays two findings.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from vncaudit.models import Finding, ServiceResult, Severity
from vncaudit.report import ScanMeta, endpoint_text, fix_guide, sorted_findings

SEVERITY = {
    Severity.CRITICAL: "Critical",
    Severity.HIGH: "High",
    Severity.MEDIUM: "Medium",
    Severity.LOW: "Low",
    Severity.INFO: "Info",
}
# DefectDojo's column sizes (Finding.title 511, cve 50, unique_id_from_tool 500, service 200;
# Endpoint.host 500): a longer value fails the import, so each is cut to fit.
_TITLE_MAX = 511
_ID_MAX = 500
_CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_URL = re.compile(r"https?://[^\s<>\"')]+")


def render_defectdojo(meta: ScanMeta, results: Sequence[ServiceResult]) -> str:
    version = meta.tool.split(" ", 1)[1] if " " in meta.tool else meta.tool
    date = _date(meta.finished or meta.started)
    findings: list[dict[str, Any]] = []
    for result in results:
        fixes = fix_guide(result)
        for finding in sorted_findings(result):
            findings.append(_finding(result, finding, fixes, date))
    doc = {
        "name": "vncaudit",
        "type": "vncaudit",
        "version": version,
        "description": f"vncaudit scan {meta.id} of {', '.join(meta.targets)} "
                       f"(ports {meta.ports})",
        "dynamic_tool": True,
        "static_tool": False,
        "findings": findings,
    }
    return json.dumps(doc, indent=2) + "\n"


def _finding(result: ServiceResult, finding: Finding, fixes: Sequence[Any],
             date: str | None) -> dict[str, Any]:
    where = endpoint_text(result)
    lines = [f"**Service:** vnc://{where}" + (f" ({result.hostname})" if result.hostname
                                                 else "")]
    if result.product is not None and result.product.name != "unknown":
        lines.append("**Product:** " + " ".join(
            p for p in (result.product.name, result.product.version) if p))
    if finding.why:
        lines += ["", finding.why]
    if finding.evidence:
        lines += ["", "**Evidence:**", *(f"- {e}" for e in finding.evidence)]
    mine = [fix for fix in fixes if fix.id in finding.remediation]
    mitigation: list[str] = []
    for fix in mine:
        mitigation += [f"**{fix.title}**", ""]
        mitigation += _steps(fix.steps)
        for product in fix.by_product:  # the product is not identified: each candidate's
            mitigation += [f"*If it is {product.product}:*", ""]
            mitigation += _steps(product.steps)
        mitigation.append("")
    item: dict[str, Any] = {
        "title": finding.title[:_TITLE_MAX],
        "severity": SEVERITY[finding.severity],
        "description": "\n".join(lines),
        "active": True,
        "verified": False,
        "dynamic_finding": True,
        "static_finding": False,
        "service": "vnc",
        "vuln_id_from_tool": finding.id[:_ID_MAX],
        "unique_id_from_tool": f"{finding.id}@{where}"[:_ID_MAX],
        "endpoints": [{"protocol": "vnc", "host": result.host[:500], "port": result.port}],
        "tags": ["vncaudit", "vnc"],
    }
    if mitigation:
        item["mitigation"] = "\n".join(mitigation).strip()
    elif finding.remediation:
        item["mitigation"] = "Remedies: " + ", ".join(finding.remediation)
    if finding.why:
        item["impact"] = finding.why
    if date is not None:
        item["date"] = date
    if finding.id.startswith("known-cve:") and (cve := _CVE.search(finding.id)):
        item["cve"] = cve.group(0)
        item["vulnerability_ids"] = [cve.group(0)]
    links = list(dict.fromkeys(u.rstrip(".,;:") for u in _URL.findall(finding.why)))
    if links:
        item["references"] = "\n".join(links)
    return item


def _steps(steps: Sequence[Any]) -> list[str]:
    lines: list[str] = []
    for step in steps:
        lines.append(f"- {step.platform}: {step.text}")
        if step.commands:
            lines += ["", "```", *step.commands, "```", ""]
    return lines


def _date(text: str) -> str | None:
    """The scan's day (YYYY-MM-DD), which DefectDojo shows as the finding's date."""
    try:
        return dt.datetime.fromisoformat(text).date().isoformat()
    except ValueError:
        return None
