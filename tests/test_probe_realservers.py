"""The probe against REAL VNC servers from Debian packages, started on loopback by the fixtures.

Each session server is probed once (`probe_once`) so TigerVNC's blacklist is never approached
by the test suite itself; the lockout test uses fresh servers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from typing import Any

import pytest

from vncaudit.models import State, Target
from vncaudit.probe import ProbeOptions, probe

import servers

pytestmark = pytest.mark.realserver


def ids(items: Any) -> list[int]:
    return [t.id for t in items]


def assert_no_duplicates_or_unknowns(result: Any) -> None:
    facts = result.rfb
    assert len(set(ids(facts.security_types))) == len(facts.security_types)
    for t in facts.security_types:
        assert not t.name.startswith("Unknown"), t
    if facts.vencrypt:
        assert len(set(ids(facts.vencrypt.subtypes))) == len(facts.vencrypt.subtypes)
        for s in facts.vencrypt.subtypes:
            assert not s.name.startswith("Unknown"), s


def test_tigervnc_none(tigervnc_none: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(tigervnc_none)
    assert r.state is State.VNC, r.error
    f = r.rfb
    assert (f.server_version, f.client_version) == ("3.8", "3.8")
    assert ids(f.security_types) == [1]
    assert f.auth_required is False
    assert f.security_result == "ok"
    assert f.desktop_name == "tiger-none"
    assert (f.framebuffer.width, f.framebuffer.height) == (640, 480)
    assert_no_duplicates_or_unknowns(r)


def test_tigervnc_vncauth(tigervnc_vncauth: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(tigervnc_vncauth)
    f = r.rfb
    assert r.state is State.VNC
    assert ids(f.security_types) == [2]
    assert f.security_types[0].name == "VNC Authentication"
    assert f.auth_required is True
    assert f.security_result is None and f.desktop_name is None  # never authenticates


def test_tigervnc_vencrypt(tigervnc_vencrypt: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(tigervnc_vencrypt)
    f = r.rfb
    assert r.state is State.VNC, r.error
    # TigerVNC really sends 19 twice on the wire; the facts list it once and keep a note.
    assert ids(f.security_types) == [19, 2]
    assert any("duplicate" in n for n in f.notes)
    assert f.vencrypt.version == "0.2"
    assert ids(f.vencrypt.subtypes) == [258, 2, 257]
    assert [s.name for s in f.vencrypt.subtypes] == ["TLSVnc", "VNC Authentication", "TLSNone"]
    # TLSNone was offered: anonymous TLS, then SecurityResult confirms no authentication.
    assert f.auth_required is False
    assert f.security_result == "ok"
    assert f.desktop_name == "tiger-vencrypt"
    assert r.extra.tls is not None and r.extra.tls.anonymous is True
    assert_no_duplicates_or_unknowns(r)


def test_tigervnc_default(tigervnc_default: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(tigervnc_default)
    f = r.rfb
    assert ids(f.security_types) == [19, 2]
    assert ids(f.vencrypt.subtypes) == [258, 2]
    assert f.auth_required is True
    assert f.desktop_name is None


def test_x11vnc_nopw(x11vnc_none: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(x11vnc_none)
    f = r.rfb
    assert r.state is State.VNC, r.error
    assert f.server_version == "3.8"
    assert ids(f.security_types) == [1]
    assert f.security_result == "ok"
    assert f.auth_required is False
    assert (f.framebuffer.width, f.framebuffer.height) == (640, 480)
    assert f.desktop_name  # x11vnc names the desktop after the display


def test_x11vnc_password(x11vnc_password: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(x11vnc_password)
    assert ids(r.rfb.security_types) == [2]
    assert r.rfb.auth_required is True


def test_xtightvnc_password(xtightvnc: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(xtightvnc)
    f = r.rfb
    assert r.state is State.VNC, r.error
    assert ids(f.security_types) == [2, 16]
    assert [t.name for t in f.security_types] == ["VNC Authentication", "Tight"]
    assert f.tight is not None
    assert [(c.code, c.vendor, c.signature) for c in f.tight.auth] == [(2, "STDV", "VNCAUTH_")]
    assert f.auth_required is True
    assert f.desktop_name is None


def test_xtightvnc_no_password(xtightvnc_none: servers.VncServer, probe_once: Any) -> None:
    r = probe_once(xtightvnc_none)
    f = r.rfb
    assert ids(f.security_types) == [1, 16]
    assert f.auth_required is False
    assert f.security_result == "ok"
    assert (f.framebuffer.width, f.framebuffer.height) == (640, 480)
    assert "tight-none" in f.desktop_name


def test_closed_port_is_closed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = asyncio.run(probe(Target("127.0.0.1", port), ProbeOptions(timeout=2)))
    assert r.state is State.CLOSED


def _cli_scan(port: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p", f"5800,5900-5910,{port}",
         "-o", "json", "--timeout", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_four_full_scans_never_trip_tigervnc_blacklist(vnc_server_factory: Any) -> None:
    """TigerVNC blocks an address after 5 unauthenticated connections; we use one per scan."""
    server = vnc_server_factory("tigervnc-default", desktop="lockout")
    for attempt in range(4):
        doc = _cli_scan(server.port)
        (svc,) = [s for s in doc["services"] if s["port"] == server.port]
        assert svc["state"] == "vnc", (attempt, svc)
        assert [t["id"] for t in svc["rfb"]["security_types"]] == [19, 2]
        assert [t["id"] for t in svc["rfb"]["vencrypt"]["subtypes"]] == [258, 2]
    # The server does blacklist: two more bare connections and the next probe is refused,
    # which we report as `blacklisted` with the server's own reason.
    for _ in range(2):
        with socket.create_connection((server.host, server.port), timeout=3) as s:
            s.recv(12)
    r = asyncio.run(probe(Target(server.host, server.port), ProbeOptions(timeout=3)))
    assert r.state is State.BLACKLISTED
    assert r.rfb.failure_reason == "Too many security failures"
    assert r.rfb.security_types == ()
