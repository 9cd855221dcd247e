"""VNC over the web: WebSocket framing, the upgrade check, and RFB through a REAL websockify.

Unit tests use an in-process fake gateway that splits and merges RFB messages across frames;
the `realserver` tests put Debian's websockify (with noVNC's pages) in front of real Xvnc
servers and compare the facts with a direct probe, and read a real Java-viewer page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vncaudit import active
from vncaudit import websocket as ws
from vncaudit.models import State, Target
from vncaudit.probe import ProbeOptions, probe

import servers

# ------------------------------------------------------------------------------ framing


def test_accept_key_matches_rfc_6455_example() -> None:
    assert ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_client_frames_are_masked_and_round_trip(size: int) -> None:
    payload = os.urandom(size)
    frame = ws.encode_frame(payload, mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x82 and frame[1] & 0x80  # FIN + binary, MASK bit set
    if size:
        assert payload not in frame
    parser = ws.FrameParser()
    for i in range(0, len(frame), 7):  # arrives in small pieces
        parser.receive_data(frame[i : i + 7])
    assert parser.next_frame() == ws.Frame(True, ws.OP_BINARY, payload)
    assert parser.next_frame() is None


def server_frame(payload: bytes, opcode: int = ws.OP_BINARY, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def test_frame_parser_refuses_hostile_frames() -> None:
    p = ws.FrameParser(max_frame=1000)
    p.receive_data(bytes([0x82, 127]) + struct.pack(">Q", 1 << 40))
    with pytest.raises(ws.WebSocketError, match="exceeds"):
        p.next_frame()
    p = ws.FrameParser()
    p.receive_data(bytes([0xC2, 0]))
    with pytest.raises(ws.WebSocketError, match="reserved"):
        p.next_frame()


def test_http_title_and_identification() -> None:
    page = ws.HttpResponse(
        200, "OK", (("server", "WebSockify Python/3.11"),), b"<title>noVNC</title>"
    )
    assert page.title == "noVNC" and ws.identify_http(page).kind == "novnc"
    bare = ws.HttpResponse(405, "Method Not Allowed", (("server", "WebSockify Python/3.11"),))
    assert ws.identify_http(bare).kind == "websockify"
    applet = ws.HttpResponse(
        200, "OK", (), b'<APPLET CODE=VncViewer.class><PARAM NAME="PORT" VALUE="5901"></APPLET>'
    )
    facts = ws.identify_http(applet)
    assert facts.kind == "java-viewer" and facts.applet_port == 5901


# ------------------------------------------------------------------------------ fake gateway

RFB_TYPES = b"RFB 003.008\n" + b"\x01\x02"


@contextlib.asynccontextmanager
async def fake_gateway(
    accept_paths: tuple[str, ...] = ("/websockify",), bad_accept: bool = False
) -> AsyncIterator[tuple[Target, list[bytes]]]:
    """A WebSocket gateway that sends RFB split across frames (with a ping in between)."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split()[1]
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            if path not in accept_paths:
                writer.write(b"HTTP/1.1 404 Not Found\r\nServer: fake\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            key = headers["sec-websocket-key"]
            accept = base64.b64encode(hashlib.sha1(key.encode() + ws.WS_GUID).digest()).decode()
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Protocol: binary\r\n"
                + f"Sec-WebSocket-Accept: {'x' if bad_accept else accept}\r\n\r\n".encode()
            )
            # The banner split over two frames, a ping between them.
            writer.write(server_frame(b"RFB 003") + server_frame(b"hi", ws.OP_PING))
            writer.write(server_frame(b".008\n"))
            await writer.drain()
            parser = ws.FrameParser()
            while True:
                data = await reader.read(4096)
                if not data:
                    return
                parser.receive_data(data)
                while (frame := parser.next_frame()) is not None:
                    received.append(frame.payload)
                    if frame.payload == b"RFB 003.008\n":
                        writer.write(server_frame(b"\x02\x02\x10"))  # types [2, 16]
                        await writer.drain()
                    elif frame.payload == b"\x10":  # Tight: no tunnels, auth caps [VNCAUTH]
                        caps = struct.pack(">I", 0) + struct.pack(">I", 1)
                        caps += struct.pack(">I4s8s", 2, b"STDV", b"VNCAUTH_")
                        writer.write(server_frame(caps))
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Target("127.0.0.1", server.sockets[0].getsockname()[1]), received
    finally:
        server.close()
        await server.wait_closed()


def test_probe_through_a_websocket_with_split_frames() -> None:
    async def run() -> tuple[Any, list[bytes]]:
        async with fake_gateway(accept_paths=("/",)) as (target, received):
            result = await ws.probe_web(target, ProbeOptions(timeout=5), fetch_page=False)
            await asyncio.sleep(0.05)
            return result, received

    result, received = asyncio.run(run())
    assert result.state is State.VNC, result.error
    assert [t.id for t in result.rfb.security_types] == [2, 16]
    assert [c.code for c in result.rfb.tight.auth] == [2]
    web = result.extra.web
    assert web is not None and web.websocket is not None
    assert web.transport == "websocket" and web.websocket.path == "/"
    assert web.websocket.subprotocol == "binary"
    assert [a.status for a in web.attempts] == [404, 101]
    # Our pong echoes the ping; then the client version and the Tight selection, each masked
    # (the fake's parser unmasks them).
    assert received[:3] == [b"hi", b"RFB 003.008\n", b"\x10"]


