"""Unit tests of the product fingerprint: every signature of data/products.toml has a fixture.

Fixtures come from three places, each turned into a `ServiceResult` by the probe's own fact
recording (`probe.Session`), never by hand-written facts:
* REAL transcripts (`tests/transcripts/*.json`, recorded from TigerVNC 1.12, x11vnc 0.9.16 and
  Xtightvnc 1.3.10), replayed with the recorded client's choices;
* the fuzz corpus (`fuzz/corpus/`) and bytes measured here (QEMU 7.2);
* byte streams built from the handshakes documented in docs/rfb.md, for products
  that cannot run here (RealVNC, UltraVNC, macOS, VirtualBox, TurboVNC); each cites its source.
`test_every_signature_has_a_fixture` fails when a signature is added without a fixture.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from vncaudit import fingerprint, rfb
from vncaudit.models import Product, ServiceResult, State
from vncaudit.payloads import (
    ActiveChecks,
    AuthCheck,
    HandshakeRecord,
    WebFrontEnd,
    WebSocketEndpoint,
)
from vncaudit.probe import ProbeOptions
from vncaudit.websocket import HttpResponse, identify_http

from rfb_helpers import banner, cap, drive_events, new_session, reason, server_init, type_list, u32

ROOT = Path(__file__).resolve().parent.parent
TRANSCRIPTS = ROOT / "tests" / "transcripts"
CORPUS = ROOT / "fuzz" / "corpus"


# -- building results -------------------------------------------------------------------------


class _Choices:
    """Stands in for the session's client while a transcript is replayed: the session records
    facts as in a probe, while the real client makes the recorded client's choices."""

    def __init__(self, real: rfb.RfbClient) -> None:
        self.real = real

    @property
    def state(self) -> rfb.State:
        return self.real.state

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None  # select_*, send_client_init: the replay decides


def _renamed(result: ServiceResult, name: str) -> ServiceResult:
    assert result.rfb is not None
    return replace(result, rfb=replace(result.rfb, desktop_name=name))


def replay(name: str) -> ServiceResult:
    """A recorded transcript as the probe would record it, with the recorded choices."""
    doc = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    server = b"".join(bytes.fromhex(e["hex"]) for e in doc["exchanges"] if e["dir"] == "s2c")
    recorded = b"".join(bytes.fromhex(e["hex"]) for e in doc["exchanges"] if e["dir"] == "c2s")
    cv = doc["client_version"]
    client = rfb.RfbClient(client_version=(int(cv[:3]), int(cv[4:])) if cv else None)
    session = new_session()
    session.client = _Choices(client)  # type: ignore[assignment]
    sent = bytearray()

    def more(n: int) -> bytes | None:
        want = recorded[len(sent) : len(sent) + n]
        return want if len(want) == n else None

    client.receive_data(server)
    client.receive_data(b"")
    while client.their_turn:
        event = client.next_event()
        if event is rfb.NEED_DATA:
            break
        session.on_event(event)  # type: ignore[arg-type]
        if isinstance(event, rfb.StartTls):
            client.tls_established()
        elif isinstance(event, rfb.SecurityTypes) and not event.server_chosen:
            if (pick := more(1)) is None:
                break
            client.select_security_type(pick[0])
            session.facts["selected_type"] = pick[0]
        elif isinstance(event, rfb.VeNCryptSubtypes):
            if (pick := more(4)) is None:
                break
            client.select_vencrypt_subtype(int.from_bytes(pick, "big"))
        elif isinstance(event, rfb.TightCapabilities) and client.state is rfb.State.TIGHT_CHOOSE:
            if (pick := more(4)) is None:
                break
            client.select_tight_auth(int.from_bytes(pick, "big"))
        elif not isinstance(event, rfb.ServerVersion | rfb.SecurityTypes | rfb.TightCapabilities
                            | rfb.SecurityResult):
            break
        sent += client.data_to_send()
        if client.state is rfb.State.CLIENT_INIT and (init := more(1)) is not None:
            client.send_client_init(shared=init == b"\x01")
            sent += client.data_to_send()
    sent += client.data_to_send()
    if cv is not None:  # None: the server refused before the recording client answered
        assert bytes(sent) == recorded[: len(sent)], "replay diverged from the recording"
    return session.result(0.0)


def stream(*chunks: bytes, options: ProbeOptions | None = None) -> ServiceResult:
    """What the probe records when a server sends *chunks* (the probe's own decisions)."""
    _, _, session = drive_events(list(chunks), options)
    return session.result(0.0)


def held(*chunks: bytes) -> ServiceResult:
    """What the probe records when a server sends *chunks*, then nothing until the deadline."""
    session = new_session()
    client = session.client
    for chunk in chunks:
        client.receive_data(chunk)
        while (event := client.next_event()) is not rfb.NEED_DATA:
            assert session.on_event(event)  # type: ignore[arg-type]
    session.deadline_reached()
    return session.result(0.0)


def corpus(name: str) -> ServiceResult:
    # fuzz/harness.py format: a flags byte, a fragmentation-seed byte, then the server stream.
    return stream((CORPUS / name).read_bytes()[2:])


