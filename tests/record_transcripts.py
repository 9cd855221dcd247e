"""Record real RFB handshake transcripts for parser unit tests (run by hand).

    python tests/record_transcripts.py [NAME ...]     # default: all

For each scenario it starts a FRESH real server (tests/servers.py) on loopback,
connects ONCE with a raw socket, plays the client side of the handshake and
saves every chunk to ``tests/transcripts/<name>.json``:

    {"server": kind, "command": [...], "client_version": "3.8",
     "exchanges": [{"dir": "s2c"|"c2s", "hex": "..."}, ...],
     "server_closed": bool, "notes": "..."}

Each s2c entry is everything the server sent after the preceding c2s entry until
it was idle for IDLE seconds (or closed), so one entry may hold several
messages: parsers must buffer.  No credentials are ever sent.

The blacklist scenario makes 6 bare connections (connect, read banner, close)
to a fresh TigerVNC and records the 6th.

Inside TLS (vino's type 18) the entries carry ``"tls": true`` and hold what went through the
TLS session (the plaintext RFB bytes), not the encrypted records. What a server does after
ServerInit (whether it answers one FramebufferUpdateRequest for an 8x8 rectangle) is kept
apart in ``after_init``, so ``exchanges`` stay a handshake the parser tests can replay.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import servers

OUT = Path(__file__).resolve().parent / "transcripts"
IDLE = 0.4
FIRST_BYTE_TIMEOUT = 5.0


class Recorder:
    def __init__(self, addr: tuple[str, int]) -> None:
        assert addr[0].startswith("127.") or addr[0] == "::1", addr
        self.sock: socket.socket = socket.create_connection(addr, timeout=FIRST_BYTE_TIMEOUT)
        self.exchanges: list[dict[str, Any]] = []
        self.after_init: list[dict[str, Any]] = []
        self.closed = False
        self.tls = False
        self.started = time.monotonic()

    def start_tls(self) -> None:
        """Anonymous TLS as vino's type 18 wants it (ADH, TLS 1.2 at most)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("aNULL:@SECLEVEL=0")
        self.sock = ctx.wrap_socket(self.sock)
        self.tls = True

    def _entry(self, direction: str, data: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"dir": direction, "hex": data.hex()}
        if self.tls:
            entry["tls"] = True
        return entry

    def recv(self, first_byte: float = FIRST_BYTE_TIMEOUT, into: str = "exchanges") -> bytes:
        """Everything the server sends until it is idle for IDLE s or closes."""
        buf = b""
        self.sock.settimeout(first_byte)
        waited_from = time.monotonic()
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            buf += chunk
            self.sock.settimeout(IDLE)
        if buf or into == "after_init":
            entry = self._entry("s2c", buf)
            if into == "after_init":
                entry["waited_s"] = round(time.monotonic() - waited_from, 1)
                entry["closed"] = self.closed
            getattr(self, into).append(entry)
        return buf

    def send(self, data: bytes, into: str = "exchanges") -> None:
        self.sock.sendall(data)
        getattr(self, into).append(self._entry("c2s", data))

    def close(self) -> None:
        self.sock.close()


def _security_list(data: bytes) -> list[int]:
    n = data[0]
    return list(data[1 : 1 + n])


def play_38_none(r: Recorder, version: bytes = b"RFB 003.008\n") -> None:
    """3.8/3.7: read list; if 1 offered, select it, read result, ClientInit shared."""
    r.recv()
    r.send(version)
    types = _security_list(r.recv())
    if 1 in types:
        r.send(b"\x01")
        if version == b"RFB 003.008\n":
            r.recv()  # SecurityResult (3.8 only; 3.7 goes straight to init)
        r.send(b"\x01")  # ClientInit shared-flag = 1
        r.recv()  # ServerInit


def play_list_only(version: bytes) -> Callable[[Recorder], None]:
    def play(r: Recorder) -> None:
        r.recv()
        r.send(version)
        r.recv()

    return play


def play_vencrypt(r: Recorder) -> None:
    """3.8, select VeNCrypt (19), answer version 0.2, read the sub-type list."""
    r.recv()
    r.send(b"RFB 003.008\n")
    types = _security_list(r.recv())
    assert 19 in types, types
    r.send(bytes([19]))
    ver = r.recv()  # U8 major, U8 minor
    assert ver == b"\x00\x02", ver
    r.send(b"\x00\x02")
    r.recv()  # U8 ack(0) U8 count U32[count]


