"""Regression tests from the security review of the web checker, `harden` / `local` and the
fix guide: each test reproduces one way a crafted input got through, against the real code
(web app over its ASGI interface, real sockets on 127.0.0.1, the real rich tables).
"""

from __future__ import annotations

import io
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

with warnings.catch_warnings():  # starlette nags about httpx; the pinned client is httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vncaudit.web import Settings, create_app

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

PROXY = ("127.0.0.1", 40002)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _final(c: TestClient, scan_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        body: dict[str, Any] = c.get(f"/api/scans/{scan_id}", headers=headers).json()
        if body["status"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_diff_to_previous_scan_never_shows_another_clients_scan(tmp_path: Path) -> None:
    """Two clients (behind a trusted proxy) check the same allow-listed target: the second
    client's result page and history must not name or diff the first client's scan."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        assume_exposure="public", probe_timeout=2.0, rate_burst=50,
                        rate_per_minute=600, trusted_proxies=("127.0.0.1/32",))
    alice = {"X-Forwarded-For": "198.51.100.10"}
    bob = {"X-Forwarded-For": "198.51.100.20"}
    port = _closed_port()
    with TestClient(create_app(settings), client=PROXY) as c:
        def scan(who: dict[str, str]) -> str:
            r = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)},
                       headers=who)
            assert r.status_code == 201, r.text
            scan_id: str = r.json()["id"]
            assert _final(c, scan_id, who)["status"] == "finished"
            return scan_id

        a1 = scan(alice)
        a2 = scan(alice)
        b1 = scan(bob)
        # Control: the same client does get the diff to its own previous scan.
        assert f'href="/scans/{a1}"' in c.get(f"/scans/{a2}", headers=alice).text
        page = c.get(f"/scans/{b1}", headers=bob).text
        assert a1 not in page and a2 not in page
        assert "This is the first scan of 127.0.0.1" in page
        history = c.get("/history", headers=bob).text
        assert b1 in history and a1 not in history and a2 not in history
        assert c.get(f"/api/scans/{a2}", headers=bob).status_code == 404


def _table_text(table: Any) -> str:
    out = Console(file=io.StringIO(), width=300, force_terminal=True, color_system=None,
                  highlight=False)
    out.print(table)
    text: str = out.file.getvalue()  # type: ignore[attr-defined]
    return text
