"""The import-light admission (vncaudit.admission) that the early start of a connect scan and
the connection ledger share: this host's addresses read over netlink are psutil's
(getifaddrs), the source address it keys a pair with is `SourceResolver`'s, and `admit_first`
writes exactly the intent `Ledger.admit` writes, grants only where the ledger grants without
rules or history, and declines (writing nothing) everywhere else.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sqlite3
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs pinned
import pytest

from vncaudit import admission
from vncaudit.basics import State, Target
from vncaudit.budget import Ledger, SourceResolver
from vncaudit.models import ServiceResult
from vncaudit.store import DB_VERSION, Store


def test_interface_addresses_are_getifaddrs_ones() -> None:
    expected = {str(ipaddress.ip_address(a.address.split("%")[0]))
                for addrs in psutil.net_if_addrs().values() for a in addrs
                if a.family in (socket.AF_INET, socket.AF_INET6)}
    found = admission.interface_addresses()
    assert "127.0.0.1" in found
    assert {str(ipaddress.ip_address(a)) for a in found} == expected


def test_the_early_source_is_the_resolvers() -> None:
    ours = sorted(a for a in admission.interface_addresses()
                  if ":" not in a and not a.startswith("127."))
    hosts = ["127.0.0.1", "127.0.0.9", "127.1.2.3", "10.11.12.13", "198.18.0.7",
             "203.0.113.9", *ours]
    for host in hosts:
        assert admission.ipv4_source(host) == SourceResolver()(host), host


def _intents(path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(path) as conn:
        return [(int(i), str(o).split("|")[2], str(p)) for i, o, p in conn.execute(
            "SELECT id, owner, pairs FROM budget_intents ORDER BY id")]


def test_admit_first_writes_what_ledger_admit_writes(tmp_path: Path) -> None:
    target = Target("198.18.0.7", 5900)
    src = admission.ipv4_source(target.host)
    with Store.open(tmp_path / "ledger.db") as store:
        ledger = Ledger(store)
        [decision] = ledger.admit([target])
        assert decision.allowed and decision.src == src
    with Store.open(tmp_path / "early.db"):
        pass
    conn = sqlite3.connect(tmp_path / "early.db", isolation_level=None)
    grant = admission.admit_first(conn, (src, target.host, target.port), DB_VERSION)
    assert grant is not None and grant.key == decision.key
    grant.close()
    assert _intents(tmp_path / "early.db") == _intents(tmp_path / "ledger.db") == [
        (1, str(os.getpid()), f"{src} 198.18.0.7 5900 1")]


@pytest.mark.parametrize("history", ["row", "intent", "old schema"])
def test_admit_first_declines_what_needs_the_ledger(tmp_path: Path, history: str) -> None:
    target = Target("198.18.0.7", 5900)
    path = tmp_path / "s.db"
    with Store.open(path) as store:
        ledger = Ledger(store)
        if history == "row":
            # Another of our addresses connected before: a row for the server decides.
            other = Target(target.host, target.port)
            [d] = ledger.admit([other])
            ledger.record([(d, ServiceResult(other.host, other.port, State.TARPIT))])
            store.flush()
        elif history == "intent":
            ledger.admit([Target("198.18.0.8", 5901)])  # another scan's grant, in flight
    conn = sqlite3.connect(path, isolation_level=None)
    if history == "old schema":
        conn.execute(f"PRAGMA user_version = {DB_VERSION - 1}")
    before = _intents(path)
    with sqlite3.connect(path) as look:
        rows = look.execute("SELECT * FROM budget_ledger").fetchall()
    key = (admission.ipv4_source(target.host), target.host, target.port)
    assert admission.admit_first(conn, key, DB_VERSION) is None
    assert _intents(path) == before
    with sqlite3.connect(path) as look:
        assert look.execute("SELECT * FROM budget_ledger").fetchall() == rows
    conn.close()
