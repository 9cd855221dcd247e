"""Smoke tests for the real-VNC-server test bed (tests/servers.py, conftest.py).

They connect to TigerVNC servers NOT AT ALL (its blacklist counts every
unauthenticated connection); only x11vnc/None is asked for its banner.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import conftest
import pytest

import servers

SESSION_FIXTURES = [
    ("tigervnc_none", "tigervnc-none"),
    ("tigervnc_vncauth", "tigervnc-vncauth"),
    ("tigervnc_vencrypt", "tigervnc-vencrypt"),
    ("tigervnc_default", "tigervnc-default"),
    ("x11vnc_none", "x11vnc-none"),
    ("x11vnc_password", "x11vnc-password"),
    ("xtightvnc", "xtightvnc"),
    ("xtightvnc_none", "xtightvnc-none"),
]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"server closed after {buf!r}"
        buf += chunk
    return buf


@pytest.mark.realserver
@pytest.mark.parametrize(("fixture", "kind"), SESSION_FIXTURES)
def test_session_server_listens_on_loopback_only(
    request: pytest.FixtureRequest, fixture: str, kind: str
) -> None:
    srv: servers.VncServer = request.getfixturevalue(fixture)
    assert srv.kind == kind
    assert srv.host == "127.0.0.1"
    assert srv.alive()
    assert srv.listening()
    assert srv.display >= servers.FIRST_DISPLAY
    assert srv.pid == srv.procs[-1].pid
    assert (srv.password is None) == kind.endswith("-none")
    # Every TCP listener of the RFB process is the loopback RFB port: no X11 TCP,
    # no IPv6 wildcard (x11vnc opens [::]:5900 unless -rfbportv6 -1).
    for pid in srv.pids:
        for addr, _port in servers.tcp_listen_addresses(pid):
            assert addr == "127.0.0.1", (pid, addr, _port)
    assert ("127.0.0.1", srv.port) in servers.tcp_listen_addresses(srv.pid)
    assert servers.x_display_listening(srv.display)


@pytest.mark.realserver
def test_x11vnc_none_banner(x11vnc_none: servers.VncServer) -> None:
    with socket.create_connection(x11vnc_none.address, timeout=10) as sock:
        banner = _recv_exactly(sock, 12)
    assert banner.startswith(b"RFB ")
    assert banner == b"RFB 003.008\n"


@pytest.mark.realserver
def test_factory_starts_fresh_servers_and_stops_them(
    vnc_server_factory: Callable[..., servers.VncServer],
) -> None:
    a = vnc_server_factory("tigervnc-none", desktop="fresh-a", geometry=(320, 240))
    b = vnc_server_factory("tigervnc", security_types="VncAuth", password="pw123456")
    assert a.port != b.port and a.display != b.display
    assert "-SecurityTypes" in b.command and b.password == "pw123456"
    assert ["-geometry", "320x240"] == a.command[a.command.index("-geometry") :][:2]
    assert a.listening() and b.listening()
    b.stop()
    assert not b.alive()
    assert not servers.is_listening(b.port)
    b.stop()  # idempotent


@pytest.mark.realserver
def test_paint_root_reaches_the_framebuffer(
    vnc_server_factory: Callable[..., servers.VncServer],
    paint_root: Callable[[servers.VncServer, str], None],
) -> None:
    """xsetroot paints the root window; x11vnc (None) shows that colour."""
    srv = vnc_server_factory("x11vnc-none", geometry=(64, 48))
    paint_root(srv, "#336699")
    with socket.create_connection(srv.address, timeout=10) as sock:
        assert _recv_exactly(sock, 12) == b"RFB 003.008\n"
        sock.sendall(b"RFB 003.008\n")
        n = _recv_exactly(sock, 1)[0]
        assert list(_recv_exactly(sock, n)) == [1]
        sock.sendall(b"\x01")
        assert _recv_exactly(sock, 4) == b"\x00\x00\x00\x00"
        sock.sendall(b"\x01")  # ClientInit shared
        init = _recv_exactly(sock, 24)
        width, height, bpp, depth, big_endian = struct.unpack(">HHBBB", init[:7])
        _recv_exactly(sock, struct.unpack(">I", init[20:24])[0])
        assert (width, height, bpp, depth, big_endian) == (64, 48, 32, 24, 0)
        red_shift, green_shift, blue_shift = init[14:17]
        sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings [Raw]
        # x11vnc polls the X screen for changes: on a busy machine the first update can come
        # before the poll that sees the new root, so ask again (a full update) for a while.
        deadline = time.monotonic() + 10
        while True:
            sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, 1, 1))  # update 1x1 at 0,0
            header = _recv_exactly(sock, 4)
            assert header[0] == 0  # FramebufferUpdate
            rect = struct.unpack(">HHHHi", _recv_exactly(sock, 12))
            assert rect == (0, 0, 1, 1, 0)
            (pixel,) = struct.unpack("<I", _recv_exactly(sock, 4))
            rgb = tuple((pixel >> s) & 0xFF for s in (red_shift, green_shift, blue_shift))
            if rgb == (0x33, 0x66, 0x99) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert rgb == (0x33, 0x66, 0x99)


def test_missing_binary_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(servers, "missing_binaries", lambda kind: ["Xnope"])
    with pytest.raises(pytest.skip.Exception, match="Xnope"):
        conftest.require_binaries("tigervnc-none")


def test_missing_binary_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(servers, "missing_binaries", lambda kind: ["Xnope"])
    with pytest.raises(pytest.fail.Exception, match="must not skip"):
        conftest.require_binaries("tigervnc-none")


HELD_AND_DESKTOP_KINDS = ["tigervnc-queryconnect", "x0vncserver-none", "x0vncserver-queryconnect",
                          "vino", "vino-noprompt-plain", "vino-password", "wayvnc", "wayvnc-auth"]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.realserver
@pytest.mark.parametrize("kind", HELD_AND_DESKTOP_KINDS)
def test_desktop_servers_start_on_loopback_and_stop_by_pid(
    vnc_server_factory: Callable[..., servers.VncServer], kind: str
) -> None:
    """The servers that need a desktop (an X display, a session bus, a compositor) come up on a
    free port, listen only on loopback, and every process of theirs is gone after stop()."""
    srv = vnc_server_factory(kind)
    assert srv.kind == kind and srv.alive() and srv.listening()
    assert srv.pid in srv.pids
    listeners = [a for p in srv.pids for a in servers.tcp_listen_addresses(p)]
    assert ("127.0.0.1", srv.port) in listeners
    assert {addr for addr, _ in listeners} <= {"127.0.0.1", "::1"}, listeners
    if kind.startswith("wayvnc") and os.geteuid() == 0:
        # sway refuses root: the compositor and wayvnc run as the unprivileged test user.
        for pid in srv.pids:
            assert Path(f"/proc/{pid}").stat().st_uid != 0
    pids = srv.pids
    srv.stop()
    assert not any(_pid_alive(p) for p in pids)
    assert not servers.is_listening(srv.port)
