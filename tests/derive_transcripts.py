"""Write the SOURCE-DERIVED transcripts of tests/transcripts (run by hand, not by pytest).

    python tests/derive_transcripts.py [NAME ...]     # default: all

Some products cannot run here (TurboVNC, UltraVNC and RealVNC are not Debian packages). For
those, each scenario below writes the bytes a server sends as its own source builds them,
in the recorded transcripts' format (tests/transcripts/README.md), with `"derived_from"`
naming the repository, path and commit read instead of a `"command"`. Every byte is
explained next to where it is built, so a reader can check it against that source.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "transcripts"

V38 = b"RFB 003.008\n"


def _u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _server_init(name: bytes, width: int = 1240, height: int = 900) -> bytes:
    # 32 bpp, depth 24, little-endian, true colour 1, 255/255/255, shifts 16/8/0.
    pf = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", width, height) + pf + _u32(len(name)) + name


def _doc(server: str, derived_from: str, notes: str,
         exchanges: list[tuple[str, bytes]], server_closed: bool = False) -> dict[str, Any]:
    return {
        "server": server,
        "derived_from": derived_from,
        "client_version": "003.008",
        "exchanges": [{"dir": d, "hex": data.hex()} for d, data in exchanges],
        "server_closed": server_closed,
        "notes": notes,
    }


TURBO = ("TurboVNC/turbovnc @ afb79337 (2026-07-29): "
         "unix/Xvnc/programs/Xserver/hw/vnc/auth.c, rfbserver.c; unix/vncserver.in")


def turbovnc_vencrypt(subtypes: tuple[int, ...]) -> list[tuple[str, bytes]]:
    """TurboVNC's default list and the VeNCrypt dialog up to the sub-types.

    rfbSendSecurityTypeList walks secTypes[] (tlsvnc ... x509plain -> 19, vnc/otp -> 2,
    unixlogin -> 16, plain -> 19), de-duplicated, and appends 16 when it is not there:
    [19, 2, 16]. rfbVeNCryptAuthenticate sends 0.2, ack 0 and the enabled entries' subType
    in secTypes[] order, de-duplicated (tlsvnc/tlsotp 258, tlsplain 259, x509vnc/x509otp 261,
    x509plain 262, vnc/otp 2, plain 256; unixlogin has none)."""
    return [
        ("s2c", V38), ("c2s", V38),
        ("s2c", bytes([3, 19, 2, 16])), ("c2s", b"\x13"),
        ("s2c", b"\x00\x02"), ("c2s", b"\x00\x02"),
        ("s2c", b"\x00" + bytes([len(subtypes)]) + _u32(*subtypes)),
    ]


ULTRA_13 = ("ultravnc/UltraVNC @ 582688a2^ (2021-11-14, before 'dev 1.3.5.2'): "
            "winvnc/winvnc/vncclient.cpp vncClientThread::InitVersion, AuthenticateClient")

TIGHT13 = ("TurboVNC/tightvnc @ a235bae (TightVNC 1.3.10): vnc_winsrc/winvnc/vncClient.cpp "
           "vncClientThread::InitVersion, GetAuthenticationType, SendConnFailedMessage")
NO_PASSWORD_13 = (b"This server does not have a valid password enabled. Until a password is set, "
                  b"incoming connections cannot be accepted.")

SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "tightvnc-1.3-windows-nopassword-38": lambda: _doc(
        "tightvnc-1.3-windows-nopassword", TIGHT13,
        "TightVNC 1.3.9/1.3.10 for Windows without a password: InitVersion sends "
        "RFB 003.008; GetAuthenticationType refuses with a 0-count list (3.7+), U32 length "
        "and the text, then the connection ends.",
        [("s2c", V38), ("c2s", V38), ("s2c", b"\x00" + _u32(len(NO_PASSWORD_13)) + NO_PASSWORD_13)],
        server_closed=True),
    "ultravnc-1.3-password-38": lambda: _doc(
        "ultravnc-1.3-password", ULTRA_13,
        "UltraVNC 1.0.9 to 1.3.5.1 with a VNC password: InitVersion sends RFB 003.008; "
        "AuthenticateClient lists rfbUltraVNC (17) on the first round, then rfbVncAuth (2).",
        [("s2c", V38), ("c2s", V38), ("s2c", bytes([2, 17, 2]))]),
    "turbovnc-default-38": lambda: _doc(
        "turbovnc-default", TURBO,
        "TurboVNC built with TLS and PAM (its release builds), default security types: "
        "[19, 2, 16], VeNCrypt sub-types [258, 259, 261, 262, 2, 256].",
        turbovnc_vencrypt((258, 259, 261, 262, 2, 256))),
    "turbovnc-nopam-38": lambda: _doc(
        "turbovnc-nopam", TURBO,
        "TurboVNC built with TLS, without PAM (no tlsplain, x509plain, unixlogin, plain): "
        "[19, 2, 16], VeNCrypt sub-types [258, 261, 2].",
        turbovnc_vencrypt((258, 261, 2))),
    "turbovnc-none-38": lambda: _doc(
        "turbovnc-none", TURBO,
        "vncserver -securitytypes none: secTypes 'none' gives 1 and Tight (16) is appended; "
        "SecurityResult 0 (3.8), ServerInit named by vncserver.in "
        "'TurboVNC: $host:$displayNumber ($ENV{USER})' (here host vm, display 1, user root).",
        [("s2c", V38), ("c2s", V38), ("s2c", bytes([2, 1, 16])), ("c2s", b"\x01"),
         ("s2c", _u32(0)), ("c2s", b"\x01"),
         ("s2c", _server_init(b"TurboVNC: vm:1 (root)"))]),
}


def main(names: list[str]) -> int:
    for name in names or list(SCENARIOS):
        doc = SCENARIOS[name]()
        (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
