"""Report formats: json/jsonl, csv, nmap-compatible XML and HTML, from REAL recorded facts.

The services come from the recorded handshakes in `tests/transcripts/` replayed through the
probe's own session logic (`rfb_helpers.drive_events`), so every fact is one a real TigerVNC,
x11vnc or TightVNC server sent. Findings are either hand-written inputs (to pin a format) or
`vncaudit.assess` run on those facts (to show that what the grader says reaches every format).
XML is checked with python-libnmap, the parser third-party tools use for nmap files, and with
`xml.etree`; the CLI tests scan real servers (`realserver`) and read the files back.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libnmap.parser import NmapParser

from vncaudit import report
from vncaudit.models import Finding, Product, ServiceResult, Severity, State
from vncaudit.payloads import ActiveChecks, WebFrontEnd, WebSocketEndpoint
from vncaudit.report import csv_report, html, nmap_xml
from vncaudit.report.schema import report_schema

from rfb_helpers import drive_events

TRANSCRIPTS = Path(__file__).parent / "transcripts"

META = report.ScanMeta(
    id="s-20261201-test",
    started="2026-12-01T08:00:00+00:00",
    finished="2026-12-01T08:00:07+00:00",
    targets=["127.0.0.1", "127.0.0.2"],
    ports="5900-5910",
    tool="vncaudit 0.1.0",
)


def replayed(name: str, port: int, host: str = "127.0.0.1") -> ServiceResult:
    """The probe's result for a recorded handshake (what the server sent, chunk by chunk)."""
    doc = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    chunks = [bytes.fromhex(e["hex"]) for e in doc["exchanges"] if e["dir"] == "s2c"]
    _, _, session = drive_events(chunks)
    return replace(session.result(0.012), host=host, port=port)


NO_AUTH = Finding("no-auth", Severity.CRITICAL, "No authentication: anyone gets the desktop",
                  ('offered: type 1 "None"', "SecurityResult ok"),
                  "Whoever reaches the port sees and controls the screen.",
                  ("firewall-block", "set-password"))
DES_ONLY = Finding("vncauth-plaintext", Severity.MEDIUM, "Only DES VNC Authentication",
                   ("security types [2]",), "Passwords are cut to 8 characters.",
                   ("enable-encryption",))
NONSTD = Finding("nonstandard-port", Severity.INFO, "VNC on a non-standard port",
                 ("port 5907",), "", ())


@pytest.fixture
def services() -> list[ServiceResult]:
    """Five real handshakes (VeNCrypt, None, Tight, DES-only, blacklisted) + closed/filtered."""
    x11 = replayed("x11vnc-none-38", 5901)
    return [
        replayed("tigervnc-default-38", 5900),
        replace(x11, product=Product("x11vnc", "0.9.16", 0.9, ("desktop name 'vm:40'",)),
                findings=(NONSTD, NO_AUTH), hostname="lab.example.test"),
        replace(replayed("xtightvnc-38", 5902),
                product=Product("TightVNC", "1.3", 0.85, ("Tight auth STDV VNCAUTH_",)),
                findings=(DES_ONLY,)),
        replace(replayed("tigervnc-vncauth-38", 5903, host="127.0.0.2"), findings=(DES_ONLY,)),
        replayed("tigervnc-blacklisted", 5904, host="127.0.0.2"),
        ServiceResult("127.0.0.2", 5905, State.CLOSED),
        ServiceResult("127.0.0.3", 5900, State.FILTERED),
    ]


def test_replayed_facts_are_the_recorded_ones(services: list[ServiceResult]) -> None:
    # Guards the fixture: the formats below are fed what the real servers said.
    tiger, x11, tight, _, black = services[:5]
    assert tiger.rfb and tiger.rfb.vencrypt and [s.id for s in tiger.rfb.vencrypt.subtypes] == [
        258, 2]
    assert x11.rfb and x11.rfb.desktop_name == "vm:40" and x11.rfb.auth_required is False
    assert tight.rfb and tight.rfb.tight and tight.rfb.tight.auth[0].signature == "VNCAUTH_"
    assert black.state is State.BLACKLISTED and black.rfb
    assert black.rfb.failure_reason == "Too many security failures"


