"""The blacklist facts of data/blacklists.toml and docs/rfb.md §10, measured on real servers.

Each test starts its own server (a fresh tally) and talks to it with plain sockets, the way any
client would: connect, read what the server says first, close. A connection is "refused" when
the server answers with TigerVNC's unsolicited 3.3 failure "Too many security failures".
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import VncServerFactory

from vncaudit import blacklists, discovery
from vncaudit.models import ServiceResult, State, Target
from vncaudit.probe import ProbeOptions, probe

pytestmark = pytest.mark.realserver

REFUSAL = b"Too many security failures"


def connect(host: str, port: int, source: str | None = None, read: bool = True) -> str:
    """One plain connection: 'ok' (an RFB banner), 'refused' (the blacklist) or what came."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(5)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
        if not read:
            return "closed unread"
        data = b""
        while len(data) < 12:
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"RFB 003.003"):
            # A blacklisted client gets the reason right behind the banner, unasked.
            sock.settimeout(1)
            deadline = time.monotonic() + 1
            while REFUSAL not in data and time.monotonic() < deadline:
                try:
                    chunk = sock.recv(64)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
    if REFUSAL in data:
        return "refused"
    return "ok" if data.startswith(b"RFB ") else f"unexpected {data[:20]!r}"


def series(host: str, port: int, n: int, source: str | None = None) -> list[str]:
    return [connect(host, port, source) for _ in range(n)]


TIGER = blacklists.shipped().by_id("tigervnc")
assert TIGER is not None
PASSES = [*["ok"] * (TIGER.threshold), "refused"]  # the 5th passes (and arms), the 6th is refused


@pytest.mark.parametrize("kind", ["tigervnc-vncauth", "x0vncserver"])
def test_tigervnc_refuses_the_sixth_connection_per_address(
    vnc_server_factory: VncServerFactory, kind: str
) -> None:
    srv = vnc_server_factory(kind)
    host, port = srv.address
    assert series(host, port, 6) == PASSES
    # Another source address is another tally (Xvnc bound to 127.0.0.1 accepts 127.0.0.2).
    assert series(host, port, 5, source="127.0.0.2") == ["ok"] * 5
    assert connect(host, port) == "refused"
    if kind == "x0vncserver":  # -localhost listens on ::1 too: a third tally
        assert series("::1", port, 6) == PASSES


def test_a_connection_closed_unread_counts(vnc_server_factory: VncServerFactory) -> None:
    srv = vnc_server_factory("tigervnc-vncauth")
    host, port = srv.address
    for _ in range(TIGER.free):
        connect(host, port, read=False)
        time.sleep(0.1)  # let the server accept each one before the next
    assert series(host, port, 2) == ["ok", "refused"]


class _Collect:
    """A discovery sink that only records what answered (no probe follows)."""

    def __init__(self) -> None:
        self.live: list[Target] = []
        self.results: list[ServiceResult] = []

    def found(self, target: Target, sock: socket.socket | None) -> None:
        if sock is not None:
            sock.close()
        self.live.append(target)

    def finished(self, result: ServiceResult) -> None:
        self.results.append(result)

    def room(self) -> int:
        return 64


def test_a_half_open_syn_never_counts(vnc_server_factory: VncServerFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("raw SYN needs root (CAP_NET_RAW)")
    srv = vnc_server_factory("tigervnc-vncauth")
    host, port = srv.address
    options = discovery.DiscoveryOptions(discovery.Mode.SYN, timeout=1.0, retries=0)
    for _ in range(10):
        sink = _Collect()
        asyncio.run(discovery.SynSweep([Target(host, port)], sink, options).run())
        assert sink.live == [Target(host, port)], sink.results
    assert series(host, port, 6) == PASSES  # as on a fresh server
    assert srv.log().lower().count("blacklisted:") == 1  # the 6th connection only


def test_the_block_lasts_ten_seconds_then_doubles(vnc_server_factory: VncServerFactory) -> None:
    srv = vnc_server_factory("tigervnc-vncauth")
    host, port = srv.address
    assert series(host, port, 5) == ["ok"] * 5
    armed = time.monotonic()
    seen: list[tuple[float, str]] = []
    while time.monotonic() - armed < TIGER.block + 3:
        verdict = connect(host, port)  # a refused connection changes nothing in the tally
        seen.append((time.monotonic() - armed, verdict))
        if verdict == "ok":
            break
        time.sleep(0.5)
    assert seen[0][1] == "refused"
    passed_after = seen[-1][0]
    assert seen[-1][1] == "ok", seen
    # blockUntil is whole seconds (time(nullptr)): the pass comes 9-11 s after the 5th.
    assert TIGER.block - 1.5 <= passed_after <= TIGER.block + 1.5, seen
    # That pass armed the next block, twice as long: refused again 12 s later.
    assert connect(host, port) == "refused"
    time.sleep(TIGER.block_after(0) + 2)
    assert connect(host, port) == "refused"


@pytest.mark.parametrize("kind", ["tigervnc-none", "tigervnc-vencrypt"])
def test_a_successful_no_auth_probe_clears_the_tally(
    vnc_server_factory: VncServerFactory, kind: str
) -> None:
    srv = vnc_server_factory(kind)
    target = Target(*srv.address)

    async def probes(n: int, init: bool) -> list[tuple[State, str | None]]:
        out = []
        for _ in range(n):
            r = await probe(target, ProbeOptions(timeout=5, read_server_init=init))
            out.append((r.state, r.rfb.security_result if r.rfb else None))
        return out

    cleared = asyncio.run(probes(8, init=True))
    assert cleared == [(State.VNC, "ok")] * 8
    counted = asyncio.run(probes(6, init=False))  # list read, nothing selected
    assert [s for s, _ in counted] == [State.VNC] * 5 + [State.BLACKLISTED]


@pytest.mark.parametrize("kind", ["x11vnc-password", "xtightvnc", "qemu", "qemu-password"])
def test_servers_without_a_connection_tally_never_refuse(
    vnc_server_factory: VncServerFactory, kind: str
) -> None:
    srv = vnc_server_factory(kind)
    assert series(*srv.address, 30) == ["ok"] * 30
    rule = {"x11vnc-password": "libvncserver", "xtightvnc": "tightvnc-1.3",
            "qemu": "qemu", "qemu-password": "qemu"}[kind]
    found = blacklists.shipped().by_id(rule)
    assert found is not None and not found.limits_probes


def test_active_checks_spend_the_ledger_with_every_connection_they_make(
    vnc_server_factory: VncServerFactory, tmp_path: Path
) -> None:
    """`--active-checks` makes more connections than the probe (the honeypot checks' two, the
    bypass check's one): the ledger counts each, so two such scans in a row never reach
    TigerVNC's block, and a plain client from the same address still gets the type list."""
    srv = vnc_server_factory("tigervnc-vncauth")
    host, port = srv.address
    env = {**os.environ, "VNCAUDIT_DB": str(tmp_path / "scan.db")}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "vncaudit", "scan", host, "-p", str(port), "-o", "json",
             "--active-checks"], capture_output=True, text=True, timeout=120, env=env,
            check=False)
        assert proc.returncode == 0, proc.stderr
        [service] = json.loads(proc.stdout)["services"]
        assert service["state"] == "vnc", service
    assert connect(host, port) == "ok"
