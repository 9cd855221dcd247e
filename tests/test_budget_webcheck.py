"""The web check after a probe spends the connection ledger like the probe: every TCP connection
it makes is granted first and recorded from the address it was made from; from another loopback
address when 127.0.0.1's budget at a local server is spent (it binds that address), never
through a gateway whose VNC server would count the gateway's address instead.

Real servers: a stdlib HTTP server that logs the peer of every connection it accepts, and
Debian's websockify (-v logs each accepted peer) in front of TigerVNC Xvnc with a small
BlacklistThreshold, whose own log shows what it accepted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import VncServerFactory
from test_budget_servers import connect
from test_websocket import NOVNC, websockify

import servers

pytestmark = pytest.mark.realserver


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"<html><title>a plain web page</title></html>"
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Logged(ThreadingHTTPServer):
    """The peer address of every connection accepted, requests or not."""

    peers: list[str]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = super().get_request()
        self.peers.append(peer[0])
        return sock, peer


@pytest.fixture
def web_page() -> Iterator[_Logged]:
    server = _Logged(("127.0.0.1", servers.free_port()), _Page)
    server.peers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _scan(db: Path, port: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p", str(port),
         "--timeout", "2", "-o", "json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "VNCAUDIT_DB": str(db)})
    assert proc.returncode == 0, proc.stderr
    [service] = json.loads(proc.stdout)["services"]
    return dict(service)


def _ledger(db: Path, port: int) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM budget_intents").fetchone() == (0,)
        return {src: total for src, total in conn.execute(
            "SELECT src, total FROM budget_ledger WHERE port = ?", (port,))}


def test_web_check_connects_from_the_granted_loopback_address(
        web_page: _Logged, tmp_path: Path) -> None:
    """A scan's probe and web check of a silent web server (GET /, two upgrades) spend
    127.0.0.1's four; the rest come from 127.0.0.2, then 127.0.0.3, each check from one
    address. The server saw exactly the ledger's connections per address, none beyond four
    from any, none from an address the ledger had moved on from."""
    db, port = tmp_path / "scan.db", web_page.server_address[1]
    for n in range(3):
        service = _scan(db, port)
        assert service["state"] == "tarpit", service  # a web page, no WebSocket behind it
        seen = Counter(web_page.peers)
        assert _ledger(db, port) == dict(seen), (n, seen)
        assert max(seen.values()) <= 4, seen
    # GET / and two upgrades after the probe: each scan's five connections spend 127.0.0.1's
    # four; the rest came from 127.0.0.2, then 127.0.0.3 (fewer only if a deadline cut a
    # check short), and never from an address again once it had moved on.
    assert len(seen) >= 3 and seen["127.0.0.1"] == 4, seen
    history = list(web_page.peers)
    assert history == sorted(history), history


def test_web_check_through_a_gateway_is_not_moved_to_another_address(
        vnc_server_factory: VncServerFactory, tmp_path: Path) -> None:
    """Behind websockify the VNC server sees websockify's address whichever of ours the web
    check comes from, so a grant from 127.0.0.2 does not cover a WebSocket: once 127.0.0.1's
    budget at the front end is spent the web check is not made. The VNC server (blacklist
    threshold 2: the second connection arms it) accepted one connection, from 127.0.0.1, and
    still lets a client from 127.0.0.1 in; websockify saw exactly the ledger's connections."""
    backend = vnc_server_factory("tigervnc-vncauth",
                                 extra_args=["-BlacklistThreshold", "2"])
    log = tmp_path / "websockify.log"
    web = NOVNC if Path(NOVNC, "vnc.html").exists() else None
    db = tmp_path / "scan.db"
    with websockify(backend, web, log, verbose=True) as front:
        first = _scan(db, front.port)
        assert first["state"] == "vnc", first  # RFB read through the WebSocket
        assert first["extra"]["web"]["transport"] == "websocket"
        for _ in range(3):
            _scan(db, front.port)
        peers = Counter(re.findall(r"^(127\.0\.0\.\d+): new handler", log.read_text(), re.M))
        ledger = _ledger(db, front.port)
    assert ledger == dict(peers), (ledger, peers)
    assert max(peers.values()) <= 4, peers
    accepted = re.findall(r"accepted: (127\.0\.0\.\d+)::", backend.log())
    assert accepted == ["127.0.0.1"], backend.log()
    assert connect(backend.host, backend.port) == "ok"  # the second from 127.0.0.1: passes
