"""Kill -9 mid-scan, then --resume: the stored set equals an uninterrupted scan's, no duplicates.

Targets are 127.77.0.0/22 on one port; a few addresses of that range carry fake RFB servers (any
127/8 address is local on Linux), the rest refuse. A low --rate stretches the scan so it can be
killed in the middle.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LIVE = ["127.77.0.9", "127.77.1.200", "127.77.2.33", "127.77.3.250"]
# Lists that need no sub-negotiation, so the fake can stop after sending them.
TYPES = {"127.77.0.9": b"\x01\x02", "127.77.1.200": b"\x03\x0d\x05\x06",
         "127.77.2.33": b"\x02\x1e\x21", "127.77.3.250": b"\x02\x02\x05"}


@pytest.fixture(scope="module")
def fake_servers() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.77.0.9", 0))
        port: int = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("sockname")[0]
        try:
            writer.write(b"RFB 003.008\n")
            await reader.readexactly(12)
            writer.write(TYPES[host])
            await writer.drain()
            await asyncio.wait_for(reader.read(1), 2)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    servers: list[asyncio.Server] = []

    async def start() -> None:
        for host in LIVE:
            servers.append(await asyncio.start_server(handle, host, port))
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()),
                                              loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port
    for srv in servers:
        loop.call_soon_threadsafe(srv.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _scan(db: Path, *args: str, wait: bool = True) -> Any:
    cmd = [sys.executable, "-m", "vncaudit", "scan", *args, "--db", str(db), "-o", "json",
           "--all", "--timeout", "2"]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _summary(doc: dict[str, Any]) -> set[tuple[str, int, str, tuple[int, ...]]]:
    return {
        (s["host"], s["port"], s["state"],
         tuple(t["id"] for t in (s["rfb"] or {}).get("security_types", [])))
        for s in doc["services"]
    }


def test_kill_9_then_resume_equals_uninterrupted(fake_servers: int, tmp_path: Path) -> None:
    port = str(fake_servers)
    whole = _scan(tmp_path / "a.db", "127.77.0.0/22", "-p", port, "--rate", "4000")
    assert len(whole["services"]) == 1024
    assert {s["host"] for s in whole["services"] if s["state"] == "vnc"} == set(LIVE)

    db = tmp_path / "b.db"
    proc = _scan(db, "127.77.0.0/22", "-p", port, "--rate", "300", wait=False)
    deadline = time.monotonic() + 30
    done = 0
    while time.monotonic() < deadline:  # kill once part of the scan is committed
        time.sleep(0.3)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    done = conn.execute("SELECT count(*) FROM done").fetchone()[0]
            except sqlite3.OperationalError:
                continue  # the file is there, its tables not yet: the store is being made
            if done >= 200:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert 0 < done < 1024, done
    with sqlite3.connect(db) as conn:
        (scan_id,) = conn.execute("SELECT id FROM scans").fetchone()
        status = conn.execute("SELECT status FROM scans").fetchone()[0]
    assert status == "running"  # killed, not finished

    # Without --all: the report is built as the resumed run goes (report/spool.py), the
    # services found before the kill first; it is what `results` renders from the store.
    resumed = subprocess.run(
        [sys.executable, "-m", "vncaudit", "scan", "--resume", scan_id, "--db", str(db),
         "-o", "json"], capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    stored = subprocess.run(
        [sys.executable, "-m", "vncaudit", "results", scan_id, "--db", str(db), "-o", "json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert resumed.stdout == stored.stdout
    assert {s["host"] for s in json.loads(resumed.stdout)["services"]} == set(LIVE)
    every = subprocess.run(
        [sys.executable, "-m", "vncaudit", "results", scan_id, "--db", str(db), "-o", "json",
         "--all"], capture_output=True, text=True, timeout=120, check=False)
    assert every.returncode == 0, every.stderr
    doc = json.loads(every.stdout)
    assert doc["scan"]["id"] == scan_id
    assert _summary(doc) == _summary(whole)
    pairs = [(s["host"], s["port"]) for s in doc["services"]]
    assert len(pairs) == len(set(pairs)) == 1024
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM done").fetchone()[0] == 1024
        assert conn.execute("SELECT status FROM scans").fetchone()[0] == "finished"


def test_results_and_diff_commands(fake_servers: int, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    first = _scan(db, "127.77.0.9", "127.77.2.33", "-p", str(fake_servers))
    second = _scan(db, "127.77.0.9", "-p", str(fake_servers))
    a, b = first["scan"]["id"], second["scan"]["id"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vncaudit", *args, "--db", str(db)],
                              capture_output=True, text=True, timeout=60, check=False)

    listing = cli("results", "-o", "json")
    assert {r["id"] for r in json.loads(listing.stdout)} == {a, b}
    shown = cli("results", a, "-o", "json")
    assert _summary(json.loads(shown.stdout)) == _summary(first)
    changed = cli("diff", a, b, "--json")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) is not None
    unknown = cli("results", "s-nope")
    assert unknown.returncode == 2 and "unknown scan id" in unknown.stderr
