"""Sharded scans on Dask (vncaudit.cluster): shards cover the space exactly, results stream into
the store, finished shards are skipped on restart, a killed worker's shard reruns elsewhere and
the store keeps one verdict per (scan, host, port).

Fast tests run on loopback (127.88.0.0/22, a few fake RFB servers, every other address refuses).
The `netns` tests build the namespace test bed of docs/design.md §4 (fake RFB servers inside a
target namespace, every other address of 198.18.0.0/16 silent) and run `vncaudit scan --workers
2` inside the scanning namespace, so the Dask workers live there too. They need root: skipped
without it, failed under CI.

The fake servers and the namespace bed live in tests/netns.py (shared with test_discovery and
the benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


try:
    import distributed  # noqa: F401
except ImportError:
    if in_ci():
        raise  # CI installs the test dependencies: a missing Dask is a failure there
    pytest.skip("dask[distributed] is not installed", allow_module_level=True)

# The fake servers and the namespace bed are shared with test_discovery and bench/ (netns.py).
from netns import (  # noqa: E402  (after the Dask check above)
    TARGET_NET,
    TYPE_LISTS,
    Bed,
    fake_servers,
    live_hosts,
    netns_bed,
    require_netns,
    types_for,
)

__all__ = ["TARGET_NET", "TYPE_LISTS", "Bed", "fake_servers", "live_hosts", "netns_bed",
           "require_netns", "types_for"]


# ---------------------------------------------------------------------------------------------
# Helpers


def verdicts(db: Path, scan_id: str) -> dict[tuple[str, int], tuple[str, tuple[int, ...]]]:
    """Every recorded (host, port) → (state, offered security types), straight from SQLite."""
    with sqlite3.connect(db) as conn:
        done = conn.execute("SELECT host, port, state FROM done WHERE scan_id = ?",
                            (scan_id,)).fetchall()
        rows = conn.execute("SELECT host, port, result FROM results WHERE scan_id = ?",
                            (scan_id,)).fetchall()
    out: dict[tuple[str, int], tuple[str, tuple[int, ...]]] = {
        (h, p): (s, ()) for h, p, s in done}
    for h, p, text in rows:
        result = json.loads(text)
        types = tuple(t["id"] for t in (result["rfb"] or {}).get("security_types", []))
        out[(h, p)] = (result["state"], types)
    return out


def no_duplicates(db: Path, scan_id: str) -> None:
    with sqlite3.connect(db) as conn:
        for table in ("done", "results"):
            (dups,) = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE scan_id = ? "
                "GROUP BY host, port HAVING count(*) > 1)", (scan_id,)).fetchone()
            assert dups == 0, table


def worker_pids() -> list[int]:
    """Dask LocalCluster worker processes started by this process (multiprocessing spawn)."""
    psutil = pytest.importorskip("psutil")
    return [p.pid for p in psutil.Process().children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# Fast tests: pure logic


def test_default_shard_count() -> None:
    from vncaudit.cluster import MAX_SHARD_TARGETS, default_shard_count

    assert default_shard_count(1, 2) == 1
    assert default_shard_count(16384, 2) == 16  # a /18 on one port
    assert default_shard_count(16384, 2, concurrency=1024) == 16
    assert default_shard_count(65536, 2) == 16
    assert default_shard_count(65536, 16) == 64  # 4 per worker thread
    assert default_shard_count(65536, 2, concurrency=8192) == 8  # a shard fills its sockets
    census = 3_702_258_432
    n = default_shard_count(census, 200)
    assert census / n <= MAX_SHARD_TARGETS


def test_indices_round_trip() -> None:
    from vncaudit.cluster import format_indices, parse_indices, shard_state

    assert format_indices([3, 0, 1, 2, 7, 9, 10]) == "0-3,7,9-10"
    assert parse_indices("0-3,7,9-10") == {0, 1, 2, 3, 7, 9, 10}
    assert parse_indices("") == set()
    assert shard_state({}) == (None, set())
    assert shard_state({"shards": {"count": 16, "done": "0-2"}}) == (16, {0, 1, 2})


def test_workers_share_concurrency_and_rate() -> None:
    """More workers never mean more load than the user asked for: --rate is the whole scan's,
    --concurrency what one process holds open."""
    from vncaudit.cluster import per_shard_options
    from vncaudit.engine import ScanOptions

    shard = per_shard_options(ScanOptions(concurrency=4096, rate=1000.0), slots=8,
                              threads_per_worker=4)
    assert (shard.concurrency, shard.rate) == (1024, 125.0)
    assert per_shard_options(ScanOptions(concurrency=2), 8, 4).concurrency == 1
    assert per_shard_options(ScanOptions(), 8, 4).rate is None


def test_shards_are_disjoint_and_cover_exactly() -> None:
    """The premise the cluster builds on (targets.py): 16 shards of a /18 on one port."""
    from vncaudit.targets import build_target_space

    space = build_target_space(["198.18.0.0/18"], [5900])
    seen: set[tuple[str, int]] = set()
    for index in range(16):
        shard = {(t.host, t.port) for t in space.iter_targets(shard=(index, 16))}
        assert not shard & seen
        assert 900 < len(shard) < 1150  # evenly spread
        seen |= shard
    assert len(seen) == 16384 == len(space)


def test_update_options_commits_with_the_batch(tmp_path: Path) -> None:
    """A shard recorded done commits in the same transaction as the results before it: a crash
    before the commit loses both, never the results alone."""
    from vncaudit.models import ServiceResult, State
    from vncaudit.store import Store

    db = tmp_path / "s.db"
    with Store.open(db) as store:
        scan_id = store.create_scan(["127.0.0.1"], "5900", {"seed": 1})
    code = (
        "import os, sys\n"
        "from vncaudit.store import Store\n"
        "from vncaudit.models import ServiceResult, State\n"
        f"s = Store.open({str(db)!r}, batch_size=10_000, batch_interval=3600)\n"
        f"s.add_result({scan_id!r}, ServiceResult('127.0.0.1', 5900, State.VNC))\n"
        f"s.update_options({scan_id!r}, {{'shards': {{'count': 1, 'done': '0'}}}}, "
        "commit=sys.argv[1] == '1')\n"
        "os._exit(0)\n"  # like kill -9: no close, no commit
    )
    subprocess.run([sys.executable, "-c", code, "0"], check=True, timeout=60)
    with Store.open(db) as store:
        record = store.require_scan(scan_id)
        assert "shards" not in record.options
        assert store.done_pairs(scan_id) == set()
    subprocess.run([sys.executable, "-c", code, "1"], check=True, timeout=60)
    with Store.open(db) as store:
        record = store.require_scan(scan_id)
        assert record.options == {"seed": 1, "shards": {"count": 1, "done": "0"}}
        assert store.done_pairs(scan_id) == {("127.0.0.1", 5900)}
        assert store.update_options(scan_id, {"x": 1})["shards"]["done"] == "0"
        assert store.results(scan_id) == [ServiceResult("127.0.0.1", 5900, State.VNC)]


def test_collector_ignores_a_rerun_shard(tmp_path: Path) -> None:
    """A worker lost mid-shard: the partial attempt and the full rerun both arrive; the store
    keeps one verdict per pair and the shard is recorded done once."""
    from vncaudit.cluster import ShardCollector, ShardedRun
    from vncaudit.engine import Progress
    from vncaudit.models import RfbFacts, ServiceResult, State
    from vncaudit.store import Store

    vnc = ServiceResult("127.0.0.9", 5900, State.VNC, RfbFacts("RFB 003.008\n", "3.8"))
    partial = {"shard": 3, "attempt": "a", "services": [vnc.to_dict()],
               "marks": [["127.0.0.1", 5900, "closed"]]}
    rerun = {"shard": 3, "attempt": "b", "services": [vnc.to_dict()],
             "marks": [["127.0.0.1", 5900, "closed"], ["127.0.0.2", 5900, "filtered"]]}
    with Store.open(tmp_path / "c.db") as store:
        scan_id = store.create_scan(["127.0.0.0/30"], "5900", {})
        run = ShardedRun(scan_id, 4)
        progress = Progress(total=3)
        seen: list[ServiceResult] = []
        collector = ShardCollector(store, scan_id, run, seen.append, progress)
        assert collector.handle({"shard": 3, "attempt": "a", "start": True}) is None
        assert collector.handle(partial) is None
        assert collector.handle({"shard": 3, "attempt": "b", "start": True}) is None
        assert collector.handle(rerun) is None
        assert collector.handle({"shard": 3, "attempt": "b", "end": 3}) == 3
        assert collector.handle({"shard": 3, "attempt": "a", "end": 2}) is None
        assert (run.stored, run.duplicates, run.done, run.ran, run.reruns) == (3, 2, {3}, 1, 1)
        assert progress.done == 3 and progress.vnc == 1 and len(seen) == 3
        assert store.require_scan(scan_id).options["shards"] == {"count": 4, "done": "3"}
        assert len(store.results(scan_id, include_closed=True)) == 3
        assert store.results(scan_id)[0].rfb == vnc.rfb


LOOP_NET = "127.88.0.0/22"


@pytest.fixture(scope="module")
def loopback_servers() -> Iterator[tuple[int, list[str]]]:
    port = free_port()
    hosts = live_hosts(LOOP_NET, 6, seed=5)
    with fake_servers(port, hosts):
        yield port, hosts


def _reference(space: Any, timeout: float = 1.0) -> dict[tuple[str, int], tuple[str, tuple]]:
    """What one process finds: the engine, no Dask."""
    from vncaudit.engine import ScanOptions, scan_async
    from vncaudit.probe import ProbeOptions

    results = asyncio.run(scan_async(space.iter_targets(), ScanOptions(
        probe=ProbeOptions(timeout=timeout)), assess_results=False))
    return {(r.host, r.port): (r.state.value,
                               tuple(t.id for t in r.rfb.security_types) if r.rfb else ())
            for r in results}


def test_scan_shard_streams_batches_then_end(loopback_servers: tuple[int, list[str]]) -> None:
    from vncaudit.cluster import ShardJob, scan_shard
    from vncaudit.engine import ScanOptions
    from vncaudit.probe import ProbeOptions
    from vncaudit.targets import build_target_space

    port, hosts = loopback_servers
    space = build_target_space([LOOP_NET], [port])
    job = ShardJob(space, space.seed, 0, 1, ScanOptions(probe=ProbeOptions(timeout=1)), False,
                   "unused", batch_size=100, batch_interval=60)
    messages: list[dict[str, Any]] = []
    probed = asyncio.run(scan_shard(job, messages.append))
    assert probed == 1024
    attempt = messages[0]["attempt"]
    assert messages[0] == {"shard": 0, "attempt": attempt, "start": True}
    assert messages[-1] == {"shard": 0, "attempt": attempt, "end": 1024}
    batches = messages[1:-1]
    assert all(len(m["services"]) + len(m["marks"]) <= 100 for m in batches)
    assert len(batches) == 11  # 1024 results in batches of 100
    json.dumps(messages)  # plain data: travels through the scheduler as msgpack
    services = [s for m in batches for s in m["services"]]
    assert sorted(s["host"] for s in services) == sorted(hosts)
    skipped = asyncio.run(scan_shard(job, messages.append, skip={(hosts[0], port)}))
    assert skipped == 1023


def _sharded(db: Path, space: Any, spec: Any, *, shards: int = 16, timeout: float = 1.0,
             rate: float | None = None, on_result: Any = None, scan_id: str | None = None,
             **kwargs: Any) -> Any:
    from vncaudit import cluster
    from vncaudit.engine import ScanOptions
    from vncaudit.probe import ProbeOptions
    from vncaudit.store import Store

    options = ScanOptions(rate=rate, probe=ProbeOptions(timeout=timeout))
    with Store.open(db) as store:
        if scan_id is None:
            scan_id = store.create_scan(space.describe(), "x", {"seed": space.seed})
        run = cluster.scan_sharded(space, options, store, scan_id, spec, shards=shards,
                                   assess_results=False, on_result=on_result, **kwargs)
    return run


def test_localcluster_equals_single_process(loopback_servers: tuple[int, list[str]],
                                            tmp_path: Path) -> None:
    from vncaudit.cluster import ClusterSpec
    from vncaudit.targets import build_target_space

    port, hosts = loopback_servers
    space = build_target_space([LOOP_NET], [port])
    reference = _reference(space)
    assert sorted(h for (h, _), (s, _) in reference.items() if s == "vnc") == sorted(hosts)

    db = tmp_path / "a.db"
    run = _sharded(db, space, ClusterSpec(workers=2))
    assert run.complete and run.shards == 16 and run.ran == 16 and not run.failed
    assert run.workers == 2 and run.stored == 1024 and run.duplicates == 0
    assert verdicts(db, run.scan_id) == reference
    no_duplicates(db, run.scan_id)
    with sqlite3.connect(db) as conn:
        (options,) = conn.execute("SELECT options FROM scans").fetchone()
    assert json.loads(options)["shards"] == {"count": 16, "done": "0-15"}


def test_restart_runs_only_unfinished_shards(loopback_servers: tuple[int, list[str]],
                                             tmp_path: Path) -> None:
    from vncaudit.cluster import ClusterSpec
    from vncaudit.store import Store
    from vncaudit.targets import build_target_space

    port, _ = loopback_servers
    space = build_target_space([LOOP_NET], [port])
    db = tmp_path / "r.db"
    with Store.open(db) as store:
        scan_id = store.create_scan(space.describe(), "x", {"seed": space.seed})
        store.update_options(scan_id, {"shards": {"count": 16, "done": "0-7,12"}})
    # A different shard count asked for now must not change the recorded split.
    run = _sharded(db, space, ClusterSpec(workers=2), shards=4, scan_id=scan_id)
    assert (run.shards, run.skipped, run.ran, run.complete) == (16, 9, 7, True)
    expected = {(t.host, t.port) for i in (8, 9, 10, 11, 13, 14, 15)
                for t in space.iter_targets(shard=(i, 16))}
    assert set(verdicts(db, scan_id)) == expected  # shards recorded done were not probed

    again = _sharded(db, space, ClusterSpec(workers=1), scan_id=scan_id)
    assert (again.ran, again.skipped, again.stored) == (0, 16, 0)


def test_killed_worker_reruns_its_shard(loopback_servers: tuple[int, list[str]],
                                        tmp_path: Path) -> None:
    from vncaudit.cluster import ClusterSpec
    from vncaudit.models import ServiceResult
    from vncaudit.targets import build_target_space

    port, _ = loopback_servers
    space = build_target_space([LOOP_NET], [port])
    reference = _reference(space)
    killed: list[int] = []

    def kill_one(result: ServiceResult) -> None:
        # Once results flow (shards are running), kill -9 one worker process.
        if not killed and len(seen) >= 150:
            pids = worker_pids()
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        seen.append(result)

    seen: list[ServiceResult] = []
    db = tmp_path / "k.db"
    # 8 shards run at once, sharing --rate 320: 64 targets per shard at 40/s, so each runs
    # ~1.6 s and sends a batch every 0.1 s; the kill lands in the middle of some.
    run = _sharded(db, space, ClusterSpec(workers=2, threads_per_worker=4), rate=320,
                   on_result=kill_one, batch_interval=0.1)
    assert killed
    assert run.complete and not run.failed
    assert run.reruns >= 1 and run.duplicates > 0  # the lost shard ran again; repeats ignored
    assert verdicts(db, run.scan_id) == reference
    no_duplicates(db, run.scan_id)


def test_failing_shard_is_reported_then_resumed(loopback_servers: tuple[int, list[str]],
                                                tmp_path: Path) -> None:
    """A shard that keeps failing (after Dask's retries) is reported, not recorded done; the
    other shards finish; a later run reruns only that shard."""
    from vncaudit import cluster
    from vncaudit.cluster import ClusterSpec
    from vncaudit.engine import ScanOptions
    from vncaudit.models import ServiceResult
    from vncaudit.probe import ProbeOptions
    from vncaudit.store import Store
    from vncaudit.targets import build_target_space

    port, hosts = loopback_servers
    space = build_target_space([LOOP_NET], [port])
    bad = hosts[0]
    bad_shard = next(i for i in range(16)
                     if any(t.host == bad for t in space.iter_targets(shard=(i, 16))))

    async def fail_on_bad(result: ServiceResult) -> ServiceResult:
        if result.host == bad:  # runs on the workers (cloudpickle ships this closure)
            raise RuntimeError("probe blew up")
        return result

    db = tmp_path / "f.db"
    with Store.open(db) as store:
        scan_id = store.create_scan(space.describe(), "x", {"seed": space.seed})
        options = ScanOptions(probe=ProbeOptions(timeout=1), post_probe=fail_on_bad)
        run = cluster.scan_sharded(space, options, store, scan_id, ClusterSpec(workers=2),
                                   shards=16, assess_results=False)
        assert not run.complete and set(run.failed) == {bad_shard}
        assert "probe blew up" in run.failed[bad_shard]
        assert run.reruns >= cluster.SHARD_RETRIES  # Dask retried it before giving up
        assert len(run.done) == 15
        again = cluster.scan_sharded(space, ScanOptions(probe=ProbeOptions(timeout=1)), store,
                                     scan_id, ClusterSpec(workers=1), assess_results=False)
        assert (again.ran, again.skipped, again.complete) == (1, 15, True)
    assert verdicts(db, scan_id) == _reference(space)
    no_duplicates(db, scan_id)


def test_existing_scheduler_same_path(loopback_servers: tuple[int, list[str]],
                                      tmp_path: Path) -> None:
    """--cluster tcp://…: the same code with a scheduler someone else started."""
    from distributed import LocalCluster

    from vncaudit.cluster import ClusterSpec
    from vncaudit.targets import build_target_space

    port, _ = loopback_servers
    space = build_target_space([LOOP_NET], [port])
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as local:
        run = _sharded(tmp_path / "e.db", space, ClusterSpec(address=local.scheduler_address))
    assert run.complete and run.workers == 1
    assert verdicts(tmp_path / "e.db", run.scan_id) == _reference(space)


def _cli(*args: str, netns: str | None = None, timeout: float = 120,
         env: dict[str, str] | None = None) -> Any:
    cmd = [sys.executable, "-m", "vncaudit", "scan", *args, "-o", "json", "--all"]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def _summary(doc: dict[str, Any]) -> dict[tuple[str, int], tuple[str, tuple[int, ...]]]:
    pairs = [(s["host"], s["port"]) for s in doc["services"]]
    assert len(pairs) == len(set(pairs))  # no (host, port) twice
    return {(s["host"], s["port"]): (s["state"], tuple(
        t["id"] for t in (s["rfb"] or {}).get("security_types", []))) for s in doc["services"]}


def test_cli_workers_equals_plain_scan(loopback_servers: tuple[int, list[str]],
                                       tmp_path: Path) -> None:
    port, _ = loopback_servers
    args = [LOOP_NET, "-p", str(port), "--timeout", "1"]
    plain = _cli(*args, "--db", str(tmp_path / "p.db"))
    sharded = _cli(*args, "--db", str(tmp_path / "w.db"), "--workers", "2")
    assert plain.returncode == 0, plain.stderr
    assert sharded.returncode == 0, sharded.stderr
    assert _summary(json.loads(sharded.stdout)) == _summary(json.loads(plain.stdout))
    assert "shards" in sharded.stderr and "2 workers" in sharded.stderr


def test_cli_workers_json_report_is_the_stored_one(loopback_servers: tuple[int, list[str]],
                                                  tmp_path: Path) -> None:
    # Without --all the scan's -o json is built from the results the shards bring back
    # (report/spool.py); it is the report `vncaudit results` renders from the store.
    port, _ = loopback_servers
    db = tmp_path / "w.db"
    cmd = [sys.executable, "-m", "vncaudit", "scan", LOOP_NET, "-p", str(port), "--timeout",
           "1", "--db", str(db), "--workers", "2", "-o", "json"]
    sharded = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert sharded.returncode == 0, sharded.stderr
    doc = json.loads(sharded.stdout)
    assert doc["services"] and all(s["state"] not in ("closed", "filtered")
                                   for s in doc["services"])
    again = subprocess.run([sys.executable, "-m", "vncaudit", "results", doc["scan"]["id"],
                            "--db", str(db), "-o", "json"], capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert sharded.stdout == again.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--workers", "2", "--cluster", "tcp://127.0.0.1:1"], "not both"),
     (["--cluster", "127.0.0.1:8786"], "tcp://host:port"),
     (["--workers", "0"], "--workers")],
)
def test_cli_cluster_usage_errors(args: list[str], needle: str) -> None:
    out = _cli("127.0.0.1", "-p", "1", *args)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_cli_unreachable_scheduler_is_exit_3(tmp_path: Path) -> None:
    out = _cli("127.0.0.1", "-p", "1", "--db", str(tmp_path / "u.db"), "--cluster",
               f"tcp://127.0.0.1:{free_port()}", timeout=60,
               env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert out.returncode == 3, out.stderr
    assert "Dask scheduler" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------------
# The namespace test bed: a /18 of silent addresses with live fake servers


NETNS_RANGE = "198.18.0.0/18"
NETNS_PORT = 5900
NETNS_LIVE = 157  # as in the nmap measurement of docs/design.md §4
NETNS_BASE = [NETNS_RANGE, "-p", str(NETNS_PORT), "--timeout", "1"]
# Sharded: 1024 sockets per worker, so the /18 splits into 16 shards (a shard is never smaller
# than its socket budget). The single-process reference may hold more: the verdicts are the same.
NETNS_ARGS = [*NETNS_BASE, "--concurrency", "1024"]
NETNS_REFERENCE_ARGS = [*NETNS_BASE, "--concurrency", "4096"]


@pytest.fixture(scope="module")
def bed() -> Iterator[tuple[Bed, list[str], dict[tuple[str, int], tuple[str, tuple]]]]:
    require_netns()
    hosts = live_hosts(NETNS_RANGE, NETNS_LIVE, seed=18)
    with netns_bed() as testbed, fake_servers(NETNS_PORT, hosts, netns=testbed.tgt):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            plain = _cli(*NETNS_REFERENCE_ARGS, "--db", f"{tmp}/single.db", netns=testbed.scn)
            assert plain.returncode == 0, plain.stderr
            sys.stderr.write(f"single-process /18: {time.monotonic() - started:.1f} s\n")
        reference = _summary(json.loads(plain.stdout))
        found = sorted((h for (h, _), (s, _) in reference.items() if s == "vnc"),
                       key=lambda h: ipaddress.ip_address(h))
        assert found == hosts
        assert len(reference) == 16384
        yield testbed, hosts, reference


@pytest.mark.netns
def test_netns_two_workers_equal_single_process(
    bed: tuple[Bed, list[str], dict[Any, Any]], tmp_path: Path
) -> None:
    testbed, _, reference = bed
    db = tmp_path / "w.db"
    started = time.monotonic()
    out = _cli(*NETNS_ARGS, "--db", str(db), "--workers", "2", netns=testbed.scn)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    sys.stderr.write(f"2 workers /18: {elapsed:.1f} s; {out.stderr.strip()}\n")
    doc = json.loads(out.stdout)
    assert _summary(doc) == reference
    no_duplicates(db, doc["scan"]["id"])
    with sqlite3.connect(db) as conn:
        (options,) = conn.execute("SELECT options FROM scans").fetchone()
    shards = json.loads(options)["shards"]
    assert shards["count"] >= 16 and shards["done"] == f"0-{shards['count'] - 1}"


@pytest.mark.netns
def test_netns_worker_killed_mid_run(
    bed: tuple[Bed, list[str], dict[Any, Any]], tmp_path: Path
) -> None:
    psutil = pytest.importorskip("psutil")
    testbed, _, reference = bed
    db = tmp_path / "k.db"
    cmd = ["ip", "netns", "exec", testbed.scn, sys.executable, "-m", "vncaudit", "scan",
           *NETNS_ARGS, "--db", str(db), "-o", "json", "--all", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.communicate(timeout=180)))
    reader.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        with contextlib.suppress(sqlite3.Error):
            with sqlite3.connect(db) as conn:
                (done,) = conn.execute("SELECT count(*) FROM done").fetchone()
            if done >= 1500:  # some shards finished, others running
                workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                           if "spawn_main" in " ".join(p.cmdline())]
                if workers:
                    victim = workers[0].pid
                    os.kill(victim, signal.SIGKILL)
    reader.join(200)
    assert victim is not None, "the scan ended before a worker could be killed"
    assert proc.returncode == 0, out[1] if len(out) > 1 else ""
    sys.stderr.write(f"killed worker {victim}; {out[1].strip()}\n")
    reruns = int(re.search(r"(\d+) reruns", out[1]).group(1))  # type: ignore[union-attr]
    assert reruns >= 1  # the killed worker's shard ran again elsewhere
    doc = json.loads(out[0])
    assert _summary(doc) == reference
    no_duplicates(db, doc["scan"]["id"])
    assert doc["scan"]["finished"]

