"""vncaudit.assess against REAL VNC servers on loopback (Debian packages, tests/servers.py).

The servers listen on 127.0.0.1 only, so the default grade is the loopback one (one step
lower, "reachable only from this host"); the exposed grade is asked for explicitly with
`Exposure.ALL_INTERFACES` / `Exposure.PUBLIC`, as the local audit does for a listener bound to
0.0.0.0. Session servers are probed once each (`probe_once`): TigerVNC blacklists an address
after 5 unauthenticated connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vncaudit.assess import Exposure, assess
from vncaudit.models import Finding, ServiceResult, Severity, State

import servers

pytestmark = pytest.mark.realserver

Probe = Callable[[servers.VncServer], ServiceResult]
EXPOSED = (Exposure.ALL_INTERFACES, Exposure.PUBLIC)


def one(result: ServiceResult, fid: str) -> Finding:
    found = [f for f in result.findings if f.id == fid]
    assert len(found) == 1, (fid, [f.id for f in result.findings])
    return found[0]


def evidence(f: Finding) -> str:
    return "\n".join(f.evidence)


def assert_evidence_everywhere(result: ServiceResult) -> None:
    assert result.findings
    for f in result.findings:
        assert f.evidence and f.why and f.title, f.id
    # None of these servers shows its version before authentication: a CVE may be "possible",
    # never established.
    assert not [f.id for f in result.findings if f.id.startswith("known-cve:")]


@pytest.mark.parametrize("kind", ["x11vnc_none", "tigervnc_none", "xtightvnc_none"])
def test_no_auth_is_critical_when_exposed_and_lowered_on_loopback(
    kind: str, request: pytest.FixtureRequest, probe_once: Probe
) -> None:
    server: servers.VncServer = request.getfixturevalue(kind)
    probed = probe_once(server)
    assert probed.state is State.VNC
    for exposure in EXPOSED:
        graded = assess(probed, exposure)
        f = one(graded, "no-auth")
        assert f.severity is Severity.CRITICAL, exposure
        assert "the session was granted without a credential" in evidence(f)
        assert_evidence_everywhere(graded)
    assert "exposed-public" in {f.id for f in assess(probed, Exposure.PUBLIC).findings}
    local = assess(probed)  # 127.0.0.1
    f = one(local, "no-auth")
    assert f.severity is Severity.HIGH
    assert "reachable only from this host" in evidence(f)
    assert local.product is not None


def test_no_auth_evidence_names_the_desktop(x11vnc_none: servers.VncServer,
                                            probe_once: Probe) -> None:
    f = one(assess(probe_once(x11vnc_none), Exposure.ALL_INTERFACES), "no-auth")
    assert 'desktop name "x11vnc-none"' in evidence(f) and "640x480" in evidence(f)


@pytest.mark.parametrize("kind", ["tigervnc_vncauth", "xtightvnc", "x11vnc_password"])
def test_vncauth_servers_are_high(kind: str, request: pytest.FixtureRequest,
                                  probe_once: Probe) -> None:
    probed = probe_once(request.getfixturevalue(kind))
    graded = assess(probed, Exposure.ALL_INTERFACES)
    f = one(graded, "vncauth-plaintext")
    assert f.severity is Severity.HIGH
    assert graded.worst_severity is Severity.HIGH  # nothing claims more than it is
    assert "no-auth" not in {x.id for x in graded.findings}
    assert_evidence_everywhere(graded)
    assert one(assess(probed), "vncauth-plaintext").severity is Severity.MEDIUM
    assert one(assess(probed, Exposure.PUBLIC), "vncauth-plaintext").severity is (
        Severity.CRITICAL)


def test_vencrypt_with_tlsnone_is_critical(tigervnc_vencrypt: servers.VncServer,
                                           probe_once: Probe) -> None:
    graded = assess(probe_once(tigervnc_vencrypt), Exposure.ALL_INTERFACES)
    f = one(graded, "tls-no-auth")
    assert f.severity is Severity.CRITICAL
    assert "TLSNone" in evidence(f)
    # the probe went through TLS:
    assert "the session was granted without a credential" in evidence(f)
    assert {"vncauth-plaintext", "downgrade"} <= {x.id for x in graded.findings}
    assert_evidence_everywhere(graded)


def test_tigervnc_default_is_high_with_a_downgrade(tigervnc_default: servers.VncServer,
                                                   probe_once: Probe) -> None:
    graded = assess(probe_once(tigervnc_default), Exposure.ALL_INTERFACES)
    assert graded.worst_severity is Severity.HIGH
    assert one(graded, "downgrade").severity is Severity.MEDIUM
    assert_evidence_everywhere(graded)


def test_tls_vnc_only_is_lower_than_high(vnc_server_factory: Any) -> None:
    import asyncio

    from vncaudit.models import Target
    from vncaudit.probe import probe

    srv = vnc_server_factory("tigervnc", security_types="VeNCrypt,TLSVnc", password="secret12",
                             desktop="tiger-tlsvnc")
    probed = asyncio.run(probe(Target(srv.host, srv.port)))
    assert probed.rfb is not None and probed.rfb.vencrypt is not None
    assert [s.id for s in probed.rfb.vencrypt.subtypes] == [258]
    for exposure in (*EXPOSED, None):
        graded = assess(probed, exposure)
        assert graded.worst_severity is not None
        assert graded.worst_severity.rank < Severity.HIGH.rank, exposure
        ids = {f.id for f in graded.findings}
        assert {"anonymous-tls", "vncauth-in-tls"} <= ids
        assert not ids & {"no-auth", "tls-no-auth", "vncauth-plaintext", "downgrade"}


# -- the CLI grades on both paths, and --fail-on uses the grades --------------------------------


def _scan(server: servers.VncServer, tmp_path: Path,
          *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VNCAUDIT_DB": str(tmp_path / "scan.db")}
    return subprocess.run(
        [sys.executable, "-m", "vncaudit", "scan", server.host, "-p", str(server.port),
         "-o", "json", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize("path", [[], ["--workers", "1"]], ids=["engine", "dask-shard"])
def test_cli_scan_shows_product_and_findings(path: list[str], x11vnc_none: servers.VncServer,
                                             tmp_path: Path) -> None:
    proc = _scan(x11vnc_none, tmp_path, *path)
    assert proc.returncode == 0, proc.stderr
    [service] = json.loads(proc.stdout)["services"]
    assert service["product"] is not None and service["product"]["name"]
    findings = {f["id"]: f for f in service["findings"]}
    assert findings["no-auth"]["severity"] == "high"  # loopback: one step below critical
    assert any("reachable only from this host" in e for e in findings["no-auth"]["evidence"])
    assert "set-password" in findings["no-auth"]["remediation"]
    assert "nonstandard-port" in findings  # the fixture's port is outside 5900-5999


def test_cli_fail_on(x11vnc_none: servers.VncServer, tmp_path: Path) -> None:
    high = _scan(x11vnc_none, tmp_path, "--fail-on", "high")
    assert high.returncode == 1, high.stderr
    assert json.loads(high.stdout)["services"][0]["findings"]
    critical = _scan(x11vnc_none, tmp_path, "--fail-on", "critical")
    assert critical.returncode == 0, critical.stderr  # loopback lowered it to high


def test_cli_active_checks_become_findings(x11vnc_password: servers.VncServer,
                                           tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    # x11vnc's handshake (3.8, [2]) fits TigerVNC too, so the ledger keeps TigerVNC's count:
    # after the probe, the honeypot checks and the bypass check one attempt is left.
    words.write_text(f"{servers.DEFAULT_PASSWORD}\nwrongpw1\n")
    proc = _scan(x11vnc_password, tmp_path, "--check-passwords", "--wordlist", str(words),
                 "--active-checks", "--fail-on", "critical")
    assert proc.returncode == 0, proc.stderr  # loopback: weak-password-found is high here
    [service] = json.loads(proc.stdout)["services"]
    assert service["extra"]["active"]["password_audit"]["status"] == "found"
    findings = {f["id"]: f for f in service["findings"]}
    weak = findings["weak-password-found"]
    assert weak["severity"] == "high"
    assert any("from the given wordlist" in e and '"********"' in e for e in weak["evidence"])
    assert servers.DEFAULT_PASSWORD not in proc.stdout  # masked everywhere
    # x11vnc (LibVNCServer 0.9.14) refuses an un-offered None: no bypass, no bypass CVE
    assert service["extra"]["active"]["unoffered_none"]["status"] == "not-vulnerable"
    assert "auth-bypass" not in findings
    assert not any("CVE-2006-2450" in e for f in service["findings"] for e in f["evidence"])


# -- approval-gated sessions: real servers that ask the desktop's user ---------------------


@pytest.mark.parametrize(("kind", "options", "how"), [
    ("tigervnc-queryconnect", {"vncconfig": False}, "asked"),  # refused at once: nobody to ask
    ("x0vncserver-queryconnect", {}, "held"),  # its dialog is up while the probe waits
    ("tigervnc-queryconnect", {}, "held"),  # vncconfig shows the dialog
])
def test_query_connect_servers_are_graded_approval_required(
    vnc_server_factory: Any, kind: str, options: dict[str, Any], how: str
) -> None:
    import asyncio
    import time

    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions, probe

    srv = vnc_server_factory(kind, **options)
    for _ in range(5):
        probed = asyncio.run(probe(Target(srv.host, srv.port), ProbeOptions(timeout=3.0)))
        reason = probed.rfb.failure_reason if probed.rfb is not None else None
        if how == "asked" or reason is None or not reason.startswith("Unable to query"):
            break
        # vncconfig had not yet told Xvnc that it shows the dialog (a machine under load):
        # nobody was asked and no dialog is pending, so asking again is clean.
        time.sleep(1.0)
    graded = assess(probed)
    ids = {f.id for f in graded.findings}
    assert "no-auth" not in ids, [f.id for f in graded.findings]
    f = one(graded, "approval-required")
    assert ("held the session" in f.title) is (how == "held"), f.title
    assert "nobody is asked" not in f.why
    assert f.severity is Severity.MEDIUM  # loopback: one step below the base (high)


@pytest.mark.parametrize(("kind", "held"), [
    ("vino", True),  # its default prompt: ServerInit, then the update request is never answered
    ("vino-noprompt", False),  # the same server without the prompt answers at once
])
def test_vino_is_graded_by_whether_its_session_is_live(
    vnc_server_factory: Any, kind: str, held: bool
) -> None:
    import asyncio

    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions, probe

    srv = vnc_server_factory(kind)
    probed = asyncio.run(probe(Target(srv.host, srv.port), ProbeOptions(timeout=5.0)))
    assert probed.state is State.VNC and probed.rfb is not None, probed.error
    assert probed.rfb.desktop_name is not None  # RFB 3.7: ServerInit comes either way
    assert probed.rfb.update_answered is (not held), probed.rfb
    graded = assess(probed)
    ids = {f.id for f in graded.findings}
    if held:
        assert not {"no-auth", "tls-no-auth"} & ids, ids
        f = one(graded, "approval-required")
        assert "held the session" in f.title and "nobody is asked" not in f.why
        assert "one pixel of the screen was not answered (no answer within 2 s)" \
            in evidence(f), f.evidence
        assert probed.error is None and probed.elapsed < 4.5
    else:
        assert "approval-required" not in ids, ids
        f = one(graded, "tls-no-auth")
        assert "was not seen" not in f.why and "nobody was asked" in evidence(f)
