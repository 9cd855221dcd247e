"""The product fingerprint against REAL servers (Debian packages) started on loopback.

Each server is probed ONCE with `vncaudit.probe.probe` (session servers through `probe_once`),
and `fingerprint.identify` must name it — or, where a single unauthenticated connection cannot
tell the products apart (RFB 3.8 with only [2], or only [1] and a custom desktop name), say
"unknown" and list the real product among the candidates.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from vncaudit import websocket as ws
from vncaudit.fingerprint import identify
from vncaudit.models import Product, ServiceResult, State, Target
from vncaudit.probe import ProbeOptions, probe

import servers

pytestmark = pytest.mark.realserver


def probe_fresh(server: servers.VncServer) -> ServiceResult:
    result = asyncio.run(probe(Target(server.host, server.port)))
    assert result.state is State.VNC, result.error
    return result


def evidence(product: Product) -> str:
    return " | ".join(product.evidence)


def assert_unknown_among(product: Product, *candidates: str) -> None:
    assert product.name == "unknown" and product.confidence == 0.0, product
    for name in candidates:
        assert name in evidence(product), (name, product.evidence)


def test_tigervnc_default(tigervnc_default: servers.VncServer, probe_once: Any) -> None:
    product = identify(probe_once(tigervnc_default))
    assert product.name == "TigerVNC" and product.confidence >= 0.9, product
    assert "security types [19, 2] in this order" in product.evidence
    assert "VeNCrypt sub-types [258, 2] in this order" in product.evidence


def test_tigervnc_vencrypt(tigervnc_vencrypt: servers.VncServer, probe_once: Any) -> None:
    result = probe_once(tigervnc_vencrypt)
    product = identify(result)
    assert product.name == "TigerVNC" and product.confidence >= 0.9, product
    assert "duplicate security types: 19,19,2" in evidence(product)


def test_tigervnc_none_default_desktop_name(vnc_server_factory: Any) -> None:
    result = probe_fresh(vnc_server_factory("tigervnc-none", desktop=None))
    product = identify(result)
    assert product.name == "TigerVNC", product
    assert f"desktop name {result.rfb.desktop_name!r}" in product.evidence
    assert "@" in result.rfb.desktop_name  # Xvnc's own default: user@host


def test_tigervnc_none_custom_name_is_not_guessed(
    tigervnc_none: servers.VncServer, probe_once: Any
) -> None:
    assert_unknown_among(identify(probe_once(tigervnc_none)), "TigerVNC", "LibVNCServer", "QEMU")


def test_tigervnc_vncauth_is_not_guessed(
    tigervnc_vncauth: servers.VncServer, probe_once: Any
) -> None:
    assert_unknown_among(identify(probe_once(tigervnc_vncauth)), "TigerVNC", "LibVNCServer")


def test_x11vnc_default_desktop_name(vnc_server_factory: Any) -> None:
    result = probe_fresh(vnc_server_factory("x11vnc-none", desktop=None))
    product = identify(result)
    assert product.name == "x11vnc", (product, result.rfb.desktop_name)


def test_x11vnc_password_is_not_guessed(
    x11vnc_password: servers.VncServer, probe_once: Any
) -> None:
    assert_unknown_among(identify(probe_once(x11vnc_password)), "LibVNCServer", "TigerVNC")


@pytest.mark.parametrize("kind", ["x11vnc-password", "x11vnc-none"])
def test_x11vnc_ssl(vnc_server_factory: Any, kind: str) -> None:
    """x11vnc -ssl waits 1.4 s for a TLS ClientHello, then speaks RFB 3.8 itself and offers
    VeNCrypt and anonymous TLS (18); docs/rfb.md §6.2 LibVNCServer/x11vnc."""
    if not servers.have("openssl"):
        pytest.skip("x11vnc -ssl TMP makes its certificate with openssl")
    server = vnc_server_factory(kind, extra_args=["-ssl", "TMP"])
    result = asyncio.run(probe(Target(server.host, server.port), ProbeOptions(timeout=8.0)))
    assert result.rfb is not None and [t.id for t in result.rfb.security_types] == [19, 18]
    product = identify(result)
    assert product.name == "x11vnc" and product.confidence >= 0.8, product
    assert "security types [19, 18] in this order" in product.evidence


def test_x11vnc_refusing_the_address(vnc_server_factory: Any) -> None:
    """x11vnc -allow (an address that is not ours) refuses through LibVNCServer's
    newClientHook, after the banner went out: a refusal, not a malformed server."""
    from vncaudit.probe import CLOSED_AFTER_VERSION

    server = vnc_server_factory("x11vnc-none", extra_args=["-allow", "192.0.2.1"])
    result = probe_fresh(server)
    assert result.rfb is not None and result.rfb.banner == "RFB 003.008\n"
    assert result.rfb.notes == (CLOSED_AFTER_VERSION,) and result.rfb.auth_required is None
    assert_unknown_among(identify(result), "LibVNCServer")


def test_x11vnc_asking_before_the_security_list(vnc_server_factory: Any) -> None:
    """x11vnc -accept runs its command inside LibVNCServer's newClientHook, after the banner
    went out and before any security type: the probe's deadline finds the server holding the
    client (as gnome-remote-desktop's 'prompt' does), which it says, instead of a bare
    timeout."""
    from vncaudit.probe import HELD_AFTER_VERSION

    server = vnc_server_factory("x11vnc-none", extra_args=["-accept", "sleep 30"])
    result = asyncio.run(probe(Target(server.host, server.port), ProbeOptions(timeout=1.5)))
    assert result.state is State.VNC, result.error
    assert result.rfb is not None and result.rfb.banner == "RFB 003.008\n"
    assert result.rfb.security_types == () and result.rfb.auth_required is None
    assert result.rfb.notes == (HELD_AFTER_VERSION,)
    assert result.error == "deadline of 1.5 s reached while awaiting security types"
    assert_unknown_among(identify(result), "LibVNCServer")


def test_xtightvnc_password(xtightvnc: servers.VncServer, probe_once: Any) -> None:
    product = identify(probe_once(xtightvnc))
    assert (product.name, product.version) == ("TightVNC", None), product
    assert "Tight auth capability STDV VNCAUTH_" in product.evidence
    assert "version not decided: 1.3 or 2" in product.evidence


def test_xtightvnc_none(xtightvnc_none: servers.VncServer, probe_once: Any) -> None:
    product = identify(probe_once(xtightvnc_none))
    assert (product.name, product.version) == ("TightVNC", "1.3"), product


def test_qemu(vnc_server_factory: Any) -> None:
    result = probe_fresh(vnc_server_factory("qemu", name="vncaudit-vm"))
    product = identify(result)
    assert product.name == "QEMU" and product.confidence >= 0.8, product
    assert "desktop name 'QEMU (vncaudit-vm)'" in product.evidence


def test_qemu_password_is_not_guessed(vnc_server_factory: Any) -> None:
    result = probe_fresh(vnc_server_factory("qemu-password"))
    assert [t.id for t in result.rfb.security_types] == [2]
    assert_unknown_among(identify(result), "QEMU", "TigerVNC", "LibVNCServer")


@pytest.mark.parametrize(("options", "subtype", "name"), [
    (("tls-creds=tls0",), 257, "QEMU"),  # TLSNone: anonymous TLS, then ServerInit "QEMU (...)"
    (("tls-creds=tls0", "sasl=on"), 264, "QEMU"),  # SASL inside TLS: QEMU's alone
    (("tls-creds=tls0", "password=on"), 258, "unknown"),  # TigerVNC -SecurityTypes TLSVnc too
])
def test_qemu_vencrypt(vnc_server_factory: Any, options: tuple[str, ...], subtype: int,
                       name: str) -> None:
    """QEMU with TLS credentials offers VeNCrypt alone with ONE sub-type (docs/rfb.md §6.2)."""
    server = vnc_server_factory("qemu", vnc_options=options, extra_args=[
        "-object", "tls-creds-anon,id=tls0,endpoint=server"])
    result = probe_fresh(server)
    assert result.rfb is not None and [t.id for t in result.rfb.security_types] == [19]
    assert result.rfb.vencrypt is not None
    assert [s.id for s in result.rfb.vencrypt.subtypes] == [subtype]
    product = identify(result)
    assert product.name == name, product
    if name == "unknown":
        assert_unknown_among(product, "QEMU", "TigerVNC")


def test_novnc_in_front_of_tigervnc(vnc_server_factory: Any, tmp_path: Path) -> None:
    from test_websocket import NOVNC, websockify

    if not Path(NOVNC, "vnc.html").exists():
        from conftest import _unavailable

        _unavailable(servers.ServerUnavailable("novnc", ["novnc"]))
    backend = vnc_server_factory("tigervnc-default", password=servers.DEFAULT_PASSWORD)
    with websockify(backend, NOVNC, tmp_path / "websockify.log") as front:
        result = asyncio.run(ws.probe_web(front, ProbeOptions(timeout=10)))
    assert result.state is State.VNC, result.error
    product = identify(result)
    assert product.name == "noVNC/websockify", product
    assert "backend TigerVNC" in evidence(product)


def test_x0vncserver_is_tigervnc(vnc_server_factory: Any) -> None:
    """x0vncserver (X0tigervnc) names the desktop user@host, as Xvnc does without -desktop."""
    product = identify(probe_fresh(vnc_server_factory("x0vncserver-none", desktop=None)))
    assert product.name == "TigerVNC", product
    assert any(e.startswith("desktop name '") and "@" in e for e in product.evidence), product


@pytest.mark.parametrize("kind", ["vino", "vino-noprompt-plain", "vino-password"])
def test_vino(vnc_server_factory: Any, kind: str) -> None:
    """vino is told by its RFB 3.7 banner and the TLS type 18 first, whatever its settings."""
    result = probe_fresh(vnc_server_factory(kind))
    product = identify(result)
    assert product.name == "GNOME vino" and product.confidence >= 0.8, product
    assert "security types start with [18]" in product.evidence


def test_wayvnc(vnc_server_factory: Any) -> None:
    product = identify(probe_fresh(vnc_server_factory("wayvnc")))
    assert product.name == "wayvnc" and product.confidence >= 0.8, product


def test_wayvnc_with_authentication_is_neatvnc(vnc_server_factory: Any) -> None:
    """enable_auth hides the desktop name; neatvnc's X509Plain-only VeNCrypt still tells."""
    result = probe_fresh(vnc_server_factory("wayvnc-auth"))
    assert result.rfb is not None and result.rfb.desktop_name is None
    product = identify(result)
    assert product.name == "neatvnc" and product.confidence >= 0.6, product
    assert "next candidate" in evidence(product)