def with_web(result: ServiceResult, *, status: int, headers: dict[str, str], body: bytes = b"",
             websocket: bool = True) -> ServiceResult:
    """Add the extra.web that websocket.probe_web records for this HTTP answer."""
    page = HttpResponse(status, "", tuple((k.lower(), v) for k, v in headers.items()), body)
    endpoint = WebSocketEndpoint("ws://127.0.0.1:6080/websockify", "/websockify", None,
                                 headers.get("Server"))
    return result.with_extra(web=WebFrontEnd("websocket" if websocket else None,
                                             identify_http(page),
                                             endpoint if websocket else None))


def none_server(name: bytes, version: tuple[int, int] = (3, 8)) -> ServiceResult:
    """A server offering only None, as TigerVNC/LibVNCServer/QEMU do (docs/rfb.md §1.5 trace)."""
    return stream(banner(*version) + type_list(1), u32(0) + server_init(name=name))


def failure(text: bytes, version: tuple[int, int] = (3, 8)) -> ServiceResult:
    """A count-0 list with a reason (RFB 3.7+), or the 3.3 word 0 with a reason."""
    zero = b"\x00\x00\x00\x00" if version == (3, 3) else b"\x00"
    return stream(banner(*version) + zero + reason(text))


def vencrypt(types: tuple[int, ...], subtypes: tuple[int, ...]) -> ServiceResult:
    """The probe picks 19, answers 0.2, reads ack 0 and the sub-type list (docs/rfb.md §3.1)."""
    sub = bytes([len(subtypes)]) + u32(*subtypes)
    return stream(banner() + type_list(*types), b"\x00\x02", b"\x00" + sub)


def tight(types: tuple[int, ...], caps: list[bytes], version: tuple[int, int] = (3, 8)) -> (
        ServiceResult):
    """The probe picks 16; no tunnels, then the auth capabilities (docs/rfb.md §4.2)."""
    return stream(banner(*version) + type_list(*types), u32(0) + u32(len(caps)) + b"".join(caps))


VNCAUTH = cap(2, b"STDV", b"VNCAUTH_")
# QEMU 7.2 (Debian 12) measured here: `qemu-system-x86_64 -nodefaults -display none
# -vnc 127.0.0.1:311 -S -machine accel=tcg -m 16 -name vncaudit-qemu`, one probe.
QEMU_72 = bytes.fromhex(
    "524642203030332e3030380a010100000000028001e02018000100ff00ff00ff1008000000000000001451454d"
    "552028766e6361756469742d71656d7529"
)

# x11vnc 0.9.16 (Debian 12) `-ssl TMP` measured here: `-rfbauth F`, then `-nopw`, one probe each.
X11VNC_SSL = bytes.fromhex("524642203030332e3030380a021312000200020000010200000105")
X11VNC_SSL_NOPW = bytes.fromhex("524642203030332e3030380a02131200020002000001010000010401")


def _chunks(data: bytes) -> list[bytes]:
    """A VeNCrypt handshake as the server sent it, one turn per chunk: banner, list, version,
    ack with the sub-types (and the sub-type ack after them, when there is one)."""
    n = 1 + data[12]
    cut = [12, 12 + n, 14 + n, 16 + n + 4 * data[15 + n]]
    return [data[a:b] for a, b in zip([0, *cut], [*cut, len(data)], strict=True) if a < b]