def play_tight(version: bytes) -> Callable[[Recorder], None]:
    """Select Tight (16), read tunnel caps (answer NOTUNNEL only if count>0), auth caps."""

    def play(r: Recorder) -> None:
        r.recv()
        r.send(version)
        types = _security_list(r.recv())
        assert 16 in types, types
        r.send(bytes([16]))
        data = r.recv()
        (ntunnels,) = struct.unpack(">I", data[:4])
        rest = data[4 + 16 * ntunnels :]
        if ntunnels > 0:
            r.send(struct.pack(">I", 0))  # NOTUNNEL
            rest = r.recv()
        if len(rest) < 4:
            rest += r.recv()
        (nauth,) = struct.unpack(">I", rest[:4])
        if nauth == 0:
            # No auth: 3.8 sends SecurityResult (maybe already received), then init.
            if version == b"RFB 003.008\n" and len(rest) < 8:
                r.recv()
            r.send(b"\x01")  # ClientInit shared
            r.recv()  # ServerInit + Tight interaction capabilities

    return play


def play_33(r: Recorder) -> None:
    """Answer 3.3: read the U32 type (+ challenge); for None do ClientInit."""
    r.recv()
    r.send(b"RFB 003.003\n")
    data = r.recv()
    (sectype,) = struct.unpack(">I", data[:4])
    if sectype == 1:
        r.send(b"\x01")
        r.recv()


def play_banner_only(r: Recorder) -> None:
    r.recv()


FBUR_8X8 = bytes([3, 0, 0, 0, 0, 0, 0, 8, 0, 8])  # FramebufferUpdateRequest, full, 8x8 at 0,0


def _after_init(r: Recorder, wait: float = 3.0) -> None:
    """Ask for one small framebuffer update; record what comes within *wait* seconds."""
    r.send(FBUR_8X8, into="after_init")
    r.recv(first_byte=wait, into="after_init")


def play_vino(r: Recorder) -> None:
    """3.7 (what vino announces): select TLS (18) if listed, else None; inside TLS select
    None and send ClientInit in the same segment (as the probe does: 3.7 sends no
    SecurityResult); then one FramebufferUpdateRequest.

    Sent apart (ClientInit a second after the selection), a prompting vino holds the client
    before it reads ClientInit, so not even ServerInit comes (measured on 3.22.0); replayed,
    such a recording ends mid-handshake, so it is described in docs/rfb.md, not kept here.
    """
    r.recv()
    r.send(b"RFB 003.007\n")
    types = _security_list(r.recv())
    if 18 in types:
        r.send(bytes([18]))
        r.start_tls()
        inner = _security_list(r.recv())
        if 1 not in inner:
            return
    elif 1 not in types:
        return
    r.send(b"\x01\x01")  # select None + ClientInit shared, one segment
    r.recv()
    _after_init(r)


def play_38_none_then_update(r: Recorder, wait: float = 3.0) -> None:
    play_38_none(r)
    if r.exchanges and r.exchanges[-1]["dir"] == "s2c" and not r.closed:
        _after_init(r, wait)


def play_38_none_held(wait: float) -> Callable[[Recorder], None]:
    """Select None and wait up to *wait* s for the SecurityResult (a query dialog's time)."""

    def play(r: Recorder) -> None:
        r.recv()
        r.send(b"RFB 003.008\n")
        types = _security_list(r.recv())
        assert types == [1], types
        r.send(b"\x01")
        sent = time.monotonic()
        if r.recv(first_byte=wait):
            r.exchanges[-1]["waited_s"] = round(time.monotonic() - sent, 1)

    return play