def test_formats_and_unknown_format() -> None:
    assert report.FORMATS == ("json", "jsonl", "csv", "xml", "html", "sarif", "defectdojo")
    with pytest.raises(ValueError, match="yaml"):
        report.render("yaml", META, [])


# -- json / jsonl -----------------------------------------------------------------------------


def test_json_and_jsonl_carry_product_and_findings(services: list[ServiceResult]) -> None:
    doc = json.loads(report.render("json", META, services))
    assert doc["schema_version"] == 1 and doc["scan"]["id"] == META.id
    by_port = {s["port"]: s for s in doc["services"]}
    assert set(by_port) == {5900, 5901, 5902, 5903, 5904}  # closed/filtered hidden by default
    assert by_port[5901]["product"] == {"name": "x11vnc", "version": "0.9.16",
                                        "confidence": 0.9, "evidence": ["desktop name 'vm:40'"]}
    assert [f["id"] for f in by_port[5901]["findings"]] == ["nonstandard-port", "no-auth"]
    assert by_port[5901]["findings"][1]["remediation"] == ["firewall-block", "set-password"]
    lines = report.render("jsonl", META, services, include_all=True).splitlines()
    back = [ServiceResult.from_dict(json.loads(line)) for line in lines]
    assert back == services
    # Both against the published schema (test_report_formats validates many more).
    schema = report_schema()
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    service = {**schema, "$ref": "#/$defs/service"}
    for key in ("type", "required", "properties", "additionalProperties"):
        service.pop(key)
    for line in lines:
        jsonschema.validate(json.loads(line), service, cls=jsonschema.Draft202012Validator)


# -- csv --------------------------------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == csv_report.COLUMNS
    return list(reader)


def test_csv_one_row_per_service_with_the_facts(services: list[ServiceResult]) -> None:
    text = report.render("csv", META, services)
    assert text.startswith(",".join(csv_report.COLUMNS) + "\r\n")
    rows = {(r["host"], int(r["port"])): r for r in read_csv(text)}
    assert len(rows) == 5
    tiger = rows[("127.0.0.1", 5900)]
    assert tiger["state"] == "vnc" and tiger["server_version"] == "3.8"
    assert tiger["security_types"] == "19 VeNCrypt; 2 VNC Authentication"
    assert tiger["vencrypt_subtypes"] == "258 TLSVnc; 2 VNC Authentication"
    assert tiger["auth_required"] == "true" and tiger["worst_severity"] == ""
    x11 = rows[("127.0.0.1", 5901)]
    assert (x11["desktop_name"], x11["geometry"]) == ("vm:40", "640x480x24")
    assert (x11["auth_required"], x11["security_result"]) == ("false", "ok")
    assert (x11["product"], x11["product_version"]) == ("x11vnc", "0.9.16")
    assert x11["hostname"] == "lab.example.test"
    # Worst first, whatever order assess produced them in.
    assert (x11["worst_severity"], x11["finding_ids"]) == ("critical", "no-auth nonstandard-port")
    assert rows[("127.0.0.1", 5902)]["tight_auth"] == "2 STDV VNCAUTH_"
    black = rows[("127.0.0.2", 5904)]
    assert black["state"] == "blacklisted"
    assert black["failure_reason"] == "Too many security failures"
    with_all = read_csv(report.render("csv", META, services, include_all=True))
    assert {(r["host"], r["state"]) for r in with_all} >= {("127.0.0.2", "closed"),
                                                          ("127.0.0.3", "filtered")}


@pytest.mark.parametrize(
    "name",
    ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1", "  =1",
     "\uff1d1+1", "=cmd|' /C calc'!A0"],
)
def test_csv_neutralises_formulas_from_the_network(
    services: list[ServiceResult], name: str
) -> None:
    x11 = services[1]
    assert x11.rfb is not None
    hostile = replace(x11, rfb=replace(x11.rfb, desktop_name=name, failure_reason=name))
    (row,) = read_csv(report.render("csv", META, [hostile]))
    assert row["desktop_name"] == "'" + name
    assert row["failure_reason"] == "'" + name


