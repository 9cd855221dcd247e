"""The early start of a connect scan (vncaudit.cli.launch, vncaudit.connstart): its one connect
leaves before typer, asyncio and dataclasses are imported, and only after the connection
ledger's first-grant rule admitted the pair and its intent was committed; the scan that takes it
over finds what a scan without it finds, with the same ledger rows, and a pair whose budget is
spent is never connected, early or late.
"""

from __future__ import annotations

import json
import os
import site
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from vncaudit import connstart
from vncaudit.basics import State, Target
from vncaudit.budget import Ledger
from vncaudit.cli import launch
from vncaudit.models import ServiceResult
from vncaudit.store import Store

SRC = str(Path(connstart.__file__).parents[1])

_AT_FIRST_CONNECT = """
import contextlib, runpy, socket, sqlite3, sys
before = set(sys.modules)
seen = []
def hook(event, args):
    if seen or event != "socket.connect" or args[0].type != socket.SOCK_STREAM:
        return
    seen.append(event)
    db = sys.argv[sys.argv.index("--db") + 1]
    with sqlite3.connect(db) as conn:  # what the store holds at that moment
        intents = conn.execute("SELECT pairs FROM budget_intents").fetchall()
    sys.stderr.write("FIRST " + repr(args[1]) + " INTENTS " + repr(intents) + " NEW "
                     + " ".join(sorted(set(sys.modules) - before)) + "\\n")
sys.addaudithook(hook)
sys.argv = ["vncaudit", *sys.argv[1:]]
with contextlib.suppress(SystemExit):
    runpy.run_module("vncaudit", run_name="__main__")
"""


def _scan(*args: str, bare: bool = False) -> subprocess.CompletedProcess[str]:
    """`vncaudit scan ARGS`; `bare`: the hook above, in an interpreter without `site` (as a
    virtual environment's starts), the site-packages on the path."""
    if bare:
        run = ["-S", "-c", _AT_FIRST_CONNECT]
        path = os.pathsep.join([SRC, *site.getsitepackages()])
    else:
        run, path = ["-m", "vncaudit"], SRC
    return subprocess.run([sys.executable, *run, "scan", *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": path})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_first_connect_leaves_admitted_before_typer_asyncio_and_dataclasses(
        tmp_path: Path) -> None:
    port = _closed_port()
    db = tmp_path / "s.db"
    out = _scan("127.0.0.1", "-p", str(port), "--timeout", "0.5", "--db", str(db), "-o",
                "json", "--all", bare=True)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("FIRST"))
    assert line.startswith(f"FIRST {('127.0.0.1', port)!r} INTENTS "), line
    # The ledger's intent for this very pair was committed before the connect.
    assert f"[('127.0.0.1 127.0.0.1 {port} 1',)]" in line, line
    new = set(line.split(" NEW ")[1].split())
    assert "vncaudit.connstart" in new and "vncaudit.admission" in new
    for module in ("typer", "click", "asyncio", "dataclasses", "typing", "logging", "numpy",
                   "vncaudit.cli.program", "vncaudit.discovery", "vncaudit.store.database",
                   "vncaudit.budget", "vncaudit.engine", "vncaudit.models", "psutil"):
        assert module not in new, module
    [service] = json.loads(out.stdout)["services"]
    assert (service["port"], service["state"]) == (port, "closed")
    with sqlite3.connect(db) as conn:  # settled: no intent left, nothing charged
        assert conn.execute("SELECT count(*) FROM budget_intents").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM budget_ledger").fetchone() == (0,)


def _ledger_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT src, dst, port, rule, spent, passes, total, blocked, "
                            "read_state, history FROM budget_ledger ORDER BY port").fetchall()
        assert conn.execute("SELECT count(*) FROM budget_intents").fetchone() == (0,)
    return [(*row[:-1], [entry[1:] for entry in json.loads(row[-1])]) for row in rows]


def _services(out: subprocess.CompletedProcess[str]) -> list[tuple[Any, ...]]:
    assert out.returncode == 0, out.stderr
    return [(s["host"], s["port"], s["state"], json.dumps(s["rfb"], sort_keys=True),
             s["product"], [f["id"] for f in s["findings"]])
            for s in json.loads(out.stdout)["services"]]


def test_an_early_connect_finds_what_the_program_alone_finds(x11vnc_none: Any,
                                                              tmp_path: Path) -> None:
    """A real server (x11vnc: it keeps no tally, so the runs cannot disturb each other) and a
    closed port: the same services and the same ledger rows with the early start as without
    it (a line outside the launcher's subset: `--exclude`)."""
    args = ["127.0.0.1", "-p", f"{x11vnc_none.port},{_closed_port()}", "--timeout", "3",
            "-o", "json", "--all"]
    early, plain = tmp_path / "early.db", tmp_path / "plain.db"
    assert launch.preparse(["scan", *args, "--db", str(early)], {}) is not None
    assert launch.preparse(["scan", *args, "--db", str(plain), "--exclude", "127.0.0.2"],
                           {}) is None
    with_early = _services(_scan(*args, "--db", str(early)))
    without = _services(_scan(*args, "--db", str(plain), "--exclude", "127.0.0.2"))
    assert with_early == without
    assert {s[2] for s in with_early} == {"vnc", "closed"}
    assert _ledger_rows(early) == _ledger_rows(plain)
    assert [r[4] for r in _ledger_rows(early)] == [1]  # the one connection, counted once


def _peers(listener: socket.socket) -> list[str]:
    """The source addresses of the connections waiting on a non-blocking listener."""
    peers = []
    while True:
        try:
            conn, (peer, _) = listener.accept()
        except BlockingIOError:
            return peers
        conn.close()
        peers.append(peer)