# -- the fixture table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], ServiceResult]
    name: str  # expected product ("unknown" included)
    version: str | None = None
    sigs: tuple[str, ...] = ()  # signatures that must match (rfb and web layers)
    evidence: tuple[str, ...] = ()  # substrings that must appear in the evidence
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    # ---- real transcripts (TigerVNC 1.12.0, x11vnc 0.9.16, Xtightvnc 1.3.10; Debian 12)
    Case("tigervnc-default-38", lambda: replay("tigervnc-default-38"), "TigerVNC", None,
         ("tigervnc-default", "tigervnc-vencrypt-classic-subtypes"),
         ("security types [19, 2] in this order", "VeNCrypt sub-types [258, 2] in this order")),
    Case("tigervnc-vencrypt-38", lambda: replay("tigervnc-vencrypt-38"), "TigerVNC", None,
         ("tigervnc-vencrypt-explicit", "tigervnc-vencrypt-classic-subtypes"),
         ("duplicate security types: 19,19,2",)),
    Case("tigervnc-blacklisted", lambda: replay("tigervnc-blacklisted"), "unknown", None,
         ("tigervnc-blacklisted", "realvnc-4-blacklisted"),
         ("failure text 'Too many security failures'", "TigerVNC", "RealVNC")),
    # QueryConnect refusals after None was selected: their texts are TigerVNC's own
    Case("tigervnc-queryconnect-38", lambda: replay("tigervnc-queryconnect-38"), "TigerVNC",
         None, ("tigervnc-query-refused", "tigervnc-none"),
         ("failure text 'The attempt to prompt the user to accept the connection failed'",)),
    Case("tigervnc-queryconnect-novncconfig-38",
         lambda: replay("tigervnc-queryconnect-novncconfig-38"), "TigerVNC", None,
         ("tigervnc-query-refused",)),
    Case("x0vncserver-queryconnect-38", lambda: replay("x0vncserver-queryconnect-38"),
         "TigerVNC", None, ("tigervnc-query-refused",),
         ("failure text 'Connection rejected by local user'",)),
    Case("tigervnc-none-38", lambda: replay("tigervnc-none-38"), "unknown", None,
         ("tigervnc-none", "libvncserver-none", "qemu-none"), ("candidates",)),
    Case("tigervnc-vncauth-38", lambda: replay("tigervnc-vncauth-38"), "unknown", None,
         ("tigervnc-vncauth", "libvncserver-vncauth", "qemu-vncauth", "realvnc-4-free"),
         ("weak evidence", "TigerVNC", "LibVNCServer", "QEMU", "RealVNC")),
    Case("x11vnc-none-38", lambda: replay("x11vnc-none-38"), "x11vnc", None,
         ("x11vnc-desktop", "x11vnc-desktop-libvncserver", "libvncserver-none",
          "libvncserver-true-colour-ff"), ("desktop name 'vm:40'",)),
    # x11vnc -desktop NAME: the name does not tell, LibVNCServer's 0xff true-colour byte does.
    Case("x11vnc-none-38-renamed", lambda: _renamed(replay("x11vnc-none-38"), "lab-desktop"),
         "LibVNCServer", None, ("libvncserver-true-colour-ff", "libvncserver-none"),
         ("ServerInit true-colour flag 0xff",)),
    Case("x11vnc-password-38", lambda: replay("x11vnc-password-38"), "unknown", None,
         ("libvncserver-vncauth",)),
    Case("xtightvnc-38", lambda: replay("xtightvnc-38"), "TightVNC", None,
         ("tightvnc-2-vncauth", "tightvnc-1.3-debian-vncauth", "tightvnc-tight-vncauth-only",
          "turbovnc-vnc-only"),
         ("Tight auth capability STDV VNCAUTH_", "version not decided: 1.3 or 2",
          "next candidate: TurboVNC")),
    Case("xtightvnc-37", lambda: replay("xtightvnc-37"), "TightVNC", None,
         ("tightvnc-tight-vncauth-only",)),
    Case("xtightvnc-none-38", lambda: replay("xtightvnc-none-38"), "TightVNC", "1.3",
         ("tightvnc-1.3-desktop", "tightvnc-1.3-debian-none", "tightvnc-2-none"),
         ("desktop name \"root's tight-none desktop (vm:40)\"",)),
    Case("xtightvnc-none-list-38", lambda: replay("xtightvnc-none-list-38"), "TightVNC", "1.3",
         ("tightvnc-1.3-desktop",)),
    # ---- real transcripts (vino 3.22.0, wayvnc 0.5.0 / neatvnc 0.5.4; Debian 12)
    Case("vino-37", lambda: replay("vino-37"), "GNOME vino", None, ("vino-tls-first",),
         ("banner RFB 003.007", "security types start with [18]")),
    Case("vino-noprompt-plain-37", lambda: replay("vino-noprompt-plain-37"), "GNOME vino", None,
         ("vino-tls-first",)),
    Case("vino-password-37", lambda: replay("vino-password-37"), "GNOME vino", None,
         ("vino-tls-first",)),
    Case("vino-33", lambda: replay("vino-33"), "GNOME vino", None, ("vino-33-failure",)),
    Case("wayvnc-38", lambda: replay("wayvnc-38"), "wayvnc", None, ("wayvnc-desktop",),
         ("desktop name 'WayVNC'",)),
    Case("wayvnc-auth-38", lambda: replay("wayvnc-auth-38"), "neatvnc", "< 0.9",
         ("neatvnc-x509plain-only",), ("VeNCrypt sub-types [262] in this order", "QEMU")),
    Case("wayvnc-37", lambda: replay("wayvnc-37"), "neatvnc", "< 0.9",
         ("neatvnc-unsupported-version",)),
    # docs/rfb.md §6.2 neatvnc 0.9+ (src/server.c init_security_types), with and without TLS
    Case("neatvnc-0.9-tls", lambda: vencrypt((19, 129, 5, 30), (262,)), "neatvnc", ">= 0.9",
         ("neatvnc-rsa-aes-apple-dh",)),
    Case("neatvnc-0.9-rsa", lambda: stream(banner() + type_list(129, 5, 30, 2)), "neatvnc",
         ">= 0.9", ("neatvnc-rsa-aes-apple-dh",)),
    Case("neatvnc-name", lambda: none_server(b"Neat VNC"), "neatvnc", None,
         ("neatvnc-desktop",)),
    # RSA-AES without Apple DH (neatvnc's require-encryption, wayvnc's default with
    # enable_auth) is what TigerVNC offers with -SecurityTypes RA2_256,RA2: the bytes name neither
    Case("neatvnc-0.9-encrypted-only", lambda: stream(banner() + type_list(129, 5)), "unknown",
         None, ("tigervnc-ra2", "neatvnc-rsa-aes-required"), ("TigerVNC", "neatvnc")),
    # ... and with TLS credentials VeNCrypt [262] comes first: neatvnc's alone
    Case("neatvnc-0.9-tls-encrypted", lambda: vencrypt((19, 129, 5), (262,)), "neatvnc",
         ">= 0.9", ("neatvnc-vencrypt-rsa-aes",), ("VeNCrypt sub-types [262] in this order",)),
    # ---- measured here / fuzz corpus
    Case("qemu-7.2-none", lambda: stream(QEMU_72), "QEMU", None, ("qemu-desktop", "qemu-none"),
         ("desktop name 'QEMU (vncaudit-qemu)'",)),
    # x11vnc 0.9.16 -ssl TMP (Debian 12) measured here, one probe: with -rfbauth [19, 18] and
    # VeNCrypt [258, 261]; with -nopw [19, 18] and [257, 260] (its anonymous TLS then failed)
    Case("x11vnc-ssl", lambda: stream(*_chunks(X11VNC_SSL)), "x11vnc", None,
         ("x11vnc-ssl", "x11vnc-anontls-38"), ("security types [19, 18] in this order",)),
    Case("x11vnc-ssl-nopw", lambda: stream(*_chunks(X11VNC_SSL_NOPW)[:4],
                                           options=ProbeOptions(tls=False)), "x11vnc", None,
         ("x11vnc-ssl", "x11vnc-anontls-38")),
    # x11vnc -ssl TMP -anontls sole (src/sslhelper.c: ANONTLS_SOLE sends [18] alone)
    Case("x11vnc-anontls-only", lambda: stream(banner() + type_list(18),
                                               options=ProbeOptions(tls=False)), "x11vnc", None,
         ("x11vnc-anontls-38",)),
    Case("tigervnc-xvnc-default-name", lambda: none_server(b"root@vm"), "TigerVNC", None,
         ("tigervnc-xvnc-desktop", "tigervnc-none"), ("desktop name 'root@vm'",)),
    Case("macos-corpus", lambda: corpus("apple"), "macOS Screen Sharing", None,
         ("macos-banner", "macos-ard-types"), ("banner RFB 003.889",)),
    Case("ultravnc-3.14-mslogon", lambda: corpus("ultra-3.14"), "UltraVNC", None,
         ("ultravnc-singleclick-banner", "ultravnc-mslogon-legacy-33"),
         ("banner RFB 003.014",)),
    # ---- documented handshakes (docs/rfb.md)
    # docs/rfb.md §6.2 TigerVNC: vncserver's "-desktop host:N (user)"
    Case("tigervnc-vncserver-name", lambda: none_server(b"vm:1 (root)"), "TigerVNC", None,
         ("tigervnc-xvnc-desktop",)),
    # docs/rfb.md §6.2 TigerVNC: RA2 types (5, 6, 129, 130) with nettle, on RFB 3.8
    Case("tigervnc-ra2", lambda: stream(banner() + type_list(5, 6, 129, 130, 2)), "TigerVNC",
         None, ("tigervnc-ra2",)),
    # docs/rfb.md §6.2 TigerVNC "-SecurityTypes X509Vnc" vs QEMU tls-creds: [19] + one sub-type
    Case("vencrypt-single", lambda: vencrypt((19,), (261,)), "unknown", None,
         ("tigervnc-vencrypt-single", "qemu-vencrypt-single"), ("TigerVNC", "QEMU")),
    # docs/rfb.md §6.2 RealVNC 5+: Raspberry Pi list (vncdotool #248, libvncserver #135)
    Case("realvnc-pi", lambda: stream(banner(5, 0) + type_list(13, 5, 6, 130, 192)), "RealVNC",
         ">= 5.3", ("realvnc-5-banner", "realvnc-5-types", "realvnc-proprietary-types"),
         ("banner RFB 005.000",)),
    # docs/rfb.md §6.2 RealVNC 6.9.1 on Windows (noVNC #1651)
    Case("realvnc-windows", lambda: stream(banner(5, 0) + type_list(13, 133, 5, 129, 192)),
         "RealVNC", ">= 5.3", ("realvnc-5-types",)),
    # docs/rfb.md §2: 13/133/192 are RealVNC's own, whatever the banner says
    Case("realvnc-types-only", lambda: stream(banner() + type_list(13, 5)), "RealVNC", ">= 5",
         ("realvnc-proprietary-types",)),
    # docs/rfb.md §6.1: RFB 004.000 / 004.001 (nmap probes; noVNC)
    Case("realvnc-4.0", lambda: stream(banner(4, 0) + type_list(2)), "RealVNC", "4",
         ("realvnc-4-personal",), ("Intel AMT",)),
    Case("realvnc-4.1", lambda: stream(banner(4, 1) + type_list(2)), "RealVNC", "4",
         ("realvnc-4-enterprise",)),
    # docs/rfb.md §6.2 RealVNC 4.x licence failure (nmap probes)
    Case("realvnc-licence", lambda: failure(
        b"VNC Server is not licensed correctly.\n\nConnections will be prohibited until a valid "
        b"license key is applied.", (3, 3)), "RealVNC", None, ("realvnc-licence",)),
    # the same refusal after an RFB 3.8 banner, still in the 3.3 form (nmap-service-probes:
    # '^RFB 003\.00(\d)\n\0\0\0\0\0\0\0jServer license key is missing, ...')
    Case("realvnc-licence-38", lambda: stream(banner() + u32(0) + reason(
        b"Server license key is missing, invalid or has expired.\nVisit http://www.realvnc.com "
        b"to purchase a licence.")), "RealVNC", None, ("realvnc-licence",),
        ("failure text 'Server license key is missing",)),
    # docs/rfb.md §6.2/§8.1: Java viewer page with "Server: RealVNC/4.1.3" (nmap vnc-http)
    Case("realvnc-http", lambda: with_web(
        ServiceResult("127.0.0.1", 5800, State.OPEN_NOT_VNC), status=200,
        headers={"Server": "RealVNC/4.1.3"}, websocket=False,
        body=b"<APPLET CODE=vncviewer/VNCViewer.class ARCHIVE=VncViewer.jar>"
             b"<PARAM NAME=PORT VALUE=5900></APPLET>"),
        "RealVNC", "4.1.3", ("realvnc-http",), ("HTTP Server header 'RealVNC/4.1.3'",)),
    Case("tigervnc-http", lambda: with_web(
        ServiceResult("127.0.0.1", 5800, State.OPEN_NOT_VNC), status=200,
        headers={"Server": "TigerVNC/1.12.0"}, websocket=False), "TigerVNC", "1.12.0",
        ("tigervnc-http",)),
    # docs/rfb.md §6.2 KasmVNC: its web server's constant header names it, not its release
    Case("kasmvnc-http", lambda: with_web(
        ServiceResult("127.0.0.1", 8444, State.OPEN_NOT_VNC), status=200,
        headers={"Server": "KasmVNC/4.0"},
        body=b"<html><head><title>KasmVNC</title></head></html>"), "KasmVNC", None,
        ("kasmvnc-http",), ("HTTP Server header 'KasmVNC/4.0'",)),
    # TightVNC 1.3.9+ for Windows: RFB 3.8 and its no-password refusal (one space), which
    # UltraVNC words with none or two (tests/derive_transcripts.py)
    Case("tightvnc-1.3-windows-nopassword", lambda: replay("tightvnc-1.3-windows-nopassword-38"),
         "TightVNC", "1.3", ("tightvnc-1.3-no-password",)),
    Case("ultravnc-1.3-no-password", lambda: failure(
        b"This server does not have a valid password enabled.  Until a password is set, "
        b"incoming connections cannot be accepted."), "UltraVNC", None, ("ultravnc-failure",)),
    # the refusals both inherited from WinVNC: the bytes cannot tell them apart
    Case("winvnc-loopback", lambda: failure(b"Local loop-back connections are disabled."),
         "unknown", None, ("ultravnc-winvnc-rejected", "tightvnc-1.3-winvnc-rejected"),
         ("UltraVNC", "TightVNC")),
    # docs/rfb.md §6.2 TightVNC 2.x reject reason (sent as a 0-count list)
    Case("tightvnc-2-loopback", lambda: failure(b"Sorry, loopback connections are not enabled"),
         "TightVNC", "2", ("tightvnc-2-rejected",)),
    # fuzz corpus tight-auth / docs/rfb.md §6.2 [TIGHT13]: RFB 3.7 with Tight
    Case("tightvnc-1.3-rfb37", lambda: tight((16,), [VNCAUTH], (3, 7)), "TightVNC", "1.3",
         ("tightvnc-1.3-rfb37",)),
    # docs/rfb.md §6.2 TurboVNC default [19, 2, 16]; VeNCrypt sub-types from its secTypes table
    Case("turbovnc-default", lambda: vencrypt((19, 2, 16), (258, 259, 261, 262, 2, 256)),
         "TurboVNC", None, ("turbovnc-default",), ("security types [19, 2, 16] in this order",)),
    # ---- source-derived transcripts (tests/derive_transcripts.py; TurboVNC auth.c, vncserver.in)
    Case("turbovnc-default-38", lambda: replay("turbovnc-default-38"), "TurboVNC", None,
         ("turbovnc-default", "turbovnc-vencrypt-subtypes"),
         ("VeNCrypt sub-types include [2, 256]",)),
    Case("turbovnc-nopam-38", lambda: replay("turbovnc-nopam-38"), "TurboVNC", None,
         ("turbovnc-default", "turbovnc-vencrypt-subtypes")),
    Case("turbovnc-none-38", lambda: replay("turbovnc-none-38"), "TurboVNC", None,
         ("turbovnc-desktop", "tightvnc-2-none"),
         ("desktop name 'TurboVNC: vm:1 (root)'", "next candidate: TightVNC")),
    # docs/rfb.md §4.3 TurboVNC Tight caps (VNCAUTH_ plus Unix login)
    Case("turbovnc-tight", lambda: tight((2, 16), [VNCAUTH, cap(129, b"TGHT", b"ULGNAUTH")]),
         "TurboVNC", None, ("turbovnc-tight-caps", "turbovnc-vnc-only"),
         ("Tight auth capability TGHT ULGNAUTH",)),
    # docs/rfb.md §6.2 TurboVNC lockout (two spaces)
    Case("turbovnc-blocked", lambda: failure(
        b"Too many authentication failures.  Client temporarily blocked"), "TurboVNC", None,
        ("turbovnc-blocked",)),
    # docs/rfb.md §6.2 LibVNCServer default name and failure strings
    Case("libvncserver-name", lambda: none_server(b"LibVNCServer"), "LibVNCServer", None,
         ("libvncserver-desktop",)),
    Case("libvncserver-no-auth-mode", lambda: failure(b"No authentication mode is registered!"),
         "LibVNCServer", None, ("libvncserver-failure",)),
    # docs/rfb.md §6.2 VirtualBox VNC extension pack (VBoxVNC.cpp)
    Case("virtualbox", lambda: none_server(b"VBoxVNC"), "VirtualBox", None,
         ("virtualbox-desktop",), ("desktop name 'VBoxVNC'",)),
    # docs/rfb.md §6.2/§6.3 QEMU sasl=on: the single type 20
    Case("qemu-sasl", lambda: stream(banner() + type_list(20)), "QEMU", None, ("qemu-sasl",)),
    Case("qemu-plain-name", lambda: none_server(b"QEMU"), "QEMU", None, ("qemu-desktop",)),
    # QEMU 7.2 measured here: -object tls-creds-anon,... -vnc ...,tls-creds=tls0,sasl=on
    Case("qemu-tls-sasl", lambda: vencrypt((19,), (264,)), "QEMU", None,
         ("qemu-vencrypt-sasl", "qemu-vencrypt-single"), ("VeNCrypt sub-types include [264]",)),
    # docs/rfb.md §6.2 UltraVNC AuthenticateClient lists; rfbproto PR #75
    Case("ultravnc-password", lambda: stream(banner() + type_list(17, 117, 2)), "UltraVNC",
         ">= 1.4.0.1", ("ultravnc-current",), ("security types start with [17, 117]",)),
    # UltraVNC 1.0.9 to 1.3.5.1: 17 alone before the auth type (tests/derive_transcripts.py)
    Case("ultravnc-1.3-password-38", lambda: replay("ultravnc-1.3-password-38"), "UltraVNC",
         "< 1.3.5.2", ("ultravnc-17-only",), ("security types start with [17]",)),
    Case("ultravnc-1.3-mslogon", lambda: stream(banner() + type_list(17, 113)), "UltraVNC",
         "< 1.3.5.2", ("ultravnc-17-only", "ultravnc-mslogon")),
    Case("ultravnc-old", lambda: stream(banner() + type_list(17, 116, 2)), "UltraVNC",
         "< 1.4.0.1", ("ultravnc-old",)),
    Case("ultravnc-mslogon3", lambda: stream(banner() + type_list(17, 117, 118, 113)),
         "UltraVNC", ">= 1.4.0.1", ("ultravnc-mslogon", "ultravnc-current"),
         ("113 (MS-Logon II)",)),
    # docs/rfb.md §6.1 legacy UltraVNC banners: 3.4 (MS-Logon), 3.6; the probe answers 3.3
    Case("ultravnc-3.4", lambda: stream(banner(3, 4) + u32(2) + bytes(16)), "UltraVNC",
         "< 1.0.9", ("ultravnc-legacy-banner",)),
    Case("ultravnc-3.6", lambda: stream(banner(3, 6) + u32(2) + bytes(16)), "UltraVNC",
         "< 1.0.9", ("ultravnc-legacy-banner",)),
    Case("ultravnc-3.18", lambda: stream(banner(3, 18) + type_list(17, 117, 104)), "UltraVNC",
         ">= 1.4.0.1", ("ultravnc-scprompt-banner", "ultravnc-current")),
    Case("ultravnc-repeater", lambda: stream(b"RFB 000.000\n"), "UltraVNC", None,
         ("ultravnc-repeater",), ("Repeater",)),
    Case("ultravnc-no-password", lambda: failure(
        b"This server does not have a valid password enabled.Until a password is set, incoming "
        b"connections cannot be accepted."), "UltraVNC", None, ("ultravnc-failure",)),
    # docs/rfb.md §6.2 Apple: [30, 33, 36] (vm0-ai #35867) and [30, 35] (nmap vnc-info example)
    Case("macos-26", lambda: stream(banner(3, 889) + type_list(30, 33, 36)),
         "macOS Screen Sharing", None, ("macos-banner", "macos-ard-types")),
    # docs/rfb.md §6.2 Apple with the VNC password on: 2 among Apple's types (Termix PR #1313)
    Case("macos-vnc-password", lambda: stream(banner(3, 889) + type_list(30, 33, 36, 2, 35)),
         "macOS Screen Sharing", None, ("macos-banner", "macos-ard-types")),
    Case("macos-old", lambda: stream(banner(3, 889) + type_list(30, 35)),
         "macOS Screen Sharing", None, ("macos-ard-types",)),
    # docs/rfb.md §8.2/§8.4: noVNC page served by websockify --web, TigerVNC behind it
    Case("novnc-tigervnc", lambda: with_web(
        replay("tigervnc-default-38"), status=200,
        headers={"Server": "WebSockify Python/3.11.2"},
        body=b"<html><head><title>noVNC</title></head></html>"),
        "noVNC/websockify", None, ("novnc-page", "websockify-server", "tigervnc-default"),
        ("web front end: novnc", "backend TigerVNC")),
    # docs/rfb.md §8.2: websockify without --web answers GET / with 405
    Case("websockify-bare", lambda: with_web(
        replay("x11vnc-password-38"), status=405, headers={"Server": "WebSockify Python/3.11.2"}),
        "noVNC/websockify", None, ("websockify-kind", "websockify-server"),
        ("backend not identified",)),
    # docs/rfb.md §6.1 banners nmap names (nmap-service-probes), whatever follows them
    Case("aten-kvm", lambda: stream(banner(9, 123)), "ATEN KVM-over-IP", None,
         ("aten-kvm-banner",), ("banner RFB 009.123",)),
    # docs/rfb.md §4.3 ATEN iKVM: 24 bytes of its own after the Tight selection
    Case("aten-kvm-tight", lambda: stream(
        banner() + type_list(16), bytes.fromhex("ffff0000") + bytes(range(1, 21))),
        "ATEN KVM-over-IP", None, ("aten-kvm-tight",), ("ATEN iKVM's variant",)),
    Case("ms-virtual-server", lambda: stream(banner(103, 6) + type_list(2)),
         "Microsoft Virtual Server", None, ("ms-virtual-server-banner",)),
    # ---- negative: nothing or nothing decisive
    # x11vnc -allow refusing the address (measured): the banner, then the close
    Case("refused-after-banner", lambda: stream(banner()), "unknown", None,
         ("libvncserver-refused-after-banner",), ("weak evidence", "LibVNCServer")),
    # gnome-remote-desktop's 'prompt' access, x11vnc -accept: the banner, then nothing
    # (measured on x11vnc in tests/test_fingerprint_realservers.py)
    Case("held-after-banner", lambda: held(banner()), "unknown", None,
         ("libvncserver-held-after-banner",), ("weak evidence", "LibVNCServer")),
    Case("xvp-only", lambda: stream(banner() + type_list(22)), "unknown", None, (),
         ("no signature matched",)),
    Case("closed", lambda: ServiceResult("127.0.0.1", 5900, State.CLOSED), "unknown"),
    Case("server-chosen-33", lambda: replay("x11vnc-password-33"), "unknown", None, (),
         ("server chose type [2]",)),
    Case("tigervnc-33-list", lambda: replay("tigervnc-none-33"), "unknown"),
    Case("custom-name-none", lambda: none_server(b"office"), "unknown", None,
         ("tigervnc-none", "libvncserver-none", "qemu-none")),
]