def test_csv_keeps_plain_text_and_drops_control_bytes(services: list[ServiceResult]) -> None:
    x11 = services[1]
    assert x11.rfb is not None
    name = 'root\'s desk, "quoted"\nsecond line\x00\x1b[31m'
    (row,) = read_csv(report.render("csv", META, [replace(x11, rfb=replace(
        x11.rfb, desktop_name=name))]))
    assert row["desktop_name"] == 'root\'s desk, "quoted"\nsecond line[31m'
    assert csv_report.neutralise("vm:40") == "vm:40"


# -- nmap XML ---------------------------------------------------------------------------------


def test_xml_round_trips_through_libnmap(services: list[ServiceResult]) -> None:
    text = report.render("xml", META, services)
    parsed = NmapParser.parse_fromstring(text)
    assert parsed.commandline == "vncaudit scan -p 5900-5910 127.0.0.1 127.0.0.2"
    assert parsed.scan_type == "connect" and parsed.is_consistent()
    assert [h.address for h in parsed.hosts] == ["127.0.0.1", "127.0.0.2"]
    local = parsed.hosts[0]
    assert local.is_up() and local.hostnames == ["lab.example.test"]
    assert [(s.port, s.state, s.protocol) for s in local.services] == [
        (5900, "open", "tcp"), (5901, "open", "tcp"), (5902, "open", "tcp")]
    tiger, x11, tight = local.services
    assert tiger.service == "vnc" and tiger.service_dict.get("product") is None
    assert "protocol 3.8" in tiger.banner
    assert (x11.service_dict["product"], x11.service_dict["version"]) == ("x11vnc", "0.9.16")
    scripts = {s["id"]: s for s in x11.scripts_results}
    info = scripts["vnc-info"]
    assert info["elements"]["Protocol version"] == "3.8"
    assert info["elements"]["WARNING"] == "Server does not require authentication"
    assert "Security types: \n    None (1)" in info["output"]
    assert scripts["vnc-title"]["elements"] == {"name": "vm:40", "geometry": "640 x 480",
                                                "color_depth": "24"}
    found = scripts["vncaudit-findings"]
    assert "CRITICAL no-auth" in found["output"] and "INFO nonstandard-port" in found["output"]
    assert found["output"].index("no-auth") < found["output"].index("nonstandard-port")
    tiger_info = {s["id"]: s for s in tiger.scripts_results}["vnc-info"]
    subtypes = tiger_info["elements"]["VeNCrypt auth subtypes"][None]
    assert [(t["name"], t["type"]) for t in subtypes] == [("TLSVnc", "258"),
                                                           ("VNC Authentication", "2")]
    tight_info = {s["id"]: s for s in tight.scripts_results}["vnc-info"]
    assert tight_info["elements"]["Tight auth subtypes"][None] == {
        "vendor": "STDV", "signature": "VNCAUTH_", "code": "2"}
    blacklisted = parsed.hosts[1].services[1]
    assert "Too many security failures" in blacklisted.banner
    assert {s["id"]: s for s in blacklisted.scripts_results}["vnc-info"]["output"] == (
        "ERROR: Too many security failures")
    assert (parsed.started, parsed.endtime, parsed.elapsed) == (1796112000, 1796112007, 7.0)
    assert parsed.hosts_total == 2


def _xml_services(text: str) -> dict[tuple[str, int], ET.Element]:
    root = ET.fromstring(text)
    assert root.tag == "nmaprun"
    out = {}
    for host in root.iter("host"):
        addr = host.find("address")
        assert addr is not None
        for port in host.iter("port"):
            out[(addr.get("addr", ""), int(port.get("portid", "0")))] = port
    return out


def test_xml_closed_and_filtered_only_with_all(services: list[ServiceResult]) -> None:
    assert ("127.0.0.2", 5905) not in _xml_services(report.render("xml", META, services))
    text = report.render("xml", META, services, include_all=True)
    ports = _xml_services(text)
    closed, filtered = ports[("127.0.0.2", 5905)], ports[("127.0.0.3", 5900)]
    for port, state, reason in ((closed, "closed", "conn-refused"),
                                (filtered, "filtered", "no-response")):
        el = port.find("state")
        assert el is not None and (el.get("state"), el.get("reason")) == (state, reason)
        assert port.find("service") is None and port.find("script") is None
    parsed = NmapParser.parse_fromstring(text)
    hosts = {h.address: h for h in parsed.hosts}
    assert hosts["127.0.0.2"].is_up()  # it answered (a service, and a refusal)
    assert hosts["127.0.0.3"].status == "unknown"  # only silence: not claimed to be up
    assert [s.state for s in hosts["127.0.0.3"].services] == ["filtered"]
    assert (parsed.hosts_up, parsed.hosts_total) == (2, 3)