def test_a_wrong_accept_key_is_refused() -> None:
    async def run() -> Any:
        async with fake_gateway(bad_accept=True) as (target, _):
            return await ws.probe_web(target, ProbeOptions(timeout=5), fetch_page=False)

    result = asyncio.run(run())
    assert result.state is State.OPEN_NOT_VNC
    assert result.extra.web is not None
    assert "does not match" in str(result.extra.web.attempts[0].error)


# ------------------------------------------------------------------------------ real websockify


def require_websockify() -> None:
    from conftest import _unavailable

    if shutil.which("websockify") is None:
        _unavailable(servers.ServerUnavailable("websockify", ["websockify"]))


@contextlib.contextmanager
def websockify(backend: servers.VncServer, web: str | None, log: Path,
               verbose: bool = False) -> Iterator[Target]:
    """websockify on 127.0.0.1 in front of `backend`; `verbose`: its log names the peer of
    every connection it accepts ("127.0.0.2: new handler Process")."""
    require_websockify()
    port = servers.free_port()
    cmd = ["websockify", "-v"] if verbose else ["websockify"]
    if web:
        cmd += ["--web", web]
    cmd += [f"127.0.0.1:{port}", f"{backend.host}:{backend.port}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not servers.is_listening(port, [proc.pid]):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "websockify did not listen"
            time.sleep(0.05)
        yield Target("127.0.0.1", port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


NOVNC = "/usr/share/novnc"


@pytest.mark.realserver
@pytest.mark.parametrize("kind", ["tigervnc-vencrypt", "tigervnc-none", "xtightvnc"])
def test_websockify_in_front_of_a_real_server(
    vnc_server_factory: Any, tmp_path: Path, kind: str
) -> None:
    backend = vnc_server_factory(kind)
    web = NOVNC if Path(NOVNC, "vnc.html").exists() else None
    with websockify(backend, web, tmp_path / "websockify.log") as front:
        direct = asyncio.run(probe(Target(backend.host, backend.port)))
        through = asyncio.run(ws.probe_web(front, ProbeOptions(timeout=10)))
        plain = asyncio.run(probe(front, ProbeOptions(timeout=1.0)))
    assert through.state is State.VNC, through.error
    assert through.rfb == direct.rfb  # the same facts, TLS inside the WebSocket included
    assert through.extra.tls == direct.extra.tls  # TLS inside the WebSocket: the same session
    info = through.extra.web
    assert info is not None and info.websocket is not None and info.http is not None
    assert info.transport == "websocket"
    assert info.websocket.url == f"ws://127.0.0.1:{front.port}/websockify"
    assert info.http.kind in ("websockify", "novnc")
    assert str(info.http.server).startswith("WebSockify")
    # A plain RFB probe of the gateway hears nothing: that is the cue to try the web probe.
    assert plain.state in (State.TARPIT, State.OPEN_NOT_VNC)


@pytest.mark.realserver
def test_websockify_without_web_pages_and_a_screenshot_through_it(
    vnc_server_factory: Any, paint_root: Any, tmp_path: Path
) -> None:
    backend = vnc_server_factory("tigervnc-none", geometry=(400, 300))
    paint_root(backend, "#a0b0c0")
    with websockify(backend, None, tmp_path / "websockify.log") as front:
        page = asyncio.run(ws.http_get(front, "/"))
        shot = asyncio.run(active.screenshot(front, connector=ws.connector("/websockify")))
    assert page.status == 405 and ws.identify_http(page).kind == "websockify"
    assert shot.png is not None
    img = Image.open(io.BytesIO(shot.png)).convert("RGB")
    assert img.size == (400, 300) and img.getcolors(4) == [(120000, (160, 176, 192))]


@pytest.mark.realserver
def test_classic_java_viewer_http_server(vnc_server_factory: Any) -> None:
    classes = "/usr/share/tightvnc-java"
    if not Path(classes, "index.vnc").exists():
        from conftest import _unavailable

        _unavailable(servers.ServerUnavailable("tightvnc-java", ["tightvnc-java"]))
    http_port = servers.free_port()
    srv = vnc_server_factory(
        "xtightvnc", extra_args=["-httpd", classes, "-httpport", str(http_port)]
    )
    deadline = time.monotonic() + 10
    while not servers.is_listening(http_port, srv.pids):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = asyncio.run(ws.probe_web(Target("127.0.0.1", http_port)))
    web = result.extra.web
    assert web is not None and web.http is not None
    assert web.transport == "http-java-viewer"
    assert web.http.kind == "java-viewer"
    assert web.http.applet_port == srv.port
    assert web.attempts == ()  # no WebSocket tried on a Java-viewer page
