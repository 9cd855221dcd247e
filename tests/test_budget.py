"""The connection ledger (vncaudit.budget) over a real store file: what it grants, records,
answers, and how it behaves across restarts, processes, old stores and broken ones.

No server is involved here (tests/test_budget_series.py runs real ones): a "connection" is a
grant of `Ledger.admit` and its result is what a probe would have returned.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from vncaudit import budget
from vncaudit.basics import CONNECT_CUT
from vncaudit.budget import Ledger, ScanGate
from vncaudit.budget.clock import Instant, clock_jump, elapsed, started_after
from vncaudit.models import NamedType, Product, RfbFacts, ServiceResult, State, Target
from vncaudit.store import DB_VERSION, MIGRATIONS, Store

SERVER = Target("198.18.7.7", 5901)  # never contacted: the ledger only counts


def vnc_result(target: Target = SERVER, product: str | None = None, *,
               authenticated: bool = False, state: State = State.VNC) -> ServiceResult:
    facts = RfbFacts(banner="RFB 003.008\n", server_version="3.8",
                     security_types=(NamedType(1 if authenticated else 2, "x"),),
                     security_result="ok" if authenticated else None)
    return ServiceResult(target.host, target.port, state, rfb=facts,
                         product=Product(product) if product else None)


def spend(ledger: Ledger, n: int, result: ServiceResult | None = None) -> list[bool]:
    """`n` admit+record rounds for SERVER; which ones were granted."""
    out = []
    for _ in range(n):
        (decision,) = ledger.admit([SERVER])
        out.append(decision.allowed)
        if decision.allowed:
            ledger.record([(decision, result or vnc_result())])
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store.open(tmp_path / "ledger.db") as s:
        yield s


def test_four_free_connections_then_the_facts_read_last(store: Store) -> None:
    with Ledger(store) as ledger:
        assert spend(ledger, 6) == [True] * 4 + [False] * 2
        (denied,) = ledger.admit([SERVER])
        assert not denied.allowed and denied.spent == 4
        assert "not re-probed" in denied.reason and "for 10 s" in denied.reason
        assert denied.next_block() == 10
        answer = ledger.answer(denied)
    assert answer.state is State.VNC and answer.rfb is not None  # the facts read last
    note = answer.extra.budget
    assert note is not None and note.probed is False and note.read_at
    assert note.age is not None and note.age >= 0
    assert note.spent == 4 and note.free == 4 and note.rule == "tigervnc"


def test_a_server_that_counts_nothing_is_never_limited(store: Store) -> None:
    with Ledger(store) as ledger:
        assert spend(ledger, 12, vnc_result(product="x11vnc")) == [True] * 12


def test_a_successful_no_auth_login_clears_the_tally(store: Store) -> None:
    with Ledger(store) as ledger:
        assert spend(ledger, 3) == [True] * 3
        assert spend(ledger, 1, vnc_result(product="TigerVNC", authenticated=True)) == [True]
        assert spend(ledger, 5) == [True] * 4 + [False]


def test_a_refusal_seen_means_the_budget_is_gone(store: Store) -> None:
    with Ledger(store) as ledger:
        assert spend(ledger, 1, vnc_result(state=State.BLACKLISTED)) == [True]
        (decision,) = ledger.admit([SERVER])
        answer = ledger.answer(decision)
    assert not decision.allowed
    assert "was refused by this server's blacklist" in decision.reason
    # The refusal is the only fact read (another program had armed the block): reported.
    assert answer.state is State.BLACKLISTED and answer.extra.budget is not None
    assert budget.table_note(answer).startswith("not re-probed; read")


def test_risk_lockout_grants_and_says_so(store: Store) -> None:
    with Ledger(store) as ledger:
        spend(ledger, 4)
    with Ledger(store, risk_lockout=True) as ledger:
        (decision,) = ledger.admit([SERVER])
        assert decision.allowed and decision.forced and "for 10 s" in decision.reason
        ledger.record([(decision, vnc_result())])
        (again,) = ledger.admit([SERVER])
        assert again.next_block() == 20  # the window doubles with each pass
        ledger.release([again])


def test_the_ledger_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    for expected in ([True] * 3, [True, False, False]):
        with Store.open(path) as store, Ledger(store) as ledger:
            assert spend(ledger, 3) == expected


def test_a_scan_gate_links_results_to_the_scan(store: Store) -> None:
    scan_id = store.create_scan(["198.18.7.7"], "5901", {})
    with Ledger(store) as ledger:
        gate = ScanGate(ledger, scan_id)
        assert gate.admit([SERVER]) == [None]  # a plain grant
        result = vnc_result()
        store.add_result(scan_id, gate.settle(result))
        gate.close()
        with store.reading("test") as conn:
            row = conn.execute("SELECT scan_id, result, spent FROM budget_ledger").fetchone()
    assert row == (scan_id, None, 1)  # linked, not copied
    with Ledger(store) as ledger:
        assert ledger.last_read(SERVER.host, SERVER.port) is not None


def test_a_run_cut_short_charges_what_it_started_and_returns_the_rest(store: Store) -> None:
    other = Target("198.18.7.8", 5901)
    with Ledger(store) as ledger:
        gate = ScanGate(ledger)
        gate.admit([SERVER, other])
        gate.started(SERVER)  # connected, then the scan was interrupted
        gate.close()
        with store.reading("test") as conn:
            rows = dict(conn.execute("SELECT dst, spent FROM budget_ledger").fetchall())
            intents = conn.execute("SELECT count(*) FROM budget_intents").fetchone()[0]
    assert rows == {SERVER.host: 1} and intents == 0


def test_a_connect_the_deadline_cut_is_charged_and_a_silent_pair_is_not(store: Store) -> None:
    """A probe whose own connect was still in progress at its deadline may have been
    accepted by the server (the kernel completes the handshake whether or not the loop sees
    it): charged as a connection of unknown use. Discovery's "no answer" and a refusal are
    certain: nothing charged. Every grant is settled either way."""
    cut, silent, refused = SERVER, Target("198.18.7.8", 5901), Target("198.18.7.9", 5901)
    with Ledger(store) as ledger:
        gate = ScanGate(ledger)
        assert gate.admit([cut, silent, refused]) == [None, None, None]
        gate.settle(ServiceResult(cut.host, cut.port, State.FILTERED, error=CONNECT_CUT))
        gate.settle(ServiceResult(silent.host, silent.port, State.FILTERED,
                                  error="no answer to the connection attempt"))
        gate.settle(ServiceResult(refused.host, refused.port, State.CLOSED))
        gate.close()
        with store.reading("test") as conn:
            rows = {dst: (spent, json.loads(history)) for dst, spent, history in conn.execute(
                "SELECT dst, spent, history FROM budget_ledger")}
            intents = conn.execute("SELECT count(*) FROM budget_intents").fetchone()[0]
        assert set(rows) == {cut.host} and intents == 0
        spent, history = rows[cut.host]
        assert spent == 1 and history[-1][1:] == ["uncertain", budget.ledger.CUT_REASON]
        # It counts against the server's free connections like any other.
        assert spend(ledger, 4) == [True] * 3 + [False]


def test_concurrent_processes_never_both_spend_the_last_connection(tmp_path: Path) -> None:
    """Four processes share one store and each asks for SERVER's connections over and over
    without recording (their grants stay in flight): four are granted in all, never more."""
    path = tmp_path / "shared.db"
    Store.open(path).close()
    script = textwrap.dedent(f"""
        import json, sys, time
        from vncaudit.store import Store
        from vncaudit.budget import Ledger
        from vncaudit.models import Target
        store = Store.open({str(path)!r})
        ledger = Ledger(store)
        got = 0
        for _ in range(20):
            got += sum(d.allowed for d in ledger.admit([Target({SERVER.host!r}, {SERVER.port})]))
            time.sleep(0.01)
        print(got, flush=True)
        sys.stdin.read()  # hold the grants until the test has counted them all
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    try:
        granted = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.communicate("", timeout=60)
    assert sum(granted) == 4, granted