def matched_ids(result: ServiceResult) -> set[str]:
    return {m.signature.id for layer in fingerprint.LAYERS
            for m in fingerprint.explain(result, layer)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case: Case) -> None:
    result = case.build()
    product = fingerprint.identify(result)
    assert (product.name, product.version) == (case.name, case.version), product
    assert set(case.sigs) <= matched_ids(result)
    text = " | ".join(product.evidence)
    for want in case.evidence:
        assert want in text, (want, product.evidence)
    if product.name == "unknown":
        assert product.confidence == 0.0 and product.version is None
    else:
        assert 0.0 < product.confidence <= 0.98


def test_every_signature_has_a_fixture() -> None:
    ids = {s.id for s in fingerprint.shipped().signatures}
    covered = {sid for case in CASES for sid in case.sigs}
    assert covered <= ids, f"fixtures name signatures that do not exist: {covered - ids}"
    assert ids <= covered, f"signatures without a fixture: {sorted(ids - covered)}"


def test_every_signature_cites_a_source() -> None:
    for sig in fingerprint.shipped().signatures:
        assert sig.source, sig.id


# -- the matcher itself -----------------------------------------------------------------------

TINY = """
[scoring]
scale = 1.0
min_score = 1.0
min_margin = 0.5
max_confidence = 0.98
common_banners = ["3.8"]
[weights]
banner = 1.5
banner_common = 0.25
types = 0.5
desktop = 1.0
"""


