"""vncaudit.store: round-trips, write-once rule, resume after a real kill -9, diff, WAL readers.

Every test uses its own database under tmp_path. The kill tests start a real child Python
process that writes in a loop and SIGKILL it mid-write.

Timing (not asserted; development VM, SQLite 3.40.1, Python 3.11.7, DB on ext4): 100,000
realistic VNC results (VeNCrypt facts, one finding, 80-char transcript; ~1.3 KB of JSON each)
take 3.7-4.1 s one by one with `add_result` (24,000-27,000/s, default batch of 500) and
2.4-2.7 s with `add_results` in chunks of 1,000 (36,000-42,000/s); `mark_done_many` of
100,000 closed pairs 0.23 s; `done_pairs` of 100,000 0.07 s; `results` of 100,000 3.3 s
(JSON decoding); `diff` of two equal 100,000-service scans 0.5 s (diff_key, no decoding).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from vncaudit.diff import diff_key
from vncaudit.exceptions import VncAuditError
from vncaudit.models import (
    SILENT_STATES,
    Capability,
    Finding,
    Framebuffer,
    NamedType,
    Product,
    RfbFacts,
    ServiceResult,
    Severity,
    State,
    TightInfo,
    VeNCryptInfo,
)
from vncaudit.payloads import Extras, TlsSession
from vncaudit.store import (
    DB_VERSION,
    Store,
    StoreError,
    UnknownScanError,
    compare_results,
    default_db_path,
)

TESTS_DIR = Path(__file__).parent

# -- realistic results (shapes taken from the recorded transcripts in tests/transcripts) -------

VNC_AUTH = NamedType(2, "VNC Authentication")
NONE = NamedType(1, "None")
VENCRYPT = NamedType(19, "VeNCrypt")
TIGHT = NamedType(16, "Tight")

NO_AUTH = Finding(
    "vnc-no-auth",
    Severity.CRITICAL,
    "VNC without authentication",
    ("security types offered: 1 (None)", "SecurityResult ok"),
    "Anyone who reaches the port gets the desktop.",
    ("require-password", "bind-localhost"),
)
DES_AUTH = Finding(
    "vnc-des-auth-only",
    Severity.MEDIUM,
    "Only DES challenge-response authentication",
    ("security types offered: 2 (VNC Authentication)",),
    "Passwords are truncated to 8 characters and the challenge can be cracked offline.",
    ("use-vencrypt",),
)
TLS_NONE = Finding(
    "vnc-vencrypt-tlsnone",
    Severity.HIGH,
    "VeNCrypt TLSNone: encrypted but unauthenticated",
    ("VeNCrypt sub-type 257 (TLSNone)",),
    "Anyone can log in; the channel is only anonymously encrypted.",
    ("require-password",),
)


def tigervnc_vencrypt(host: str = "127.0.0.1", port: int = 5903) -> ServiceResult:
    return ServiceResult(
        host=host,
        port=port,
        state=State.VNC,
        rfb=RfbFacts(
            banner="RFB 003.008\n",
            server_version="3.8",
            client_version="3.8",
            security_types=(VENCRYPT, VNC_AUTH),
            vencrypt=VeNCryptInfo(
                "0.2",
                (
                    NamedType(258, "TLSVnc"),
                    NamedType(2, "VNC Authentication"),
                    NamedType(257, "TLSNone"),
                ),
            ),
            auth_required=False,
            notes=("anonymous TLS handshake done for TLSNone",),
        ),
        product=Product("TigerVNC", "1.12", 0.8, ("VeNCrypt 0.2 with TLSVnc first",)),
        findings=(TLS_NONE, DES_AUTH),
        transcript_hex="524642203030332e3030380a0213020002",
        hostname="vnc.lab.test",
        elapsed=0.0123,
        extra=Extras(tls=TlsSession("TLSv1.2", "AECDH-AES256-SHA", True, False)),
    )


def xtightvnc(host: str = "127.0.0.1", port: int = 5954) -> ServiceResult:
    return ServiceResult(
        host=host,
        port=port,
        state=State.VNC,
        rfb=RfbFacts(
            banner="RFB 003.008\n",
            server_version="3.8",
            client_version="3.8",
            security_types=(VNC_AUTH, TIGHT),
            tight=TightInfo(
                tunnels=(Capability(0, "TGHT", "NOTUNNEL"),),
                auth=(Capability(2, "STDV", "VNCAUTH_"),),
            ),
            auth_required=True,
            selected_type=16,
        ),
        product=Product("TightVNC", None, 0.9, ("Tight capabilities STDV VNCAUTH_",)),
        findings=(DES_AUTH,),
        transcript_hex="524642203030332e3030380a020210",
        elapsed=0.5,
    )


def x11vnc_none(host: str = "127.0.0.1", port: int = 5960) -> ServiceResult:
    return ServiceResult(
        host=host,
        port=port,
        state=State.VNC,
        rfb=RfbFacts(
            banner="RFB 003.008\n",
            server_version="3.8",
            client_version="3.8",
            security_types=(NONE,),
            auth_required=False,
            security_result="ok",
            desktop_name="x11vnc ünïcode \u2603",
            framebuffer=Framebuffer(800, 600, 24, 32, False, True),
            selected_type=1,
            tls_inner_types=None,
        ),
        product=Product("x11vnc", "0.9.16", 0.95),
        findings=(NO_AUTH,),
        transcript_hex="524642203030332e3030380a010100000000",
        elapsed=0.0042,
    )


def weird(host: str = "::1", port: int = 5999) -> ServiceResult:
    """Hostile strings: a lone surrogate (surrogateescape'd byte), NUL, quotes, newlines."""
    return ServiceResult(
        host=host,
        port=port,
        state=State.MALFORMED,
        rfb=RfbFacts(
            banner="RFB 003.00\udcff\n",
            failure_reason='bad "reason"\x00\nline2',
            desktop_name="\udc80\x00'; DROP TABLE results; --",
            tls_inner_types=(NamedType(999, "unknown type 999"),),
        ),
        error="length 4294967295 above cap",
        elapsed=1.0,
    )


REALISTIC = [tigervnc_vencrypt, xtightvnc, x11vnc_none, weird]


def make_result(i: int) -> ServiceResult:
    """The i-th result of a deterministic synthetic scan (used by the child processes too)."""
    host, port = pair(i)
    kind = i % 4
    if kind == 0:
        return tigervnc_vencrypt(host, port)
    if kind == 1:
        return xtightvnc(host, port)
    if kind == 2:
        return x11vnc_none(host, port)
    return ServiceResult(host, port, State.CLOSED)  # marked done, not stored


def pair(i: int) -> tuple[str, int]:
    """(10.0.0.0, 5900), (10.0.0.0, 5901), (10.0.0.1, 5900), … (i < 131072)."""
    j = i // 2
    return f"10.0.{j >> 8}.{j & 255}", 5900 + i % 2


def index_of(host: str, port: int) -> int:
    """The inverse of `pair`."""
    third, fourth = (int(x) for x in host.split(".")[2:])
    return 2 * (third * 256 + fourth) + port - 5900


def write_item(store: Store, scan_id: str, i: int) -> bool:
    result = make_result(i)
    if result.state in SILENT_STATES:
        return store.mark_done(scan_id, result.host, result.port, result.state)
    return store.add_result(scan_id, result)


def same(a: ServiceResult, b: ServiceResult) -> bool:
    """Equality, and the same schema-v1 dict (`extra`'s payloads included)."""
    return a == b and a.extra == b.extra and a.to_dict() == b.to_dict()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "scans.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as s:
        yield s


def new_scan(store: Store, targets: list[str] | None = None, **options: object) -> str:
    targets = targets or ["127.0.0.1"]
    return store.create_scan(targets, "5900-5910", {"targets": targets, "seed": 7, **options})


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


# -- opening ------------------------------------------------------------------------------------


def test_pair_helpers() -> None:
    assert [pair(i) for i in (0, 1, 2, 513)] == [
        ("10.0.0.0", 5900), ("10.0.0.0", 5901), ("10.0.0.1", 5900), ("10.0.1.0", 5901)
    ]
    assert all(index_of(*pair(i)) == i for i in range(0, 100_000, 37))


def test_default_db_path_rules(tmp_path: Path) -> None:
    home = Path.home()
    default = home / ".local/share/vncaudit/vncaudit.db"
    assert default_db_path({}) == default
    assert default_db_path({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "vncaudit/vncaudit.db"
    # a relative XDG_DATA_HOME is invalid per the XDG spec and ignored
    assert default_db_path({"XDG_DATA_HOME": "rel/dir"}) == default
    env = {"VNCAUDIT_DB": str(tmp_path / "x.db"), "XDG_DATA_HOME": "/elsewhere"}
    assert default_db_path(env) == tmp_path / "x.db"
    assert default_db_path({"VNCAUDIT_DB": "~/v.db"}) == home / "v.db"


def test_open_default_path_creates_dirs_and_uses_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VNCAUDIT_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with Store.open() as s:
        assert s.path == tmp_path / "xdg/vncaudit/vncaudit.db"
        assert s.journal_mode == "wal"
        new_scan(s)
    conn = raw(tmp_path / "xdg/vncaudit/vncaudit.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    assert conn.execute("PRAGMA user_version").fetchone()[0] == DB_VERSION
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_stored_result_writes_only_the_indexes_its_readers_use(tmp_path: Path) -> None:
    """results_host and findings_id are gone (also from a database made before them), and
    every look-up of a result, its findings and its count still goes through an index."""
    old = tmp_path / "old.db"
    Store.open(old).close()
    conn = raw(old)  # as a database of schema version 4 holds them
    conn.execute("CREATE INDEX results_host ON results (host, port)")
    conn.execute("CREATE INDEX findings_id ON findings (finding_id, severity)")
    conn.execute(f"PRAGMA user_version = {DB_VERSION - 1}")
    conn.close()
    for db in (old, tmp_path / "new.db"):
        with Store.open(db) as s:
            sid = new_scan(s)
            s.add_results(sid, [x11vnc_none(f"10.0.0.{i}", 5900) for i in range(1, 4)])
            assert s.get_scan(sid) is not None and s.get_scan(sid).counts["findings"] > 0
        conn = raw(db)
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "results_host" not in names and "findings_id" not in names
        assert "findings_result" in names
        for sql, args in (
                ("SELECT result FROM results WHERE scan_id = ? AND host = ? AND port = ?",
                 (sid, "10.0.0.1", 5900)),
                ("SELECT count(*) FROM findings WHERE scan_id = ?", (sid,)),
                ("DELETE FROM findings WHERE scan_id = ? AND host = ? AND port = ?",
                 (sid, "10.0.0.1", 5900))):
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                                 args))
            assert "USING" in plan and "INDEX" in plan, (sql, plan)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _copied_alone(db: Path, where: Path) -> sqlite3.Connection:
    """The database file copied without its -wal and -shm, as a user copies a .db."""
    where.write_bytes(db.read_bytes())
    return raw(where)


def test_checkpoint_makes_the_file_whole_while_the_store_stays_open(db: Path,
                                                                    tmp_path: Path) -> None:
    """What a scan wrote before `checkpoint` is in the database file itself (a copy of the
    .db alone reads it), while the store is still open and writing; `close` does the rest."""
    with Store.open(db) as s:
        scan_id = new_scan(s)
        s.add_results(scan_id, [make_result(i) for i in range(40)])
        s.flush()
        before = _copied_alone(db, tmp_path / "before.db")
        # The control: committed, but only in the write-ahead log so far.
        assert before.execute("SELECT count(*) FROM sqlite_master WHERE name = 'results'"
                              ).fetchone()[0] == 0
        before.close()
        s.add_results(scan_id, [make_result(i) for i in range(40, 50)])  # left in the batch
        s.checkpoint()
        during = _copied_alone(db, tmp_path / "during.db")
        assert during.execute("SELECT count(*) FROM results WHERE scan_id = ?",
                              (scan_id,)).fetchone()[0] == 50
        assert during.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        during.close()
        s.add_results(scan_id, [make_result(i) for i in range(50, 60)])
        s.finish_scan(scan_id)
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    after = _copied_alone(db, tmp_path / "after.db")
    assert after.execute("SELECT count(*), max(status) FROM results JOIN scans "
                         "ON scans.id = results.scan_id").fetchone() == (60, "finished")


def test_checkpoint_of_a_closed_store_is_a_store_error(db: Path) -> None:
    s = Store.open(db)
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.checkpoint()


def test_open_env_var_and_nested_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a" / "b" / "c.db"
    monkeypatch.setenv("VNCAUDIT_DB", str(path))
    with Store.open() as s:
        assert s.path == path
    assert path.is_file()


def test_reopen_keeps_data_and_does_not_remigrate(db: Path) -> None:
    with Store.open(db) as s:
        scan_id = new_scan(s)
        s.add_result(scan_id, x11vnc_none())
    with Store.open(db) as s:
        assert [r.host for r in s.results(scan_id)] == ["127.0.0.1"]


def test_many_processes_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    code = "import sys; from vncaudit.store import Store; Store.open(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(6)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    with Store.open(path) as s:
        assert s.list_scans() == []


def test_not_a_database_is_a_one_line_store_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as info:
        Store.open(bogus)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, VncAuditError)


def test_newer_schema_is_refused(db: Path) -> None:
    Store.open(db).close()
    raw(db).execute(f"PRAGMA user_version = {DB_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store.open(db)


def test_unwritable_parent_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create"):
        Store.open(blocker / "sub" / "x.db")


# -- scans ----------------------------------------------------------------------------------------


def test_create_get_finish_reopen_scan(store: Store) -> None:
    options = {"targets": ["10.0.0.0/24"], "ports": "5900", "seed": 1234, "excludes": ["10.0.0.1"],
               "timeout": 5.0, "concurrency": 512, "discovery": "connect"}
    scan_id = store.create_scan(["10.0.0.0/24"], "5900", options)
    assert re.fullmatch(r"s-\d{8}-[0-9a-f]{6}", scan_id)
    rec = store.get_scan(scan_id)
    assert rec is not None
    assert rec.status == "running" and rec.finished is None
    assert rec.targets == ("10.0.0.0/24",) and rec.ports == "5900"
    assert rec.options == options
    assert rec.tool.startswith("vncaudit ")
    assert rec.schema_version == 1
    assert rec.counts["done"] == 0

    store.add_result(scan_id, x11vnc_none("10.0.0.5", 5900))
    store.add_result(scan_id, xtightvnc("10.0.0.6", 5900))
    store.mark_done(scan_id, "10.0.0.7", 5900, State.CLOSED)
    rec = store.get_scan(scan_id)
    assert rec is not None  # live counts see this store's own open batch
    assert rec.counts["done"] == 3 and rec.counts["results"] == 2

    done = store.finish_scan(scan_id)
    assert done.status == "finished" and done.finished is not None
    assert done.counts == {
        "done": 3, "results": 2, "services": 2, "vnc": 2, "no_auth": 1, "findings": 2,
        "critical": 1, "high": 0, "medium": 1, "low": 0, "info": 0,
    }
    as_json = done.to_dict()
    assert set(as_json) >= {"id", "started", "finished", "targets", "ports", "tool"}
    json.dumps(as_json)

    again = store.reopen_scan(scan_id)
    assert again.status == "running" and again.finished is None
    assert store.finish_scan(scan_id, "interrupted").status == "interrupted"


def test_scan_errors(store: Store) -> None:
    with pytest.raises(StoreError, match="JSON"):
        store.create_scan(["x"], "5900", {"bad": object()})
    scan_id = new_scan(store)
    with pytest.raises(StoreError, match="status"):
        store.finish_scan(scan_id, "bogus")  # type: ignore[arg-type]


def test_unknown_scan_id_is_a_typed_one_line_error(store: Store, db: Path) -> None:
    assert store.get_scan("s-nope") is None
    scan_id = new_scan(store)
    store.add_result(scan_id, x11vnc_none())  # pending in the open batch
    for call in (
        lambda: store.add_result("s-nope", x11vnc_none()),
        lambda: store.mark_done("s-nope", "1.2.3.4", 5900, State.CLOSED),
        lambda: store.results("s-nope"),
        lambda: store.done_pairs("s-nope"),
        lambda: store.finish_scan("s-nope"),
        lambda: store.require_scan("s-nope"),
        lambda: store.diff(scan_id, "s-nope"),
        lambda: store.diff("s-nope", scan_id),
    ):
        with pytest.raises(UnknownScanError) as info:
            call()
        assert str(info.value) == "unknown scan id: 's-nope' (see `vncaudit results`)"
        assert isinstance(info.value, StoreError) and isinstance(info.value, VncAuditError)
    # the error did not throw away the batch written before it
    store.flush()
    assert raw(db).execute("SELECT count(*) FROM results").fetchone()[0] == 1


def test_list_scans_order_limit_and_filters(store: Store) -> None:
    a = new_scan(store, ["192.0.2.0/24"])
    store.mark_done(a, "192.0.2.10", 5900, State.FILTERED)
    b = new_scan(store, ["2001:db8::/120", "vnc.lab.test"])
    store.add_result(b, x11vnc_none("2001:db8::5", 5900))
    c = new_scan(store, ["192.0.2.10"])
    store.finish_scan(c)

    assert [s.id for s in store.list_scans()] == [c, b, a]  # newest first
    assert [s.id for s in store.list_scans(limit=2)] == [c, b]
    assert [s.id for s in store.list_scans(target="192.0.2.10")] == [c, a]  # expr or host
    assert [s.id for s in store.list_scans(target="192.0.2.0/24")] == [a]
    assert [s.id for s in store.list_scans(target="vnc.lab.test")] == [b]
    # a host is matched in canonical form
    assert [s.id for s in store.list_scans(target="2001:0db8:0::5")] == [b]
    assert [s.id for s in store.list_scans(status="finished")] == [c]
    assert store.list_scans(target="203.0.113.1") == []

    latest = store.latest_scan_for("192.0.2.10")
    assert latest is not None and latest.id == c
    assert store.latest_scan_for("198.51.100.1") is None


def test_delete_scan_removes_everything(store: Store, db: Path) -> None:
    keep, gone = new_scan(store), new_scan(store)
    for scan_id in (keep, gone):
        store.add_result(scan_id, tigervnc_vencrypt())
        store.mark_done(scan_id, "127.0.0.2", 5900, State.CLOSED)
    store.delete_scan(gone)
    assert store.get_scan(gone) is None
    conn = raw(db)
    for table in ("results", "findings", "done"):
        rows = conn.execute(f"SELECT DISTINCT scan_id FROM {table}").fetchall()
        assert rows == [(keep,)], table


# -- results --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", REALISTIC, ids=lambda f: f.__name__)
def test_result_round_trip_is_exact(db: Path, factory: Callable[[], ServiceResult]) -> None:
    original = factory()
    with Store.open(db) as s:
        scan_id = new_scan(s)
        assert s.add_result(scan_id, original) is True
    with Store.open(db) as s:  # a fresh connection: it really came from the file
        back = s.results(scan_id, include_closed=True)
    assert len(back) == 1
    assert same(back[0], original)


def test_round_trip_of_many_results_and_address_order(store: Store) -> None:
    scan_id = new_scan(store)
    originals = [f("10.0.0.10", 5900 + n) for n, f in enumerate(REALISTIC)]
    originals += [x11vnc_none("10.0.0.9", 5901), x11vnc_none("9.0.0.1", 5900),
                  x11vnc_none("::1", 5900), x11vnc_none("vnc.example", 5900)]
    assert store.add_results(scan_id, reversed(originals)) == len(originals)
    back = store.results(scan_id)
    assert [(r.host, r.port) for r in back] == [
        ("9.0.0.1", 5900), ("10.0.0.9", 5901), ("10.0.0.10", 5900), ("10.0.0.10", 5901),
        ("10.0.0.10", 5902), ("10.0.0.10", 5903), ("::1", 5900), ("vnc.example", 5900),
    ]
    by_key = {(r.host, r.port): r for r in originals}
    assert all(same(r, by_key[(r.host, r.port)]) for r in back)


def test_findings_are_queryable(store: Store, db: Path) -> None:
    scan_id = new_scan(store)
    store.add_result(scan_id, tigervnc_vencrypt())
    store.add_result(scan_id, x11vnc_none())
    store.flush()
    rows = raw(db).execute(
        "SELECT host, port, finding_id, severity FROM findings ORDER BY finding_id"
    ).fetchall()
    assert rows == [
        ("127.0.0.1", 5903, "vnc-des-auth-only", "medium"),
        ("127.0.0.1", 5960, "vnc-no-auth", "critical"),
        ("127.0.0.1", 5903, "vnc-vencrypt-tlsnone", "high"),
    ]
    worst = raw(db).execute("SELECT port, severity FROM results ORDER BY port").fetchall()
    assert worst == [(5903, "high"), (5960, "critical")]


def test_duplicates_are_ignored_first_write_wins(store: Store, db: Path) -> None:
    scan_id = new_scan(store)
    first = tigervnc_vencrypt()
    second = ServiceResult(first.host, first.port, State.TARPIT, elapsed=5.0)
    assert store.add_result(scan_id, first) is True
    assert store.add_result(scan_id, second) is False
    assert store.add_results(scan_id, [first, second, x11vnc_none()]) == 1
    assert store.mark_done(scan_id, first.host, first.port, State.CLOSED) is False
    store.flush()
    conn = raw(db)
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM findings").fetchone()[0] == 3
    assert conn.execute("SELECT state FROM done WHERE port = 5903").fetchall() == [("vnc",)]
    assert same(store.results(scan_id)[0], first)
    # the same pair in another scan is a different row
    other = new_scan(store)
    assert store.add_result(other, first) is True


def test_update_result_replaces_result_and_findings(store: Store, db: Path) -> None:
    scan_id = new_scan(store)
    before = tigervnc_vencrypt()
    store.add_result(scan_id, before)
    regraded = ServiceResult(before.host, before.port, before.state, before.rfb,
                             Product("TigerVNC", "1.13", 0.9), (NO_AUTH,), before.transcript_hex)
    assert store.update_result(scan_id, regraded) is True
    assert [same(r, regraded) for r in store.results(scan_id)] == [True]
    store.flush()
    assert raw(db).execute("SELECT finding_id FROM findings").fetchall() == [("vnc-no-auth",)]
    # an update of an absent pair inserts it
    assert store.update_result(scan_id, xtightvnc()) is False
    assert len(store.results(scan_id)) == 2


def test_a_failed_call_is_undone_but_the_batch_survives(store: Store, db: Path) -> None:
    scan_id = new_scan(store)
    store.add_result(scan_id, make_result(0))  # in the open batch

    def broken() -> Iterator[ServiceResult]:
        yield make_result(1)
        raise RuntimeError("engine bug")

    with pytest.raises(RuntimeError):
        store.add_results(scan_id, broken())
    store.flush()
    assert store.done_pairs(scan_id) == {pair(0)}  # all of the failed call, none of the rest
    assert raw(db).execute("SELECT count(*) FROM findings").fetchone()[0] == 2


def test_mark_done_and_closed_results(store: Store) -> None:
    scan_id = new_scan(store)
    assert store.mark_done(scan_id, "10.0.0.1", 5900, State.CLOSED) is True
    assert store.mark_done(scan_id, "10.0.0.1", 5900, "closed") is False
    assert store.mark_done_many(
        scan_id, [("10.0.0.2", 5900, State.FILTERED), ("10.0.0.1", 5900, State.CLOSED)]
    ) == 1
    assert store.mark_done_many(scan_id, []) == 0
    # a pair marked closed that later gets a full result (a retry) takes the result's state
    assert store.add_result(scan_id, x11vnc_none("10.0.0.2", 5900)) is True
    # a closed pair stored as a full result (--all)
    store.add_result(scan_id, ServiceResult("10.0.0.3", 5900, State.CLOSED, elapsed=0.001))

    assert store.is_done(scan_id, "10.0.0.1", 5900)
    assert not store.is_done(scan_id, "10.0.0.9", 5900)
    assert store.done_pairs(scan_id) == {
        ("10.0.0.1", 5900), ("10.0.0.2", 5900), ("10.0.0.3", 5900)
    }
    assert [(r.host, r.state) for r in store.results(scan_id)] == [("10.0.0.2", State.VNC)]
    everything = store.results(scan_id, include_closed=True)
    assert [(r.host, r.state) for r in everything] == [
        ("10.0.0.1", State.CLOSED), ("10.0.0.2", State.VNC), ("10.0.0.3", State.CLOSED)
    ]
    assert everything[2].elapsed == 0.001  # the stored one, not a bare stand-in


def _packed(*pairs: tuple[str, int]) -> bytes:
    """Pairs as `Marks.keys` / `PACKED_PAIR`: address << 16 | port, little-endian, ascending."""
    keys = sorted(int(ipaddress.IPv4Address(h)) << 16 | p for h, p in pairs)
    return b"".join(k.to_bytes(8, "little") for k in keys)


def test_packed_silent_verdicts_read_back_as_rows_do(store: Store, db: Path) -> None:
    """A SYN sweep's bulk verdicts (one row for many pairs): every reader of recorded pairs
    sees them as it sees `done` rows: resume, counts, --all, diff, the host filter, delete."""
    a = new_scan(store, ["192.0.2.0/24"])
    store.add_result(a, x11vnc_none("192.0.2.1", 5900))
    store.mark_done(a, "192.0.2.2", 5900, State.CLOSED)
    silent = [("192.0.2.3", 5900), ("192.0.2.200", 5901), ("192.0.2.4", 5900)]
    assert store.mark_done_packed(a, State.FILTERED, _packed(*silent)) == 3
    assert store.mark_done_packed(a, State.FILTERED, b"") == 0
    with pytest.raises(StoreError):
        store.mark_done_packed(a, State.VNC, _packed(("192.0.2.9", 5900)))
    with pytest.raises(StoreError):
        store.mark_done_packed(a, State.FILTERED, b"\x01\x02")

    assert store.done_pairs(a) == {("192.0.2.1", 5900), ("192.0.2.2", 5900), *silent}
    assert store.is_done(a, "192.0.2.200", 5901)
    assert not store.is_done(a, "192.0.2.200", 5900)
    assert not store.is_done(a, "::1", 5900)
    assert store.get_scan(a).counts["done"] == 5  # type: ignore[union-attr]
    assert store.finish_scan(a).counts["done"] == 5
    assert [(r.host, r.state) for r in store.results(a)] == [("192.0.2.1", State.VNC)]
    everything = store.results(a, include_closed=True)
    assert [(r.host, r.port, r.state) for r in everything] == [
        ("192.0.2.1", 5900, State.VNC), ("192.0.2.2", 5900, State.CLOSED),
        ("192.0.2.3", 5900, State.FILTERED), ("192.0.2.4", 5900, State.FILTERED),
        ("192.0.2.200", 5901, State.FILTERED)]
    # a host probed only in bulk is found by `history --target`
    assert [s.id for s in store.list_scans(target="192.0.2.200")] == [a]
    assert [s.id for s in store.list_scans(target="192.0.2.5")] == []

    # diff: the service of A is filtered in B (gone), not "not scanned"
    b = new_scan(store, ["192.0.2.0/24"])
    store.mark_done_packed(b, State.FILTERED, _packed(("192.0.2.1", 5900)))
    changes = store.diff(a, b)
    assert [(c.host, c.port) for c in changes.disappeared] == [("192.0.2.1", 5900)]
    assert not changes.not_rescanned

    store.delete_scan(a)
    store.flush()
    assert raw(db).execute("SELECT count(*) FROM done_packed WHERE scan_id = ?",
                           (a,)).fetchone()[0] == 0


def test_result_writer_writes_marks_in_bulk(store: Store) -> None:
    """`ResultWriter.add_marks`: one packed row per `Marks`, counted as stored; with
    `on_stored` each pair is still told one by one."""
    from vncaudit.discovery import Marks
    from vncaudit.store.writer import ResultWriter

    scan_id = new_scan(store)
    silent = [("10.1.0.1", 5900), ("10.1.0.2", 5900)]
    with ResultWriter(store, scan_id) as writer:
        writer.add_marks(Marks(State.FILTERED, None, _packed(*silent)))
        assert writer.pending == 2
    assert writer.stored == 2 and writer.repeated == 0
    assert store.done_pairs(scan_id) == set(silent)
    with store.reading("test") as conn:
        assert conn.execute("SELECT count(*) FROM done").fetchone()[0] == 0

    told: list[ServiceResult] = []
    other = new_scan(store)
    with ResultWriter(store, other, on_stored=told.append) as writer:
        writer.add_marks(Marks(State.FILTERED, None, _packed(*silent)))
    assert sorted((r.host, r.port, r.state) for r in told) == [
        (h, p, State.FILTERED) for h, p in silent]
    assert store.done_pairs(other) == set(silent)


# -- batching -------------------------------------------------------------------------------------


def test_writes_are_batched_and_flushed(db: Path) -> None:
    with Store.open(db, batch_size=3, batch_interval=3600) as s:
        scan_id = new_scan(s)
        reader = raw(db)

        def committed() -> int:
            return int(reader.execute("SELECT count(*) FROM done").fetchone()[0])

        s.add_result(scan_id, make_result(0))
        s.add_result(scan_id, make_result(1))
        assert committed() == 0  # still in the open batch
        assert s.is_done(scan_id, *pair(0))  # but visible to the writer itself
        s.mark_done(scan_id, *pair(3), State.CLOSED)
        assert committed() == 3  # the 3rd write committed the batch
        s.add_result(scan_id, make_result(2))
        s.set_position(scan_id, 4)
        assert committed() == 3
        s.flush()
        assert committed() == 4
        assert reader.execute("SELECT position FROM scans").fetchone()[0] == 4
        s.add_result(scan_id, make_result(4))
    assert committed() == 5  # close() commits


def test_batch_interval_commits_on_the_next_write(db: Path) -> None:
    with Store.open(db, batch_size=10_000, batch_interval=0.05) as s:
        scan_id = new_scan(s)
        s.add_result(scan_id, make_result(0))
        time.sleep(0.1)
        s.add_result(scan_id, make_result(1))
        assert raw(db).execute("SELECT count(*) FROM results").fetchone()[0] == 2
        s.add_result(scan_id, make_result(2))  # a new batch
        assert raw(db).execute("SELECT count(*) FROM results").fetchone()[0] == 2


# -- kill -9 and resume ---------------------------------------------------------------------------

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from test_store import write_item
from vncaudit.store import Store

db, scan_id, n, batch, interval, mode = sys.argv[2:8]
n, batch, interval = int(n), int(batch), float(interval)
with Store.open(db, batch_size=batch, batch_interval=interval) as st:
    for i in range(n):
        write_item(st, scan_id, i)
        if (i + 1) % batch == 0:
            print(i + 1, flush=True)
        if mode == "hang" and i + 1 == n:
            st.set_position(scan_id, n)
            print("pending", flush=True)
            sys.stdin.read()  # wait, holding the open batch, until killed
    print("end", flush=True)
"""


def child(db: Path, scan_id: str, n: int, batch: int, interval: float = 3600.0,
          mode: str = "run") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(TESTS_DIR), str(db), scan_id, str(n), str(batch),
         str(interval), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.stdout.close()


def check_consistent(db: Path, scan_id: str) -> set[tuple[str, int]]:
    """The file is sound and every stored row is complete; returns the done pairs."""
    conn = raw(db)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    with Store.open(db) as s:
        done = s.done_pairs(scan_id)
        stored = s.results(scan_id, include_closed=True)
    for r in stored:  # every result is whole and is exactly what was written
        assert same(r, make_result(index_of(r.host, r.port))), (r.host, r.port)
    assert {(r.host, r.port) for r in stored} == done
    # results ⊆ done, findings match their result, nothing written twice
    assert conn.execute(
        "SELECT count(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM done d WHERE "
        "d.scan_id = r.scan_id AND d.host = r.host AND d.port = r.port)"
    ).fetchone()[0] == 0
    for host, port, text, nfind in conn.execute(
        "SELECT r.host, r.port, r.result, (SELECT count(*) FROM findings f WHERE "
        "f.scan_id = r.scan_id AND f.host = r.host AND f.port = r.port) FROM results r "
        "WHERE r.scan_id = ?", (scan_id,)
    ):
        assert len(json.loads(text)["findings"]) == nfind, (host, port)
    rows, distinct = conn.execute(
        "SELECT count(*), count(DISTINCT host || ' ' || port) FROM results WHERE scan_id = ?",
        (scan_id,),
    ).fetchone()
    assert rows == distinct == sum(r.state != State.CLOSED for r in stored)
    return done


def resume(db: Path, scan_id: str, n: int) -> int:
    """What `--resume` does: skip what is done, write the rest; returns how many it wrote."""
    wrote = 0
    with Store.open(db) as s:
        s.reopen_scan(scan_id)
        done = s.done_pairs(scan_id)
        for i in range(n):
            if pair(i) in done:
                continue
            assert write_item(s, scan_id, i) is True  # never already there: nothing repeated
            wrote += 1
        s.finish_scan(scan_id)
    return wrote


@pytest.mark.parametrize("kill_after", [300, 1500, 4000])
def test_kill9_mid_write_then_resume_equals_uninterrupted(db: Path, kill_after: int) -> None:
    # The child writes at full speed and prints after each commit; it is killed as soon as the
    # parent reads `kill_after`, i.e. while it is writing the next batch. n is large enough that
    # it cannot finish in the parent's reaction time.
    n, batch = 12_000, 100
    with Store.open(db) as s:
        scan_id, reference = new_scan(s), new_scan(s)
        for i in range(n):  # the uninterrupted scan, for comparison
            write_item(s, reference, i)
    proc = child(db, scan_id, n, batch)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "end":
            pytest.fail("the child finished before it was killed")
        if int(line) >= kill_after:
            break
    kill9(proc)  # the child is writing its next batch right now

    done = check_consistent(db, scan_id)
    # commits are atomic and in order: what survived is exactly a whole-batch prefix
    assert len(done) % batch == 0 and kill_after <= len(done) < n
    assert done == {pair(i) for i in range(len(done))}

    assert resume(db, scan_id, n) == n - len(done)
    final = check_consistent(db, scan_id)
    with Store.open(db) as s:
        assert final == s.done_pairs(reference)
        got = [r.to_dict() for r in s.results(scan_id, include_closed=True)]
        want = [r.to_dict() for r in s.results(reference, include_closed=True)]
        assert got == want
        assert not s.diff(reference, scan_id)
        rec = s.get_scan(scan_id)
        assert rec is not None and rec.status == "finished" and rec.counts["done"] == n


def test_kill9_with_an_open_batch_loses_only_that_batch(db: Path) -> None:
    with Store.open(db) as s:
        scan_id = new_scan(s)
    proc = child(db, scan_id, n=250, batch=100, mode="hang")
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(3)]
    assert lines == ["100", "200", "pending"]  # 50 writes + a checkpoint are uncommitted
    kill9(proc)
    done = check_consistent(db, scan_id)
    assert done == {pair(i) for i in range(200)}
    with Store.open(db) as s:
        rec = s.get_scan(scan_id)
        assert rec is not None and rec.position is None  # the checkpoint died with its batch
        assert rec.status == "running"  # killed: still "running" until resumed or finished
        assert rec.updated >= rec.started  # the last committed batch, to spot stale scans
    assert resume(db, scan_id, 250) == 50
    assert check_consistent(db, scan_id) == {pair(i) for i in range(250)}


def test_kill9_with_time_based_commits(db: Path) -> None:
    with Store.open(db) as s:
        scan_id = new_scan(s)
    proc = child(db, scan_id, n=100_000, batch=10**9, interval=0.05)
    reader = raw(db)
    deadline = time.monotonic() + 30
    while reader.execute("SELECT count(*) FROM done").fetchone()[0] < 500:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.1)
    kill9(proc)
    done = check_consistent(db, scan_id)
    assert 0 < len(done) < 100_000
    assert done == {pair(i) for i in range(len(done))}


# -- readers while a writer writes ----------------------------------------------------------------


def test_reader_while_writer_process_writes(db: Path) -> None:
    n, batch = 20_000, 50
    with Store.open(db) as s:
        scan_id = new_scan(s)
    proc = child(db, scan_id, n, batch, interval=3600.0)
    seen: list[int] = []
    with Store.open(db) as reader:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            done = len(reader.done_pairs(scan_id))
            rec = reader.get_scan(scan_id)
            assert rec is not None
            seen.append(done)
            assert done % batch == 0  # a reader only ever sees whole batches
            if len(seen) % 10 == 1:
                assert len(reader.results(scan_id, include_closed=True)) >= done
            reader.list_scans()
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()
    proc.stdin.close()
    assert seen == sorted(seen)
    assert len(set(seen)) > 2, seen  # the reader really overlapped the writer
    assert check_consistent(db, scan_id) == {pair(i) for i in range(n)}


def test_one_store_shared_by_threads(db: Path) -> None:
    with Store.open(db, batch_size=64) as s:
        scan_id = new_scan(s)
        errors: list[BaseException] = []

        def work(start: int) -> None:
            try:
                for i in range(start, 2000, 4):
                    write_item(s, scan_id, i)
                    if i % 97 == 0:
                        s.results(scan_id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    assert check_consistent(db, scan_id) == {pair(i) for i in range(2000)}


def test_second_writer_waits_for_the_batch(db: Path) -> None:
    with Store.open(db, batch_interval=3600) as first, Store.open(db) as second:
        a = new_scan(first)
        first.add_result(a, make_result(0))  # first holds the write lock (open batch)
        threading.Timer(0.3, first.flush).start()
        t0 = time.monotonic()
        b = new_scan(second)  # waits for the flush instead of failing
        assert time.monotonic() - t0 >= 0.2
        assert second.add_result(b, make_result(0)) is True


# -- diff -----------------------------------------------------------------------------------------


def two_scans(store: Store, a: list[ServiceResult], b: list[ServiceResult],
              closed_in_b: Sequence[tuple[str, int]] = ()) -> tuple[str, str]:
    sa, sb = new_scan(store), new_scan(store)
    store.add_results(sa, a)
    store.add_results(sb, b)
    for host, port in closed_in_b:
        store.mark_done(sb, host, port, State.CLOSED)
    return sa, sb


def test_diff_identical_scans_is_empty(store: Store) -> None:
    results = [f() for f in REALISTIC]
    sa, sb = two_scans(store, results, [replace(r, elapsed=9.0, transcript_hex="00")
                                        for r in results])
    d = store.diff(sa, sb)
    assert not d and d.lines() == []


def test_diff_appeared_and_disappeared(store: Store) -> None:
    kept = xtightvnc("10.0.0.1", 5900)
    gone = tigervnc_vencrypt("10.0.0.2", 5900)
    unprobed = x11vnc_none("10.0.0.3", 5900)
    new = x11vnc_none("10.0.0.4", 5900)
    sa, sb = two_scans(store, [kept, gone, unprobed], [kept, new], [("10.0.0.2", 5900)])
    d = store.diff(sa, sb)
    assert [(x.host, x.status) for x in d.appeared] == [("10.0.0.4", "appeared")]
    assert [(x.host, x.status) for x in d.disappeared] == [("10.0.0.2", "disappeared")]
    assert d.changed == ()
    assert d.not_rescanned == (("10.0.0.3", 5900),)  # B never probed it: not "disappeared"
    assert d.appeared[0].after is not None and same(d.appeared[0].after, new)
    lines = d.lines()
    assert lines[0].startswith("+ 10.0.0.4:5900 appeared: vnc, no auth, types 1, x11vnc")
    assert "(not probed by" in lines[0]
    assert lines[1] == ("- 10.0.0.2:5900 disappeared (now closed; was vnc, no auth, "
                        "types 19,2, TigerVNC 1.12, worst high)")
    assert lines[2] == (f"? not probed by {sb}: 10.0.0.3:5900 (found by {sa}; nothing to "
                        "compare)")
    json.dumps(d.to_dict())


def test_diff_newly_no_auth(store: Store) -> None:
    before = xtightvnc("10.0.0.1", 5900)
    assert before.rfb is not None
    rfb = replace(before.rfb, security_types=(NONE, TIGHT), auth_required=False,
                  security_result="ok")
    after = ServiceResult(before.host, before.port, State.VNC, rfb, before.product, (NO_AUTH,))
    sa, sb = two_scans(store, [before], [after])
    d = store.diff(sa, sb)
    assert len(d.changed) == 1
    kinds = [c.kind for c in d.changed[0].changes]
    assert kinds == ["security_type_added", "security_type_removed", "newly_no_auth",
                     "severity_worse", "finding_added", "finding_removed"]
    by_kind = {c.kind: c for c in d.changed[0].changes}
    assert by_kind["newly_no_auth"].before is True and by_kind["newly_no_auth"].after is False
    assert by_kind["severity_worse"].before == "medium"
    assert by_kind["severity_worse"].after == "critical"
    assert "~ 10.0.0.1:5900 newly no-auth: a connection needs no password" in d.lines()
    assert "~ 10.0.0.1:5900 new security type 1 (None)" in d.lines()
    # and back again
    back = store.diff(sb, sa)
    assert "auth_now_required" in [c.kind for c in back.changed[0].changes]


def test_diff_new_security_type_and_vencrypt_subtypes(store: Store) -> None:
    before = xtightvnc("10.0.0.1", 5900)
    after_tiger = tigervnc_vencrypt("10.0.0.1", 5900)
    sa, sb = two_scans(store, [before], [after_tiger])
    changes = {c.kind: c for c in store.diff(sa, sb).changed[0].changes}
    assert changes["security_type_added"].text == "new security type 19 (VeNCrypt)"
    assert changes["security_type_added"].before == [2, 16]
    assert changes["security_type_added"].after == [2, 19]
    assert changes["security_type_removed"].text == "security type no longer offered: 16 (Tight)"
    assert changes["vencrypt_subtype_added"].text == (
        "new VeNCrypt sub-types 2 (VNC Authentication), 257 (TLSNone), 258 (TLSVnc)"
    )
    assert changes["product"].text == "product TightVNC → TigerVNC 1.12"
    assert changes["newly_no_auth"].after is False

    # only a VeNCrypt sub-type changes
    assert after_tiger.rfb is not None and after_tiger.rfb.vencrypt is not None
    fewer = VeNCryptInfo("0.2", after_tiger.rfb.vencrypt.subtypes[:2])
    rfb = replace(after_tiger.rfb, vencrypt=fewer, auth_required=True)
    hardened = ServiceResult(after_tiger.host, after_tiger.port, State.VNC, rfb,
                             after_tiger.product, (DES_AUTH,))
    sc = new_scan(store)
    store.add_result(sc, hardened)
    d = store.diff(sb, sc)
    assert [c.kind for c in d.changed[0].changes] == [
        "vencrypt_subtype_removed", "auth_now_required", "severity_better", "finding_removed"
    ]
    assert d.changed[0].lines()[0] == (
        "~ 10.0.0.1:5900 VeNCrypt sub-type no longer offered: 257 (TLSNone)"
    )


def test_diff_state_change_ipv6_address(store: Store) -> None:
    vnc = x11vnc_none("2001:db8::1", 5900)
    locked = ServiceResult("2001:db8::1", 5900, State.BLACKLISTED,
                           RfbFacts("RFB 003.008\n", "3.8", failure_reason="Too many security "
                                    "failures"))
    sa, sb = two_scans(store, [vnc], [locked])
    d = store.diff(sa, sb)
    first = d.changed[0]
    assert first.address == "[2001:db8::1]:5900"
    assert first.changes[0].kind == "state"
    assert first.lines()[0] == "~ [2001:db8::1]:5900 state vnc → blacklisted"


def test_diff_ignores_closed_results_stored_with_all(store: Store) -> None:
    closed = ServiceResult("10.0.0.1", 5900, State.CLOSED)
    sa, sb = two_scans(store, [closed], [x11vnc_none("10.0.0.1", 5900)])
    d = store.diff(sa, sb)
    assert [x.status for x in d.appeared] == ["appeared"]
    assert d.appeared[0].changes[0].before == "closed"
    assert "not probed" not in d.lines()[0]


def test_diff_key_agrees_with_compare_results() -> None:
    """Store.diff skips services whose stored diff_key is equal: that must never hide a change."""
    variants: list[ServiceResult] = []
    for f in REALISTIC:
        r = f("10.0.0.1", 5900)
        variants += [r, replace(r, elapsed=3.0, transcript_hex="ff", hostname=None)]
        if r.rfb is not None:
            variants.append(replace(r, rfb=replace(r.rfb, auth_required=None)))
            variants.append(replace(r, rfb=replace(r.rfb, desktop_name="other")))
        variants.append(replace(r, product=None))
        variants.append(replace(r, findings=tuple(
            replace(x, severity=Severity.LOW, title="retitled") for x in r.findings)))
        variants.append(replace(r, state=State.TARPIT))
    for a in variants:
        for b in variants:
            assert bool(compare_results(a, b)) == (diff_key(a) != diff_key(b)), (a, b)


def test_diff_key_is_the_compact_json_of_the_compared_facts() -> None:
    """Keys are compared across scans written by other versions: the text is exactly the
    store's compact JSON of [state, type ids, VeNCrypt sub-type ids, auth_required, product,
    "finding severity"], whatever the strings hold."""
    from vncaudit.diff import product_text
    from vncaudit.models import NamedType, Product, VeNCryptInfo

    def expected(r: ServiceResult) -> str:
        rfb = r.rfb
        return json.dumps([
            r.state.value,
            sorted(t.id for t in rfb.security_types) if rfb else [],
            sorted(t.id for t in rfb.vencrypt.subtypes) if rfb and rfb.vencrypt else [],
            rfb.auth_required if rfb else None,
            product_text(r),
            sorted(f"{f.id} {f.severity.value}" for f in r.findings),
        ], separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    variants: list[ServiceResult] = []
    for f in REALISTIC:
        r = f("10.0.0.1", 5900)
        variants += [r, replace(r, product=None), replace(r, state=State.TARPIT, rfb=None)]
        variants.append(replace(r, product=Product('Ünïcode "VNC"\\ \u2603 \udcff', "1.0\n")))
        if r.rfb is not None:
            for auth in (True, False, None):
                variants.append(replace(r, rfb=replace(
                    r.rfb, auth_required=auth,
                    security_types=(NamedType(19, "VeNCrypt"), NamedType(2, "VNC")),
                    vencrypt=VeNCryptInfo("0.2", (NamedType(263, "X509Plain"),
                                                  NamedType(1, "None"))))))
    assert len({expected(r) for r in variants}) > 10
    for r in variants:
        assert diff_key(r) == expected(r), r


def test_a_new_database_uses_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    from vncaudit.store import PAGE_SIZE

    fresh = tmp_path / "fresh.db"
    with Store.open(fresh) as store:
        store.create_scan(["10.0.0.1"], "5900", {})
    assert raw(fresh).execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with Store.open(old) as store:
        scan_id = store.create_scan(["10.0.0.1"], "5900", {})
        assert store.get_scan(scan_id) is not None
    assert raw(old).execute("PRAGMA page_size").fetchone()[0] == 4096
    assert raw(old).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_row_text_made_by_the_caller_is_the_row_the_store_makes(store: Store, db: Path) -> None:
    from vncaudit.jsontext import dumps_both

    plain, given = new_scan(store), new_scan(store)
    originals = [f("10.0.0.10", 5900 + n) for n, f in enumerate(REALISTIC)]
    store.add_results(plain, originals)
    texts = [dumps_both(r.to_dict())[0] for r in originals]
    assert store.add_results(given, originals, [*texts[:-1], None]) == len(originals)
    store.flush()
    rows = {scan: raw(db).execute("SELECT host, port, result FROM results WHERE scan_id = ? "
                                  "ORDER BY port", (scan,)).fetchall() for scan in (plain, given)}
    assert rows[plain] == rows[given] and len(rows[plain]) == len(originals)
    assert all(same(a, b) for a, b in zip(store.results(given), originals, strict=True))