SCENARIOS: dict[str, tuple[str, dict[str, Any], Callable[[Recorder], None], str]] = {
    # name: (server kind, options, client, notes)
    "tigervnc-none-38": (
        "tigervnc-none",
        {"desktop": "tiger-none", "geometry": (640, 480)},
        play_38_none,
        "Select None(1), read SecurityResult, ClientInit 01, read ServerInit.",
    ),
    "tigervnc-vncauth-38": (
        "tigervnc-vncauth",
        {},
        play_list_only(b"RFB 003.008\n"),
        "Read the security list and close.",
    ),
    "tigervnc-vencrypt-38": (
        "tigervnc-vencrypt",
        {},
        play_vencrypt,
        "Select VeNCrypt(19), answer 0.2, read ack + sub-type list, close.",
    ),
    "tigervnc-default-38": (
        "tigervnc-default",
        {},
        play_vencrypt,
        "TigerVNC default SecurityTypes (TLSVnc,VncAuth). Select 19, 0.2, sub-types.",
    ),
    "tigervnc-none-37": (
        "tigervnc-none",
        {"desktop": "tiger-none", "geometry": (640, 480)},
        lambda r: play_38_none(r, b"RFB 003.007\n"),
        "3.7 client: select None, NO SecurityResult, ClientInit 01, ServerInit.",
    ),
    "tigervnc-none-33": (
        "tigervnc-none",
        {"desktop": "tiger-none", "geometry": (640, 480)},
        play_33,
        "3.3 client: U32 1 (None), ClientInit 01, ServerInit.",
    ),
    "tigervnc-vncauth-33": (
        "tigervnc-vncauth",
        {},
        play_33,
        "3.3 client: U32 2 + 16-byte challenge; closed without answering.",
    ),
    "tigervnc-default-33": (
        "tigervnc-default",
        {},
        play_33,
        "3.3 client to the TigerVNC default (TLSVnc,VncAuth): server picks VncAuth.",
    ),
    "x11vnc-none-38": (
        "x11vnc-none",
        {"geometry": (640, 480)},
        play_38_none,
        "x11vnc -nopw (no -desktop: name is '<hostname>:<display>'). Full ServerInit.",
    ),
    "x11vnc-password-38": (
        "x11vnc-password",
        {},
        play_list_only(b"RFB 003.008\n"),
        "x11vnc -rfbauth: read the security list and close.",
    ),
    "x11vnc-none-33": (
        "x11vnc-none",
        {"desktop": "x11vnc-none", "geometry": (640, 480)},
        play_33,
        "3.3 client to x11vnc -nopw: U32 1, ClientInit 01, ServerInit.",
    ),
    "x11vnc-password-33": (
        "x11vnc-password",
        {},
        play_33,
        "3.3 client to x11vnc -rfbauth: U32 2 + challenge.",
    ),
    "xtightvnc-38": (
        "xtightvnc",
        {"desktop": "tight-vncauth"},
        play_tight(b"RFB 003.008\n"),
        "Xtightvnc -rfbauth: select Tight(16), tunnel caps, auth caps, close.",
    ),
    "xtightvnc-37": (
        "xtightvnc",
        {"desktop": "tight-vncauth"},
        play_tight(b"RFB 003.007\n"),
        "Same with a 3.7 client.",
    ),
    "xtightvnc-none-38": (
        "xtightvnc-none",
        {"desktop": "tight-none", "geometry": (640, 480)},
        play_tight(b"RFB 003.008\n"),
        "Xtightvnc without password: Tight(16), zero auth caps, ServerInit + Tight caps.",
    ),
    "xtightvnc-none-list-38": (
        "xtightvnc-none",
        {"desktop": "tight-none", "geometry": (640, 480)},
        play_38_none,
        "Xtightvnc without password: select plain None(1), ServerInit (no Tight caps).",
    ),
    "xtightvnc-33": (
        "xtightvnc",
        {"desktop": "tight-vncauth"},
        play_33,
        "3.3 client to Xtightvnc -rfbauth: U32 2 + challenge.",
    ),
    "vino-37": (
        "vino",
        {},
        play_vino,
        "vino defaults (prompt-enabled, require-encryption): [18], TLS, inner [1]; select 1 and "
        "ClientInit in one segment: ServerInit comes, the update request is never answered "
        "(the client is held for the desktop's Accept).",
    ),
    "vino-noprompt-37": (
        "vino-noprompt",
        {},
        play_vino,
        "vino, prompt-enabled false: [18], TLS, inner [1], ServerInit, and the update comes.",
    ),
    "vino-noprompt-plain-37": (
        "vino-noprompt-plain",
        {},
        play_vino,
        "vino, prompt off and require-encryption false: [18, 1]; TLS selected, inner [1].",
    ),
    "vino-password-37": (
        "vino-password",
        {},
        play_list_only(b"RFB 003.007\n"),
        "vino with a VNC password, require-encryption false: [18, 2].",
    ),
    "vino-33": (
        "vino",
        {},
        play_33,
        "3.3 client to vino's defaults (only type 18, which 3.3 cannot carry).",
    ),
    "wayvnc-38": (
        "wayvnc",
        {},
        play_38_none_then_update,
        "wayvnc 0.5 / neatvnc 0.5.4 without auth: [1], result 0, ServerInit 'WayVNC', update.",
    ),
    "wayvnc-auth-38": (
        "wayvnc-auth",
        {},
        play_vencrypt,
        "wayvnc enable_auth: [19], VeNCrypt 0.2, sub-types [262] (X509Plain only).",
    ),
    "wayvnc-37": (
        "wayvnc",
        {},
        play_list_only(b"RFB 003.007\n"),
        "3.7 client to neatvnc 0.5.4: it accepts only 'RFB 003.008' and fails any other.",
    ),
    "x0vncserver-38": (
        "x0vncserver-none",
        {"desktop": None},
        play_38_none_then_update,
        "X0tigervnc -SecurityTypes None: [1], result 0, ServerInit, update.",
    ),
    "x0vncserver-queryconnect-38": (
        "x0vncserver-queryconnect",
        {},
        play_38_none_held(15.0),
        "X0tigervnc -QueryConnect: select None; the SecurityResult waits for the dialog "
        "(QueryConnectTimeout 10 s), then fails with its reason.",
    ),
    "tigervnc-queryconnect-38": (
        "tigervnc-queryconnect",
        {},
        play_38_none_held(15.0),
        "Xvnc -QueryConnect with vncconfig -nowin: the dialog times out after 10 s.",
    ),
    "tigervnc-queryconnect-novncconfig-38": (
        "tigervnc-queryconnect",
        {"vncconfig": False},
        play_38_none_held(15.0),
        "Xvnc -QueryConnect with no vncconfig running: refused at once.",
    ),
}