def tiny(*sigs: str) -> fingerprint.Signatures:
    return fingerprint.load(TINY + "".join(sigs))


SIG_A = """
[[signature]]
id = "a"
product = "A"
source = "test"
match.banner = ["3.889"]
"""


def test_equal_evidence_for_two_products_is_unknown() -> None:
    result = stream(banner(3, 889) + type_list(30))
    alone = fingerprint.identify(result, tiny(SIG_A))
    assert alone.name == "A" and alone.confidence == pytest.approx(0.78, abs=0.01)
    both = fingerprint.identify(result, tiny(SIG_A, SIG_A.replace('"a"', '"b"')
                                             .replace('"A"', '"B"')))
    assert both.name == "unknown"
    assert "candidates: A (score 1.50), B (score 1.50)" in both.evidence[-1]


def test_more_specific_match_wins_and_confidence_grows_with_the_margin() -> None:
    extra = """
[[signature]]
id = "b"
product = "B"
source = "test"
match.banner = ["3.889"]
match.types = [30]
"""
    result = stream(banner(3, 889) + type_list(30))
    product = fingerprint.identify(result, tiny(SIG_A, extra))
    assert product.name == "B"
    # B: 1.5 + 0.5, A: 1.5 -> margin 0.5
    assert product.confidence == pytest.approx(1 - 2.718281828 ** -0.5, abs=0.01)
    assert "next candidate: A (score 1.50 vs 2.00)" in product.evidence


