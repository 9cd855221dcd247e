"""SARIF 2.1.0 (OASIS) for code-scanning dashboards and vulnerability managers.

Owns: turning findings into one SARIF run: a rule per finding id (title, why, the fix guide's
remedy titles as help, the worst severity seen as `security-severity`), a result per finding
per service (level, message with the evidence, the service as a `vnc://host:port` location, a
stable partial fingerprint, and the fix guide's steps and commands for that host and port in
the result's properties). Must not: grade or probe; services without findings produce no
result (SARIF results are problems, not inventory).

Severity mapping: critical/high -> level "error", medium -> "warning", low/info -> "note";
`security-severity` (the property GitHub code scanning ranks by) 9.5 / 8.0 / 5.5 / 3.0, none for
info.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from vncaudit.models import Finding, ServiceResult, Severity
from vncaudit.report import ScanMeta, endpoint_text, fix_guide, sorted_findings, utc_time

SARIF_VERSION = "2.1.0"
# The OASIS errata01 schema (what validators resolve the `$schema` of a log to).
SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
MEDIA_TYPE = "application/sarif+json"

LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
}


def render_sarif(meta: ScanMeta, results: Sequence[ServiceResult]) -> str:
    """One SARIF log with one run of vncaudit over *results* (the visible services)."""
    rules: dict[str, dict[str, Any]] = {}
    worst: dict[str, Severity] = {}
    sarif_results: list[dict[str, Any]] = []
    for result in results:
        findings = sorted_findings(result)
        if not findings:
            continue
        fixes = fix_guide(result)
        for finding in findings:
            if finding.id not in rules:
                rules[finding.id] = _rule(finding, fixes)
            if finding.id not in worst or finding.severity.rank > worst[finding.id].rank:
                worst[finding.id] = finding.severity
            sarif_results.append(_result(result, finding, fixes))
    ordered = sorted(rules)
    index = {rule_id: i for i, rule_id in enumerate(ordered)}
    for item in sarif_results:
        item["ruleIndex"] = index[item["ruleId"]]
    driver_rules = []
    for rule_id in ordered:
        rule = rules[rule_id]
        severity = worst[rule_id]
        rule["defaultConfiguration"] = {"level": LEVEL[severity]}
        if severity in SECURITY_SEVERITY:
            rule["properties"]["security-severity"] = SECURITY_SEVERITY[severity]
        driver_rules.append(rule)
    version = meta.tool.split(" ", 1)[1] if " " in meta.tool else meta.tool
    invocation: dict[str, Any] = {"executionSuccessful": meta.finished is not None}
    if (start := _utc(meta.started)) is not None:
        invocation["startTimeUtc"] = start
    if meta.finished and (end := _utc(meta.finished)) is not None:
        invocation["endTimeUtc"] = end
    log = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "vncaudit",
                "version": version,
                "semanticVersion": version,
                "rules": driver_rules,
            }},
            # "category/instance": dashboards compare runs of the same category.
            "automationDetails": {"id": f"vncaudit/{meta.id}"},
            "invocations": [invocation],
            "results": sarif_results,
            "properties": {"targets": list(meta.targets), "ports": meta.ports},
        }],
    }
    return json.dumps(log, indent=2) + "\n"


def _rule(finding: Finding, fixes: Sequence[Any]) -> dict[str, Any]:
    """A rule from the first service that has the finding: its title, why, and the titles of
    the remedies the finding names (the commands differ per host: they go with each result)."""
    titles = [fix.title for fix in fixes if fix.id in finding.remediation]
    help_text = ("Fix: " + "; ".join(titles) + ".") if titles else "See the finding's evidence."
    help_md = ("**Fix**\n\n" + "\n".join(f"- {t}" for t in titles)) if titles else help_text
    rule: dict[str, Any] = {
        "id": finding.id,
        "name": "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", finding.id)),
        "shortDescription": {"text": finding.title},
        "help": {"text": help_text, "markdown": help_md},
        "properties": {"tags": ["security", "vnc"], "remediation": list(finding.remediation)},
    }
    if finding.why:
        rule["fullDescription"] = {"text": finding.why}
    return rule


def _result(result: ServiceResult, finding: Finding, fixes: Sequence[Any]) -> dict[str, Any]:
    where = endpoint_text(result)
    message = f"{finding.title} ({where})."
    if finding.evidence:
        message += " Evidence: " + "; ".join(finding.evidence) + "."
    mine = [fix.to_dict() for fix in fixes if fix.id in finding.remediation]
    properties: dict[str, Any] = {
        "severity": finding.severity.value,
        "host": result.host,
        "port": result.port,
        "evidence": list(finding.evidence),
        "fix": mine,
    }
    if result.hostname:
        properties["hostname"] = result.hostname
    if result.product is not None and result.product.name != "unknown":
        properties["product"] = " ".join(
            p for p in (result.product.name, result.product.version) if p)
    identity = f"{finding.id}|{result.host}|{result.port}"
    return {
        "ruleId": finding.id,
        "level": LEVEL[finding.severity],
        "kind": "fail",
        "message": {"text": message},
        "locations": [{
            "physicalLocation": {"artifactLocation": {"uri": f"vnc://{where}"}},
        }],
        "partialFingerprints": {
            "vncauditFinding/v1": hashlib.sha256(identity.encode("utf-8", "surrogateescape"))
            .hexdigest(),
        },
        "properties": properties,
    }


def _utc(text: str) -> str | None:
    """An ISO-8601 time as SARIF writes it (UTC, trailing Z), or None when unparseable."""
    when = utc_time(text)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else None