def test_a_spent_address_is_never_connected(tmp_path: Path) -> None:
    """A pair whose ledger row from 127.0.0.1 has spent the [unknown] rule's free connections:
    the early start declines (nothing written, nothing sent), and the scan that follows never
    connects from 127.0.0.1 (the ledger answers, or connects from another loopback address,
    each with its own tally)."""
    db = tmp_path / "s.db"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        target = Target("127.0.0.1", port)
        with Store.open(db) as store, Ledger(store, alternates=()) as ledger:
            free = ledger.rules.unknown.free
            for _ in range(free):
                [decision] = ledger.admit([target])
                assert decision.allowed and decision.src == "127.0.0.1"
                ledger.record([(decision, ServiceResult(target.host, port, State.TARPIT))])
            assert not ledger.admit([target])[0].allowed
        rows = _ledger_rows(db)
        args = ["127.0.0.1", "-p", str(port), "--timeout", "0.5", "--db", str(db), "-o", "json"]
        plan = launch.preparse(["scan", *args], {})
        assert plan is not None and plan.mode == "connect"
        assert connstart.start(plan) is None and connstart.started() is None
        assert _peers(listener) == []
        assert _ledger_rows(db) == rows  # no intent, no row touched
        out = _scan(*args)
        assert out.returncode == 0, out.stderr
        [service] = json.loads(out.stdout)["services"]
        assert "127.0.0.1" not in _peers(listener), service
    assert [r[:5] for r in _ledger_rows(db) if r[0] == "127.0.0.1"] == [
        ("127.0.0.1", "127.0.0.1", port, "?tigervnc", free)]


def _schema(path: Path) -> tuple[Any, ...]:
    with sqlite3.connect(path) as conn:
        return (conn.execute("PRAGMA user_version").fetchone(),
                conn.execute("PRAGMA page_size").fetchone(),
                conn.execute("PRAGMA journal_mode").fetchone(),
                sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
                conn.execute("SELECT key, value FROM meta").fetchall())


def _early(db: Path, port: int) -> str:
    """Run the early start alone in a process that then dies without a word (as one killed
    between the admission and the hand-off would): what it started, as text."""
    code = ("import os, sys; from vncaudit import connstart; from vncaudit.cli import launch; "
            f"plan = launch.preparse(['scan', '127.0.0.1', '-p', '{port}', '--db', "
            f"{str(db)!r}], {{}}); early = connstart.start(plan); "
            "print(early and (early.host, early.port, early.grant.key)); sys.stdout.flush(); "
            "os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, "PYTHONPATH": SRC})
    return out.stdout.strip()


def test_a_store_the_early_start_creates_is_the_stores(tmp_path: Path) -> None:
    port = _closed_port()
    assert _early(tmp_path / "early.db", port) == repr(
        ("127.0.0.1", port, ("127.0.0.1", "127.0.0.1", port)))
    Store.open(tmp_path / "store.db").close()
    assert _schema(tmp_path / "early.db") == _schema(tmp_path / "store.db")


def test_a_process_that_dies_after_the_admission_is_charged(tmp_path: Path) -> None:
    """The early start's intent outlives a process killed before the hand-off: the next
    ledger counts that connection as made (it may have been)."""
    port = _closed_port()
    db = tmp_path / "s.db"
    assert _early(db, port) != "None"
    with Store.open(db) as store, Ledger(store) as ledger:
        ledger.release(ledger.admit([Target("127.0.0.9", 5900)]))  # charges the dead intent
    rows = _ledger_rows(db)
    assert [r[:7] for r in rows] == [("127.0.0.1", "127.0.0.1", port, "?tigervnc", 1, 0, 1)]
    assert rows[0][-1] == [["uncertain", "granted to a run that stopped abruptly"]]


def test_a_busy_store_or_another_scans_intent_means_no_early_start(tmp_path: Path) -> None:
    port = _closed_port()
    db = tmp_path / "s.db"
    Store.open(db).close()
    plan = launch.preparse(["scan", "127.0.0.1", "-p", str(port), "--db", str(db)], {})
    assert plan is not None
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's batch holds the write lock
    assert connstart.start(plan) is None
    writer.execute("ROLLBACK")
    writer.close()
    with Store.open(db) as store, Ledger(store) as ledger:
        ledger.admit([Target("127.0.0.9", 5900)])  # a running scan's grant
        assert connstart.start(plan) is None
    assert connstart.started() is None


def test_the_default_store_is_the_early_starts_too(tmp_path: Path) -> None:
    """No --db: the early start opens the file `Store.open` opens by default."""
    (tmp_path / "vncaudit").mkdir()
    port = _closed_port()
    env = {**os.environ, "PYTHONPATH": SRC, "XDG_DATA_HOME": str(tmp_path)}
    env.pop("VNCAUDIT_DB", None)
    code = _AT_FIRST_CONNECT.replace('sys.argv[sys.argv.index("--db") + 1]',
                                     f'{str(tmp_path / "vncaudit" / "vncaudit.db")!r}')
    out = subprocess.run([sys.executable, "-c", code, "scan", "127.0.0.1", "-p", str(port),
                          "--timeout", "0.5", "-o", "json"], capture_output=True, text=True,
                         timeout=120, check=False, env=env)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("FIRST"))
    assert f"'127.0.0.1 127.0.0.1 {port} 1'" in line and "vncaudit.connstart" in line, line
    assert "typer" not in line.split(" NEW ")[1].split()
    assert json.loads(out.stdout)["services"] == []  # closed, not listed without --all