def test_xml_survives_hostile_server_strings(services: list[ServiceResult]) -> None:
    x11 = services[1]
    assert x11.rfb is not None
    name = "a\x00b\x01c\x1b[2J]]><!--<script>&amp;\ud800\ufffe\uffffd\U0001f600\t\u00e9"
    hostile = replace(x11, rfb=replace(x11.rfb, desktop_name=name))
    text = report.render("xml", META, [hostile])
    port = _xml_services(text)[("127.0.0.1", 5901)]
    title = next(s for s in port.iter("script") if s.get("id") == "vnc-title")
    elem = next(e for e in title.iter("elem") if e.get("key") == "name")
    assert elem.text == "abc[2J]]><!--<script>&amp;d\U0001f600\t\u00e9"
    assert "<script>" not in text  # escaped, not markup
    parsed = NmapParser.parse_fromstring(text)
    scripts = {s["id"]: s for s in parsed.hosts[0].services[0].scripts_results}
    assert scripts["vnc-title"]["elements"]["name"] == elem.text
    assert nmap_xml.clean("\x00ok\x08") == "ok"


def test_xml_is_valid_against_nmaps_dtd_but_for_the_scanner_name(
    services: list[ServiceResult], tmp_path: Path
) -> None:
    """nmap.dtd allows only scanner="nmap"; we say who wrote the file (as masscan does), and
    that is the one difference: with it swapped, xmllint finds the document valid."""
    import shutil

    dtd = Path("/usr/share/nmap/nmap.dtd")
    if shutil.which("xmllint") is None or not dtd.exists():
        pytest.skip("xmllint (libxml2-utils) or nmap's DTD is not installed")
    text = report.render("xml", META, services, include_all=True)
    assert text.count('scanner="vncaudit"') == 1
    doc = tmp_path / "scan.xml"
    doc.write_text(text.replace('scanner="vncaudit"', 'scanner="nmap"'), encoding="utf-8")
    check = subprocess.run(["xmllint", "--noout", "--dtdvalid", str(dtd), str(doc)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    doc.write_text(text, encoding="utf-8")
    check = subprocess.run(["xmllint", "--noout", "--dtdvalid", str(dtd), str(doc)],
                           capture_output=True, text=True, timeout=30, check=False)
    errors = [line for line in check.stderr.splitlines() if "validity error" in line]
    assert len(errors) == 1 and "scanner" in errors[0], check.stderr


@pytest.mark.realserver
def test_xml_vnc_info_matches_nmap_for_the_same_server(xtightvnc: Any, tmp_path: Path) -> None:
    """nmap 7.9x's own vnc-info against a real TightVNC server and ours: same keys, same values
    (TightVNC does not lock out, so the extra connections nmap makes are harmless)."""
    import shutil

    from conftest import _unavailable

    import servers

    if shutil.which("nmap") is None:
        _unavailable(servers.ServerUnavailable("nmap", ["nmap"]))
    theirs_file = tmp_path / "nmap.xml"
    subprocess.run(["nmap", "-sT", "-sV", "-Pn", "-n", "-p", str(xtightvnc.port), "--script",
                    "vnc-info", "127.0.0.1", "-oX", str(theirs_file)], check=True,
                   capture_output=True, timeout=120)
    out = run_cli("scan", "127.0.0.1", "-p", str(xtightvnc.port), "-o", "xml")
    assert out.returncode == 0, out.stderr

    def vnc_info(text: str) -> dict[str, Any]:
        (host,) = NmapParser.parse_fromstring(text).hosts
        (svc,) = [s for s in host.services if s.port == xtightvnc.port]
        assert svc.service == "vnc" and svc.state == "open"
        info: dict[str, Any] = {s["id"]: s for s in svc.scripts_results}["vnc-info"]
        return info

    theirs, ours = vnc_info(theirs_file.read_text()), vnc_info(out.stdout)
    assert ours["elements"] == theirs["elements"]
    assert ours["output"] == theirs["output"]


def test_every_format_of_an_empty_scan_and_an_ipv6_host(services: list[ServiceResult]) -> None:
    assert read_csv(report.render("csv", META, [])) == []
    empty = NmapParser.parse_fromstring(report.render("xml", META, []))
    assert (empty.hosts_total, empty.hosts) == (0, [])
    assert "Nothing exposed" in report.render("html", META, [])
    v6 = replace(services[1], host="::1")
    (host,) = NmapParser.parse_fromstring(report.render("xml", META, [v6])).hosts
    assert (host.address, host.ipv6) == ("::1", "::1")
    page = report.render("html", META, [v6])
    assert 'id="svc-1-5901"' in page and "[::1]:5901" in page


def test_other_states_and_web_transport_in_every_format(services: list[ServiceResult]) -> None:
    x11 = services[1]
    odd = [
        ServiceResult("127.0.0.1", 5910, State.TARPIT, error="no banner within 5 s"),
        ServiceResult("127.0.0.1", 5911, State.OPEN_NOT_VNC, error="speaks HTTP"),
        ServiceResult("127.0.0.1", 5912, State.MALFORMED, error="bad banner b'RFB 0x'"),
        replace(x11, port=6080).with_extra(web=WebFrontEnd("websocket", websocket=(
            WebSocketEndpoint("ws://127.0.0.1:6080/websockify", "/websockify", None, None)))),
    ]
    port_el = _xml_services(report.render("xml", META, odd))
    services_xml = {p: el.find("service") for (_, p), el in port_el.items()}
    got = {p: (el.get("name"), el.get("extrainfo")) for p, el in services_xml.items()
           if el is not None}
    assert got[5910] == ("unknown", "tarpit: no banner before the deadline; no banner within 5 s")
    assert got[5911] == ("unknown", "speaks HTTP")
    assert got[5912] == ("vnc", "malformed RFB; bad banner b'RFB 0x'")
    assert got[6080] == ("vnc", "protocol 3.8; over WebSocket")
    rows = {int(r["port"]): r for r in read_csv(report.render("csv", META, odd))}
    assert rows[5911]["error"] == "speaks HTTP" and rows[5910]["state"] == "tarpit"
    page = report.render("html", META, odd)
    assert "RFB over WebSocket (ws://127.0.0.1:6080/websockify)" in page
    assert "speaks HTTP" in page and "bad banner b&#39;RFB 0x&#39;" in page


# -- html -------------------------------------------------------------------------------------


def test_html_escapes_hostile_strings(services: list[ServiceResult]) -> None:
    x11 = services[1]
    assert x11.rfb is not None
    hostile = replace(
        x11,
        rfb=replace(x11.rfb, desktop_name="<script>alert(1)</script>",
                    failure_reason='"><img src=x onerror=alert(2)>'),
        hostname="<b>evil</b>.test",
        product=Product("x11vnc", "<i>9</i>", 0.5, ("<svg onload=alert(3)>",)),
    )
    page = report.render("html", META, [hostile])
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<b>evil</b>" not in page and "<svg" not in page and "<i>9</i>" not in page
    assert page.count("<script") == 1  # ours, for the copy buttons


def test_html_makes_invisible_characters_visible() -> None:
    assert html.shown("desk\u202etxt.exe\x1b[0m\x00") == "desk\\u202etxt.exe\\x1b[0m\\x00"
    assert html.shown("tab\tand\nnewline é") == "tab\tand\nnewline é"


def test_html_is_self_contained_with_a_strict_policy(services: list[ServiceResult]) -> None:
    page = report.render("html", META, services, include_all=True)
    assert not re.search(r"(?:src|href|action)\s*=\s*\"(?!#|data:)", page)
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "@import" not in page
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert policy is not None and "default-src 'none'" in policy.group(1)
    (script,) = re.findall(r"<script>(.*?)</script>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy.group(1)  # the only script allowed to run


def _counts(page: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(
        r'data-severity="(\w+)">\s*<span class="n">(\d+)</span>', page)}


def test_html_summary_counts_worst_first_and_cards(services: list[ServiceResult]) -> None:
    page = report.render("html", META, services)
    counts = _counts(page)
    assert list(counts) == ["critical", "high", "medium", "low", "info"]
    assert counts == {"critical": 1, "high": 0, "medium": 2, "low": 0, "info": 1}
    assert page.count('<article class="card') == 5
    # The worst service's card comes first; then the medium ones.
    order = re.findall(r'<article class="card (\w+)" id="svc-([\w-]+)"', page)
    assert order[0] == ("critical", "127-0-0-1-5901")
    assert [o[0] for o in order[1:3]] == ["medium", "medium"]
    for fact in ("VeNCrypt 0.2 sub-types", "TLSVnc (258)", "STDV VNCAUTH_ (2)", "vm:40",
                 "640 × 480, depth 24", "Too many security failures", "x11vnc 0.9.16"):
        assert fact in page, fact
    assert "Closed and filtered ports" not in page
    assert "Closed and filtered ports" in report.render("html", META, services, include_all=True)


def test_html_lists_hosts_found_by_dns(services: list[ServiceResult]) -> None:
    discovery = [{"domain": "lab.test", "resolver": "127.0.0.1:5353", "queries": 41,
                  "hosts": [{"name": "vnc.lab.test", "addresses": ["127.0.0.1"], "cnames": [],
                             "sources": ["axfr", "wordlist"]},
                            {"name": "<i>x</i>.lab.test", "addresses": [], "cnames": [],
                             "sources": ["axfr"]}],
                  "axfr": {"ns1.lab.test@127.0.0.2": "ok"}, "wildcard": None}]
    meta = replace(META, extra={"discovery": discovery})
    page = report.render("html", meta, services)
    assert "Hosts found by DNS: lab.test" in page and "41 DNS queries" in page
    assert "Zone transfer open to anyone on ns1.lab.test@127.0.0.2" in page
    assert "vnc.lab.test" in page and "axfr, wordlist" in page
    assert "<i>x</i>" not in page and "&lt;i&gt;x&lt;/i&gt;.lab.test" in page
    assert "Hosts found by DNS" not in report.render("html", META, services)


def test_html_fix_commands_come_from_the_fix_guide(services: list[ServiceResult]) -> None:
    from vncaudit import remedies

    x11 = services[1]
    page = report.render("html", META, [x11])
    fixes = remedies.remedies_for(x11)
    assert {r.id for r in fixes} == {"firewall-block", "set-password"}
    blocks = [html_unescape(b) for b in re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)]
    for fix in fixes:
        assert f'data-remedy="{fix.id}"' in page
        for step in fix.steps:
            if step.commands:
                assert "\n".join(step.commands) in blocks
    assert any("5901" in b for b in blocks)
    assert page.count('class="copy" hidden') == len(blocks)


def html_unescape(text: str) -> str:
    import html as std_html

    return std_html.unescape(text)


def test_html_without_the_fix_guide_lists_remediation_ids(
    services: list[ServiceResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vncaudit.remedies", None)  # import now fails
    page = report.render("html", META, [services[1]])
    assert "fix guide (<code>vncaudit.remedies</code>) is not installed" in page
    assert "<code>firewall-block</code>" in page and "<pre><code>" not in page


@pytest.fixture
def real_png(tmp_path: Path) -> Iterator[tuple[Path, bytes]]:
    from vncaudit.active import encode_png

    rgb = bytes([30, 60, 200]) * (64 * 40)
    png = encode_png(rgb, 64, 40)
    path = tmp_path / "screenshots" / "127.0.0.1_5901.png"
    path.parent.mkdir()
    path.write_bytes(png)
    yield path, png


def _with_active(result: ServiceResult, active: dict[str, Any]) -> ServiceResult:
    """`result` with the active checks given in their JSON shape (as a store row holds them)."""
    return result.with_extra(active=ActiveChecks.from_dict(active))


def test_html_embeds_the_screenshot_and_shows_the_verdict(
    services: list[ServiceResult], real_png: tuple[Path, bytes]
) -> None:
    path, png = real_png
    active = {
        "screenshot": {"status": "ok", "path": str(path), "width": 64, "height": 40,
                       "coverage": 1.0, "reason": None},
        "desktop_kind": {"kind": "login-screen", "confidence": 0.82,
                         "evidence": ["one centred panel, no title bar"], "features": {}},
        "password_audit": {"status": "not-applicable", "attempts": 0, "budget": 3,
                           "source": "builtin", "found": False,
                           "stop_reason": "no authentication required (None is offered)"},
        "unoffered_none": {"status": "not-applicable", "cves": ["CVE-2006-2369"],
                           "evidence": "None is offered openly; no bypass to test"},
    }
    page = report.render("html", META, [_with_active(services[1], active)])
    (uri,) = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(uri) == png
    assert 'data-verdict="Login screen"' in page and "confidence 82%" in page
    assert "one centred panel, no title bar" in page
    assert "Weak-password audit" in page and "no authentication required" in page
    assert "Auth bypass (CVE-2006-2369)" in page


def test_html_screenshot_missing_or_not_png_is_said_not_embedded(
    services: list[ServiceResult], tmp_path: Path
) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"<svg onload=alert(1)>")
    for path, words in ((tmp_path / "gone.png", "not readable"), (fake, "not a PNG")):
        active = {"screenshot": {"status": "ok", "path": str(path), "width": 8, "height": 8}}
        page = report.render("html", META, [_with_active(services[1], active)])
        assert "data:image/png" not in page and words in page
    skipped = {"screenshot": {"status": "skipped",
                              "reason": "authentication required; give --password"}}
    page = report.render("html", META, [_with_active(services[3], skipped)])
    assert "Screenshot skipped: authentication required; give --password" in page


def test_formats_render_what_assess_found() -> None:
    """Real facts, real grader: every finding and the product assess derives reach each format."""
    from vncaudit.assess import assess

    graded = [assess(replayed(name, 5900 + i))
              for i, name in enumerate(["x11vnc-none-38", "tigervnc-default-38", "xtightvnc-38"])]
    assert any(r.findings for r in graded)
    doc = json.loads(report.render("json", META, graded))
    rows = read_csv(report.render("csv", META, graded))
    xml_hosts = NmapParser.parse_fromstring(report.render("xml", META, graded)).hosts
    page = report.render("html", META, graded)
    for r, svc, row, port in zip(graded, doc["services"], rows, xml_hosts[0].services,
                                 strict=True):
        ids = [f.id for f in report.sorted_findings(r)]
        assert [f["id"] for f in svc["findings"]] == [f.id for f in r.findings]
        assert row["finding_ids"] == " ".join(ids)
        scripts = {s["id"]: s for s in port.scripts_results}
        for f in r.findings:
            assert f"{f.severity.value.upper()} {f.id}:" in scripts["vncaudit-findings"]["output"]
            assert f'data-finding="{f.id}"' in page
        if r.product is not None and r.product.name != "unknown":
            assert port.service_dict["product"] == row["product"] == r.product.name


# -- the CLI, against real servers ------------------------------------------------------------


def run_cli(*args: str, timeout: float = 90,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=cwd)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.realserver
def test_cli_xml_and_csv_of_a_real_scan(x11vnc_none: Any, tmp_path: Path) -> None:
    closed = _closed_port()
    ports = f"{x11vnc_none.port},{closed}"
    xml_file = tmp_path / "scan.xml"
    out = run_cli("scan", "127.0.0.1", "-p", ports, "-o", "xml", "--output-file", str(xml_file),
                  "--all", "--timeout", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    (host,) = NmapParser.parse_fromfile(str(xml_file)).hosts
    assert host.address == "127.0.0.1" and host.is_up()
    by_port = {s.port: s for s in host.services}
    assert by_port[closed].state == "closed"
    vnc = by_port[x11vnc_none.port]
    assert (vnc.state, vnc.service) == ("open", "vnc")
    scripts = {s["id"]: s for s in vnc.scripts_results}
    assert scripts["vnc-info"]["elements"]["WARNING"] == "Server does not require authentication"
    assert scripts["vnc-title"]["elements"]["name"] == "x11vnc-none"
    assert "no-auth" in scripts["vncaudit-findings"]["output"]

    out = run_cli("scan", "127.0.0.1", "-p", ports, "-o", "csv", "--timeout", "3")
    assert out.returncode == 0, out.stderr
    (row,) = read_csv(out.stdout)  # the closed port is not listed without --all
    assert (row["port"], row["state"], row["auth_required"]) == (
        str(x11vnc_none.port), "vnc", "false")
    assert row["desktop_name"] == "x11vnc-none" and row["geometry"] == "640x480x24"
    assert "no-auth" in row["finding_ids"].split()
    # The same identification in both; nmap's service@product is left out when unknown.
    assert row["product"] not in ("", None)
    expected = None if row["product"] == "unknown" else row["product"]
    assert vnc.service_dict.get("product") == expected


@pytest.mark.realserver
@pytest.mark.parametrize("fmt", report.FORMATS)
def test_cli_fail_on_works_with_every_format(x11vnc_none: Any, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"r.{fmt}"
    out = run_cli("scan", "127.0.0.1", "-p", str(x11vnc_none.port), "-o", fmt,
                  "--output-file", str(target), "--fail-on", "low", "--timeout", "3")
    assert out.returncode == 1, out.stderr  # no authentication is at least "low"
    assert "Traceback" not in out.stderr
    text = target.read_text()
    assert str(x11vnc_none.port) in text and "no-auth" in text  # the report is written first
    if fmt == "xml":
        NmapParser.parse_fromstring(text)
    elif fmt == "csv":
        assert read_csv(text)[0]["worst_severity"]


def test_cli_unwritable_output_file_is_one_line_and_keeps_the_results(tmp_path: Path) -> None:
    # A write that fails after the scan (a disk that is full); a missing directory is refused
    # before the scan instead (tests/test_cli_errors.py).
    target = Path("/dev/full")
    out = run_cli("scan", "127.0.0.1", "-p", str(_closed_port()), "-o", "csv",
                  "--output-file", str(target), "--timeout", "2")
    assert out.returncode == 3
    (line,) = out.stderr.strip().splitlines()
    assert f"cannot write {target}" in line and "vncaudit results s-" in line
    scan_id = line.rsplit("vncaudit results ", 1)[1].split()[0]
    again = run_cli("results", scan_id, "-o", "csv", "--all")
    assert again.returncode == 0 and read_csv(again.stdout)[0]["state"] == "closed"


@pytest.mark.realserver
def test_cli_html_from_the_store_later_still_embeds_the_screenshot(
    x11vnc_none: Any, tmp_path: Path
) -> None:
    """A relative --output-file, then `results -o html` from another directory: the PNG saved
    next to the first report is still found (the store keeps an absolute path)."""
    scan_dir, elsewhere = tmp_path / "scan", tmp_path / "elsewhere"
    scan_dir.mkdir()
    elsewhere.mkdir()
    db = str(tmp_path / "store.db")
    out = run_cli("scan", "127.0.0.1", "-p", str(x11vnc_none.port), "--screenshot", "-o", "json",
                  "--output-file", "r.json", "--db", db, "--timeout", "5", cwd=scan_dir)
    assert out.returncode == 0, out.stderr
    doc = json.loads((scan_dir / "r.json").read_text())
    shot = doc["services"][0]["extra"]["active"]["screenshot"]
    path = Path(shot["path"])
    assert path.is_absolute() and path.parent == scan_dir / "screenshots"
    later = run_cli("results", doc["scan"]["id"], "-o", "html", "--db", db, cwd=elsewhere)
    assert later.returncode == 0, later.stderr
    (uri,) = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', later.stdout)
    assert base64.b64decode(uri) == path.read_bytes()


@settings(max_examples=400, deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=200))
def test_display_text_is_escaped_and_cut_per_character(text: str, limit: int) -> None:
    from vncaudit import display

    def escaped(c: str) -> str:
        return c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 \
            else f"\\u{ord(c):04x}"

    assert display.escape(text) == "".join(escaped(c) for c in text)
    used, kept = 0, 0
    for c in text:
        if used + len(escaped(c)) > limit:
            break
        used += len(escaped(c))
        kept += 1
    head = "".join(escaped(c) for c in text[:kept])
    left = len(text) - kept
    assert display.shown(text, limit) == (head if not left else f"{head}… (+{left} characters)")