def test_a_killed_process_s_grants_are_charged(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "killed.db"
    Store.open(path).close()
    script = textwrap.dedent(f"""
        from vncaudit.store import Store
        from vncaudit.budget import Ledger
        from vncaudit.models import Target
        ledger = Ledger(Store.open({str(path)!r}))
        ds = ledger.admit([Target({SERVER.host!r}, {SERVER.port})] * 3)
        print(sum(d.allowed for d in ds), flush=True)
        import time; time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout is not None and int(proc.stdout.readline()) == 3
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Store.open(path) as store, Ledger(store) as ledger:
        assert spend(ledger, 2) == [True, False]  # 3 charged + 1 = the budget of 4
    assert any("stopped without recording 3 granted" in r.message for r in caplog.records)


def test_an_older_store_is_migrated_and_keeps_its_scans(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:  # type: ignore[union-attr]
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO scans (id, status, started, updated, targets, ports, options, "
                 "tool, schema_version) VALUES ('s-old', 'finished', 'x', 'x', '[]', '5900', "
                 "'{}', 'old', 1)")
    conn.close()
    with Store.open(path) as store, Ledger(store) as ledger:
        assert store.get_scan("s-old") is not None
        assert spend(ledger, 1) == [True]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == DB_VERSION


def test_a_store_that_cannot_be_written_grants_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with Store.open(path) as store, Ledger(store) as ledger:
        spend(ledger, 1)
    store = Store.open(path)
    with store.reading("test") as conn:
        # What a read-only file or mount does to writes (root ignores file modes).
        conn.execute("PRAGMA query_only = 1")
    with store, Ledger(store) as ledger:
        (decision,) = ledger.admit([SERVER])
        assert not decision.allowed
        assert decision.reason.startswith("not probed: the connection ledger cannot be written")
        answer = ledger.answer(decision)
    assert answer.state is State.VNC  # the facts read before, still readable
    assert answer.extra.budget is not None
    assert "cannot be written" in answer.extra.budget.reason
    line = budget.summary_note([answer.extra.budget])
    assert line is not None and line.startswith("1 not probed: the connection ledger cannot be "
                                                "written (cannot reserve connections in the ")
    assert line.endswith("), so a connection could not be counted"), line


def test_ages_and_orderings_survive_a_wall_clock_jump() -> None:
    boot = "b1"
    then = Instant(1_000_000.0, boot, 100.0)
    back = Instant(1_000_000.0 - 3600 + 30, boot, 130.0)  # NTP stepped the clock back 1 h
    ahead = Instant(1_000_000.0 + 86400 + 30, boot, 130.0)
    assert elapsed(then, back) == 30 and elapsed(then, ahead) == 30
    assert clock_jump(then, back) == pytest.approx(-3600)
    assert clock_jump(then, ahead) == pytest.approx(86400)
    assert clock_jump(then, Instant(1_000_031.0, boot, 130.0)) is None  # 1 s drift: no jump
    other_boot = Instant(999_000.0, "b2", 5.0)  # another boot, and the wall clock went back
    assert elapsed(then, other_boot) is None
    # A server process is known to have restarted only when a clock can tell.
    assert started_after(then, Instant(1_000_010.0, boot, 110.0))
    assert not started_after(then, Instant(1_000_010.0, boot, 90.0))
    assert started_after(then, Instant(5.0, "b2", 3.0))  # this host rebooted since
    assert not started_after(then, Instant(1_000_010.0, "", None))


def test_a_server_restart_resets_its_tally(store: Store) -> None:
    with Ledger(store) as ledger:
        assert spend(ledger, 5) == [True] * 4 + [False]
        now = ledger.clock.now()
        later = Instant(now.wall + 1, now.boot, (now.uptime or 0) + 1)
        (decision,) = ledger.admit([SERVER], restarted={(SERVER.host, SERVER.port): later})
        assert decision.allowed and decision.spent == 0
        ledger.release([decision])


def test_budget_note_round_trips_through_json(store: Store) -> None:
    with Ledger(store) as ledger:
        spend(ledger, 4)
        (decision,) = ledger.admit([SERVER])
        answer = ledger.answer(decision, liveness="open")
    again = ServiceResult.from_dict(json.loads(json.dumps(answer.to_dict())))
    assert again.extra.budget is not None and again.extra.budget.liveness == "open"
    assert budget.table_note(again).startswith("not re-probed; read")
    assert budget.table_note(again).endswith("; port open now")


def test_the_summary_says_what_the_ledger_answered_in_plain_words(store: Store) -> None:
    """The line under a scan's summary: how many services were answered from the ledger, what
    one more connection would cost (the block's length, the address), what is shown."""
    fresh = Target("198.18.7.8", 5901)  # nothing read from it before
    with Ledger(store, alternates=()) as ledger:
        spend(ledger, 4)
        for _ in range(4):  # four connections charged, none read (a run killed mid-way)
            (d,) = ledger.admit([fresh])
            ledger.abandon([d], [])
        read, unread = ledger.admit([SERVER, fresh])
        answers = [ledger.answer(read), ledger.answer(unread)]
    notes = [a.extra.budget for a in answers]
    assert budget.summary_note([None, *[n for n in notes if n and n.probed]]) is None
    line = budget.summary_note(notes[:1])
    assert line is not None and line.startswith("1 service not re-probed: one more connection ")
    assert "would make the server refuse our address (" in line and "it, for 10 s;" in line
    assert "shown with the facts read last and their age" in line and "\n" not in line
    both = budget.summary_note(notes)
    assert both is not None and both.startswith("2 services not re-probed")
    assert "1 shown with the facts read last and their age, 1 without facts" in both
    assert answers[1].state is State.NOT_PROBED and answers[1].rfb is None
    import jsonschema

    from vncaudit.report.schema import report_schema

    schema = report_schema()
    for key in ("type", "required", "properties", "additionalProperties"):
        schema.pop(key)  # the document's own; what is left validates one service
    service = jsonschema.Draft202012Validator({**schema, "$ref": "#/$defs/service"})
    for answer in answers:
        service.validate(answer.to_dict())
    from vncaudit.web.views import verdict

    assert verdict(answers[1:], True).text.startswith("Not probed: 1 port, to keep the server")
    assert verdict(answers, True).text.startswith("Open: 1 VNC service reachable")
    assert budget.table_note(answers[1]) == "blacklist budget spent"


def test_local_destinations_get_another_loopback_source(store: Store) -> None:
    local = Target("127.0.0.1", 5999)
    with Ledger(store) as ledger:
        decisions = []
        for _ in range(6):
            (d,) = ledger.admit([local])
            decisions.append(d)
            ledger.record([(d, vnc_result(local))])
    assert [d.bind for d in decisions] == [None] * 4 + ["127.0.0.2"] * 2
    assert all(d.allowed for d in decisions)


def test_a_local_server_is_answered_once_every_loopback_budget_is_spent(store: Store) -> None:
    local = Target("127.0.0.1", 5998)
    with Ledger(store, alternates=("127.0.0.2", "127.0.0.3")) as ledger:
        decisions = []
        for _ in range(13):
            (d,) = ledger.admit([local])
            decisions.append(d)
            if d.allowed:
                ledger.record([(d, vnc_result(local))])
    assert [d.bind for d in decisions[:12]] == [None] * 4 + ["127.0.0.2"] * 4 + \
        ["127.0.0.3"] * 4
    last = decisions[12]
    assert not last.allowed and last.src == "127.0.0.1"
    assert "the next connection from 127.0.0.1 would make" in last.reason
    assert last.reason.endswith("so would one from any other loopback address (each has "
                                "spent its budget)")


def test_a_sharded_scan_ships_the_ledger_s_decisions(tmp_path: Path) -> None:
    """--workers: the client decides (workers write no store), ships the decisions, stores
    the ledger's answer for a denied pair and records what the workers read."""
    pytest.importorskip("distributed")
    from vncaudit import cluster
    from vncaudit.engine import ScanOptions
    from vncaudit.probe import ProbeOptions
    from vncaudit.targets import build_target_space

    from netns import fake_servers, types_for

    hosts = [h for h in (f"127.89.0.{i}" for i in range(1, 30)) if b"\x01" not in types_for(h)]
    spent, fresh = hosts[:2]  # lists without None: no probe authenticates (and clears)
    with socket_port() as port, fake_servers(port, [spent, fresh]):
        db = tmp_path / "sharded.db"
        with Store.open(db) as store, Ledger(store, alternates=()) as ledger:
            for _ in range(4):  # the four free connections of `spent`, made before
                (d,) = ledger.admit([Target(spent, port)])
                ledger.record([(d, vnc_result(Target(spent, port)))])
            space = build_target_space([spent, fresh], [port])
            scan_id = store.create_scan(space.describe(), str(port), {"seed": space.seed})
            run = cluster.scan_sharded(space, ScanOptions(probe=ProbeOptions(timeout=2)), store,
                                       scan_id, cluster.ClusterSpec(workers=1), shards=2,
                                       assess_results=False, ledger=ledger)
            assert run.complete, run.failed
            results = {r.host: r for r in store.results(scan_id)}
            with store.reading("test") as conn:
                rows = dict(conn.execute("SELECT dst, spent FROM budget_ledger").fetchall())
    answered = results[spent].extra.budget
    assert answered is not None and answered.probed is False  # answered, not connected
    assert results[spent].state is State.VNC
    assert results[fresh].state is State.VNC and results[fresh].extra.budget is None
    assert rows == {spent: 4, fresh: 1}


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def test_many_ports_of_many_hosts_in_one_batch_keep_their_own_tallies(store: Store) -> None:
    targets = [Target(f"198.18.9.{h}", 5900 + p) for h in range(1, 40) for p in range(5)]
    tiger = {t: p % 2 == 0 for p, t in enumerate(targets)}  # half TigerVNC: 4 free each
    with Ledger(store) as ledger:
        for round_ in range(6):
            decisions = ledger.admit(targets)
            granted = [(d, vnc_result(d.target, "TigerVNC" if tiger[d.target] else "x11vnc"))
                       for d in decisions if d.allowed]
            ledger.record(granted)
            # TigerVNC lets four connections pass; x11vnc counts none: never limited.
            assert {d.target for d in decisions if not d.allowed} == (
                {t for t in targets if tiger[t]} if round_ >= 4 else set())
    with store.reading("test") as conn:
        totals = dict(((d, p), n) for d, p, n in conn.execute(
            "SELECT dst, port, total FROM budget_ledger"))
    assert totals == {(t.host, t.port): 4 if tiger[t] else 6 for t in targets}