def test_weak_evidence_is_unknown() -> None:
    weak = """
[[signature]]
id = "w"
product = "W"
source = "test"
match.banner = ["3.8"]
"""
    product = fingerprint.identify(stream(banner() + type_list(2)), tiny(weak))
    assert product.name == "unknown" and "weak evidence" in product.evidence[-1]


def test_three_three_choice_is_not_a_list() -> None:
    sig = """
[[signature]]
id = "list"
product = "L"
source = "test"
match.types = [2]
weights.types = 3.0
"""
    listed = stream(banner() + type_list(2))
    chosen = stream(banner(3, 3) + u32(2) + bytes(16))
    assert fingerprint.identify(listed, tiny(sig)).name == "L"
    assert fingerprint.identify(chosen, tiny(sig)).name == "unknown"


@pytest.mark.parametrize(
    "bad",
    [
        '[[signature]]\nid = "x"\nproduct = "X"\nmatch.colour = ["red"]\n',
        '[[signature]]\nid = "x"\nproduct = "X"\n',
        '[[signature]]\nid = "x"\nproduct = "X"\nmatch.desktop = "("\n',
        '[[signature]]\nid = "x"\nproduct = "X"\nlayer = "tcp"\nmatch.banner = ["3.8"]\n',
        '[[signature]]\nid = "x"\nproduct = "X"\nmatch.vencrypt = [258]\n',
        SIG_A + SIG_A,
    ],
    ids=["unknown-clause", "no-clauses", "bad-regex", "bad-layer", "no-weight", "duplicate-id"],
)
def test_malformed_signature_files_are_rejected(bad: str) -> None:
    with pytest.raises(fingerprint.SignatureError):
        fingerprint.load(TINY + bad)


