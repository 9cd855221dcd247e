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
"""

from __future__ import annotations

import json
import socket
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
        self.sock = socket.create_connection(addr, timeout=FIRST_BYTE_TIMEOUT)
        self.exchanges: list[dict[str, str]] = []
        self.closed = False

    def recv(self) -> bytes:
        """Everything the server sends until it is idle for IDLE s or closes."""
        buf = b""
        self.sock.settimeout(FIRST_BYTE_TIMEOUT)
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
        if buf:
            self.exchanges.append({"dir": "s2c", "hex": buf.hex()})
        return buf

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.exchanges.append({"dir": "c2s", "hex": data.hex()})

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
        return {
            "server": kind,
            "command": srv.command,
            "client_version": client_version.strip().removeprefix("RFB "),
            "exchanges": r.exchanges,
            "server_closed": r.closed,
            "notes": notes,
        }


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