def record(name: str, workdir: Path) -> dict[str, Any]:
    kind, options, client, notes = SCENARIOS[name]
    with servers.running(kind, workdir=workdir, **options) as srv:
        r = Recorder(srv.address)
        try:
            client(r)
        finally:
            r.close()
        client_version = next(
            (bytes.fromhex(e["hex"]).decode() for e in r.exchanges if e["dir"] == "c2s"), ""
        )
        doc: dict[str, Any] = {
            "server": kind,
            "command": srv.command,
            "client_version": client_version.strip().removeprefix("RFB "),
            "exchanges": r.exchanges,
            "server_closed": r.closed,
            "notes": notes,
        }
        if r.after_init:
            doc["after_init"] = r.after_init
        return doc


def record_blacklist(workdir: Path, connections: int = 6) -> dict[str, Any]:
    """Bare connections (connect, read banner, close) until the 6th; record it."""
    with servers.running("tigervnc-vncauth", workdir=workdir) as srv:
        banners: list[str] = []
        for _ in range(connections - 1):
            r = Recorder(srv.address)
            banners.append(r.recv().hex())
            r.close()
            time.sleep(0.2)  # let Xvnc notice the close
        r = Recorder(srv.address)
        r.recv()
        r.close()
        log = srv.log()
    return {
        "server": "tigervnc-vncauth",
        "command": srv.command,
        "client_version": None,
        "exchanges": r.exchanges,
        "server_closed": r.closed,
        "notes": (
            f"Connection {connections} after {connections - 1} bare connections "
            "(connect, read banner, close) to a fresh server. Sent unsolicited on accept."
        ),
        "preceding_banners_hex": banners,
        "server_log_lines": [ln for ln in log.splitlines() if "Connections" in ln],
    }


def package_versions() -> str:
    pkgs = [
        "tigervnc-standalone-server",
        "tigervnc-common",
        "tigervnc-tools",
        "x11vnc",
        "xvfb",
        "tightvncserver",
        "tightvncpasswd",
        "x11-xserver-utils",
        "tigervnc-scraping-server",
        "vino",
        "wayvnc",
        "libneatvnc0",
        "sway",
    ]
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *pkgs],
        capture_output=True,
        text=True,
    )
    return out.stdout


def main(argv: list[str]) -> int:
    names = argv or [*SCENARIOS, "tigervnc-blacklisted"]
    OUT.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vncaudit-record-"))
    for name in names:
        if name == "tigervnc-blacklisted":
            data = record_blacklist(workdir)
        else:
            data = record(name, workdir)
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
        summary = " | ".join(f"{e['dir']} {e['hex'][:80]}" for e in data["exchanges"])
        print(f"{name}: {summary}")
    print(package_versions())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