def test_shipped_file_loads_once_and_result_is_a_product() -> None:
    assert fingerprint.shipped() is fingerprint.shipped()
    product = fingerprint.identify(replay("tigervnc-default-38"))
    assert isinstance(product, Product)
    assert Product.from_dict(product.to_dict()) == product


def test_active_check_desktop_name_is_used() -> None:
    # A ServerInit read by an active check after authenticating (extra.active.auth).
    result = replay("tigervnc-vncauth-38")
    assert fingerprint.identify(result).name == "unknown"
    authed = result.with_extra(active=ActiveChecks(auth=AuthCheck(
        HandshakeRecord("ok", desktop_name="QEMU (vm1)"), "********", False)))
    product = fingerprint.identify(authed)
    assert product.name == "QEMU" and "desktop name 'QEMU (vm1)'" in product.evidence


def test_the_memo_gives_each_server_its_own_desktop_name() -> None:
    """Two QEMU VMs differ only in -name: the second is answered from the memo, and its
    evidence must name its own desktop, not the first one's."""
    first = stream(QEMU_72)  # "QEMU (vncaudit-qemu)"
    assert first.rfb is not None
    second = replace(first, rfb=replace(first.rfb, desktop_name="QEMU (vncaudit-vm)"))
    data = fingerprint.load(
        resources.files("vncaudit").joinpath("data/products.toml").read_text("utf-8"))
    a, b = fingerprint.identify(first, data), fingerprint.identify(second, data)
    assert len(data.memo.data) == 1  # one entry: the names match the same patterns
    assert "desktop name 'QEMU (vncaudit-qemu)'" in a.evidence
    assert "desktop name 'QEMU (vncaudit-vm)'" in b.evidence
    assert not any("vncaudit-qemu" in e for e in b.evidence), b.evidence


@pytest.mark.slow  # CACHE_SIZE + 10 identifications: about 3 s
def test_the_product_memo_is_bounded_and_per_signature_set() -> None:
    shipped = Path(fingerprint.__file__).parent / "data" / "products.toml"
    data = fingerprint.load(shipped.read_text("utf-8"))
    assert data.memo is not fingerprint.shipped().memo
    base = replay("tigervnc-blacklisted")
    assert base.rfb is not None
    for i in range(fingerprint.CACHE_SIZE + 10):
        rfb = replace(base.rfb, failure_reason=f"fail {i}") if base.rfb else None
        fingerprint.identify(replace(base, rfb=rfb), data)
    assert len(data.memo.data) == fingerprint.CACHE_SIZE
