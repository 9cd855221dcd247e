"""Any number of runs against a real TigerVNC (VncAuth) and nobody is ever refused.

The series, on real Xvnc servers: thirty scans one second apart in connect mode
and with --discovery syn, on loopback through the library (this host: another loopback
address takes over when 127.0.0.1's four free connections are spent) and across network
namespaces through the CLI (a remote server: after four, the facts read last are reported
with their age), and twelve runs of `local` on
the server's host. No run may report `blacklisted`, every run must report the service, and a
plain client from the same address right after each series must still read the security-type
list. Then the bad inputs: a store that cannot be written, a wall clock that jumps.

Run as a script (`python tests/test_budget_series.py series|plain ...`) the module is the
helper that runs a series, or a plain client, inside a namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netns
import servers

HERE = Path(__file__).resolve()
REMOTE = "198.18.77.9"  # the server's address inside the target namespace
VNCAUTH = [2]  # what Xvnc -SecurityTypes VncAuth lists


# ---------------------------------------------------------------------------------------------
# The helpers (also run inside namespaces, as a script)


def plain_client(host: str, port: int) -> list[int] | str:
    """What any viewer does first: read the banner, answer 3.8, read the security types.
    Returns the list, or what came instead ("Too many security failures", ...)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        banner = _exactly(sock, 12)
        if banner == b"RFB 003.003\n":  # TigerVNC's refusal comes with a forced 3.3 banner
            return sock.recv(256)[8:].decode("latin-1")
        sock.sendall(b"RFB 003.008\n")
        (count,) = _exactly(sock, 1)
        return list(_exactly(sock, count)) if count else "no types"


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def series(db: str, host: str, port: int, mode: str, runs: int,
           gap: float = 1.0) -> list[dict[str, Any]]:
    """`runs` scans of (host, port) through the library, `gap` seconds apart; each opens the
    store and a ledger of its own, as a `vncaudit scan` does. One summary per run."""
    from vncaudit import engine
    from vncaudit.budget import Ledger, ScanGate
    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions
    from vncaudit.store import Store

    out = []
    for i in range(runs):
        if i:
            time.sleep(gap)
        with Store.open(db) as store:
            scan_id = store.create_scan([host], str(port), {})
            with Ledger(store) as ledger:
                options = engine.ScanOptions(discovery=mode, probe=ProbeOptions(timeout=5))
                results = engine.run(engine.scan_async([Target(host, port)], options,
                                                       gate=ScanGate(ledger, scan_id)))
            store.add_results(scan_id, results)
            store.finish_scan(scan_id)
        out.append(summary(results[0].to_dict()))
    return out


def summary(service: dict[str, Any]) -> dict[str, Any]:
    rfb = service.get("rfb") or {}
    return {"state": service["state"],
            "types": [t["id"] for t in rfb.get("security_types") or []],
            "budget": (service.get("extra") or {}).get("budget")}


def _in(ns: str | None, *args: str, timeout: float = 300) -> Any:
    """Run this module as a helper (in namespace `ns`); its JSON answer."""
    cmd = [sys.executable, str(HERE), *args]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@contextlib.contextmanager
def loopback_ns() -> Iterator[str]:
    """A network namespace of the test's own with nothing but `lo`: the server and every
    client of a series live there, so no other program on this machine (a scan of its
    loopback, another `vncaudit local`) adds to the tally the test counts."""
    netns.require_netns()
    name = f"vcb{os.getpid() % 100000}{random.randrange(1000)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def check_series(runs: list[dict[str, Any]], name: str, *, fresh_at_least: int = 4) -> None:
    """No run blacklisted; every run reports the service (fresh, or answered with its age).
    Prints the series' numbers (seen with pytest -s): runs read fresh, answered from the
    ledger, the ages those answers gave, the source addresses used."""
    assert all(r["state"] != "blacklisted" for r in runs), runs
    assert all(r["state"] == "vnc" and r["types"] == VNCAUTH for r in runs), runs
    answered = [r for r in runs if r["budget"] is not None and r["budget"]["probed"] is False]
    for r in answered:
        assert r["budget"]["read_at"] and r["budget"]["age"] is not None, r
        assert "not re-probed" in r["budget"]["reason"], r
    assert len(runs) - len(answered) >= fresh_at_least
    ages = [float(r["budget"]["age"]) for r in answered]
    sources = sorted({r["budget"]["source"] if r["budget"] else "default" for r in runs})
    print(f"series {name}: {len(runs)} runs, {len(runs) - len(answered)} fresh, "
          f"{len(answered)} from the ledger"
          + (f" (ages {min(ages):.0f}-{max(ages):.0f} s)" if ages else "")
          + f", sources {', '.join(sources)}")


# ---------------------------------------------------------------------------------------------
# Loopback: this host's server, so another loopback address takes over


@pytest.mark.netns
@pytest.mark.realserver
def test_thirty_runs_on_loopback_in_connect_and_syn_mode(tmp_path: Path) -> None:
    require_xvnc()
    modes = {"connect": 5901, "syn": 5902}
    with loopback_ns() as ns, xvnc(ns, 5901, tmp_path, "127.0.0.1") as log_a, \
            xvnc(ns, 5902, tmp_path, "127.0.0.1") as log_b:
        found: dict[str, Any] = {}

        def run(mode: str) -> None:
            found[mode] = _in(ns, "series", str(tmp_path / f"{mode}.db"), "127.0.0.1",
                              str(modes[mode]), mode, "30")

        threads = [threading.Thread(target=run, args=(m,)) for m in modes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (mode, port), log in zip(modes.items(), (log_a, log_b), strict=True):
            runs = found[mode]
            check_series(runs, f"{mode}, loopback", fresh_at_least=30)  # every run read fresh facts
            sources = [r["budget"]["source"] if r["budget"] else "127.0.0.1" for r in runs]
            assert sources[:4] == ["127.0.0.1"] * 4, sources
            assert sources[4:8] == ["127.0.0.2"] * 4, sources
            assert _in(ns, "plain", "127.0.0.1", str(port)) == VNCAUTH, mode  # the 5th
            assert "blacklisted" not in log.read_text(errors="replace").lower(), mode


@pytest.mark.netns
@pytest.mark.realserver
def test_twelve_local_runs_on_the_server_s_host(tmp_path: Path) -> None:
    require_xvnc()
    db = str(tmp_path / "local.db")
    seen = []
    with loopback_ns() as ns, xvnc(ns, 5901, tmp_path, "127.0.0.1") as log:
        for i in range(12):
            if i:
                time.sleep(1)
            proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "vncaudit",
                                   "local", "--only-port", "5901", "--db", db, "-o", "json"],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode in (0, 1), proc.stderr
            (listener,) = json.loads(proc.stdout)["listeners"]
            seen.append(summary(listener["service"]))
        check_series(seen, "local", fresh_at_least=12)
        # Each loopback address spends its four; the listener's users' 127.0.0.1 keeps one.
        sources = [r["budget"]["source"] if r["budget"] else "127.0.0.1" for r in seen]
        assert sources == ["127.0.0.1"] * 4 + ["127.0.0.2"] * 4 + ["127.0.0.3"] * 4, sources
        assert _in(ns, "plain", "127.0.0.1", "5901") == VNCAUTH
        assert "blacklisted" not in log.read_text(errors="replace").lower()


# ---------------------------------------------------------------------------------------------
# SYN mode: a pair is admitted when its SYN-ACK comes back, not before


def syn_range(runs: int, count: int) -> list[dict[str, Any]]:
    """`runs` SYN scans of 127.0.0.1-`count` (one port) with a counting listener on 127.0.0.1
    only, each with its own store handle and ledger (no other loopback source: the ledger
    must deny). Per run: what the gate granted and denied, the live pair's summary, how many
    connections the listener had accepted by then, the ledger's pairs, intents left."""
    from vncaudit import engine
    from vncaudit.budget import Ledger, ScanGate
    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions
    from vncaudit.store import Store

    listener = _Listener("127.0.0.1")
    db = f"/tmp/vncaudit-synrange-{os.getpid()}.db"
    targets = [Target(f"127.0.0.{n}", listener.port) for n in range(1, count + 1)]
    out = []
    try:
        for _ in range(runs):
            with Store.open(db) as store:
                with Ledger(store, alternates=()) as ledger:
                    gate = ScanGate(ledger)
                    options = engine.ScanOptions(discovery="syn",
                                                 probe=ProbeOptions(timeout=3))
                    results = engine.run(engine.scan_async(targets, options, gate=gate))
                with store.reading("test") as conn:
                    pairs = sorted(f"{s}>{d}:{p}" for s, d, p in conn.execute(
                        "SELECT src, dst, port FROM budget_ledger"))
                    intents = conn.execute("SELECT count(*) FROM budget_intents").fetchone()[0]
            live = [r for r in results if r.host == "127.0.0.1"]
            others = {r.state.value for r in results if r.host != "127.0.0.1"}
            out.append({"granted": gate.granted, "denied": gate.denied, "states": sorted(others),
                        "live": summary(live[0].to_dict()), "results": len(results),
                        "port": listener.port, "accepted": listener.accepted,
                        "pairs": pairs, "intents": intents})
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db)
    return out


@pytest.mark.netns
def test_syn_mode_admits_a_pair_when_its_syn_ack_is_found(tmp_path: Path) -> None:
    """Sixteen targets, one listening: each run asks the ledger for the one pair that answered
    (never for the fifteen that did not), four runs connect, the fifth and sixth do not and
    say the port answers a half-open SYN now."""
    with loopback_ns() as ns:
        runs = _in(ns, "synrange", "6", "16")
    for i, run in enumerate(runs):
        assert run["results"] == 16 and run["states"] == ["closed"], run
        assert run["granted"] + run["denied"] == 1, run  # only the pair found live was asked
        assert run["pairs"] == [f"127.0.0.1>127.0.0.1:{run['port']}"], run
        assert run["intents"] == 0, run
        if i < 4:
            assert run["granted"] == 1 and run["accepted"] == i + 1, run
        else:
            assert run["denied"] == 1 and run["accepted"] == 4, run
            note = run["live"]["budget"]
            assert note["probed"] is False and note["liveness"] == "open", run
            assert "the next connection from 127.0.0.1 would make" in note["reason"], run


# ---------------------------------------------------------------------------------------------
# Namespaces: a remote server, so after four the facts read last are reported


@contextlib.contextmanager
def xvnc(ns: str, port: int, workdir: Path, interface: str = "0.0.0.0") -> Iterator[Path]:
    """Xvnc -SecurityTypes VncAuth on `interface`:`port` inside namespace `ns`; its log."""
    reservation = servers.reserve_display()
    password = servers.make_password_file(workdir / f"passwd-{ns}-{port}")
    log = workdir / f"xvnc-{ns}-{port}.log"
    cmd = ["ip", "netns", "exec", ns, "Xvnc", f":{reservation.display}", "-rfbport",
           str(port), "-interface", interface, "-SecurityTypes", "VncAuth", "-PasswordFile",
           str(password), "-geometry", "320x240", "-nolisten", "tcp", "-desktop", "series"]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        want = f":{port:04X}"
        while not any(len(f := line.split()) > 3 and f[1].endswith(want) and f[3] == "0A"
                      for line in subprocess.run(
                          ["ip", "netns", "exec", ns, "cat", "/proc/net/tcp"],
                          capture_output=True, text=True, check=False).stdout.splitlines()[1:]):
            assert proc.poll() is None, log.read_text()[-1500:]
            assert time.monotonic() < deadline, log.read_text()[-1500:]
            time.sleep(0.1)
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        reservation.release()


def require_xvnc() -> None:
    if servers.missing_binaries("tigervnc-vncauth"):
        from conftest import require_binaries

        require_binaries("tigervnc-vncauth")


@pytest.mark.netns
@pytest.mark.realserver
def test_thirty_runs_of_a_remote_server_cli_connect_and_syn(tmp_path: Path) -> None:
    netns.require_netns()
    require_xvnc()
    modes = {"connect": 5901, "syn": 5902}
    with netns.netns_bed() as bed, xvnc(bed.tgt, 5901, tmp_path) as log_a, \
            xvnc(bed.tgt, 5902, tmp_path) as log_b:
        results: dict[str, Any] = {}

        def cli_series(mode: str) -> None:
            runs = []
            for i in range(30):
                if i:
                    time.sleep(1)
                proc = bed.run(bed.scn, sys.executable, "-m", "vncaudit", "scan", REMOTE, "-p",
                               str(modes[mode]), "--discovery", mode, "--db",
                               str(tmp_path / f"{mode}.db"), "-o", "json", "--timeout", "5",
                               check=False)
                assert proc.returncode in (0, 1), proc.stderr
                (service,) = json.loads(proc.stdout)["services"]
                runs.append(summary(service))
            results[mode] = runs

        threads = [threading.Thread(target=cli_series, args=(m,)) for m in modes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (mode, port), log in zip(modes.items(), (log_a, log_b), strict=True):
            runs = results[mode]
            check_series(runs, f"{mode}, remote")
            assert all(r["budget"] is None or r["budget"]["probed"] for r in runs[:4]), mode
            assert all(r["budget"]["probed"] is False for r in runs[4:]), mode
            # A half-open SYN (root: both modes) says the port is there now.
            assert all(r["budget"]["liveness"] == "open" for r in runs[4:]), mode
            assert _in(bed.scn, "plain", REMOTE, str(port)) == VNCAUTH, mode
            assert "blacklisted" not in log.read_text(errors="replace").lower(), mode


@pytest.mark.netns
@pytest.mark.realserver
def test_concurrent_cli_scans_sharing_a_store_spend_four_in_all(tmp_path: Path) -> None:
    """Three rounds of three `vncaudit scan` processes started at once, one store: the ledger
    is shared, so four connections are made in all (round 1: three, round 2: one), every
    other run reports the facts read last, and the server never refuses anyone."""
    netns.require_netns()
    require_xvnc()
    db = str(tmp_path / "shared.db")
    runs: list[dict[str, Any]] = []
    with netns.netns_bed() as bed, xvnc(bed.tgt, 5901, tmp_path) as log:
        cmd = ["ip", "netns", "exec", bed.scn, sys.executable, "-m", "vncaudit", "scan", REMOTE,
               "-p", "5901", "--db", db, "-o", "json", "--timeout", "5"]
        for _ in range(3):
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(3)]
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode in (0, 1) and "Traceback" not in err, err
                (service,) = json.loads(out)["services"]
                runs.append(summary(service))
        check_series(runs, "concurrent CLI scans, one store", fresh_at_least=4)
        fresh = [r for r in runs if r["budget"] is None or r["budget"]["probed"]]
        assert len(fresh) == 4, runs
        assert _in(bed.scn, "plain", REMOTE, "5901") == VNCAUTH
        assert "blacklisted" not in log.read_text(errors="replace").lower()


# ---------------------------------------------------------------------------------------------
# Bad input: a store that cannot be written, a wall clock that jumps


class _Listener:
    """A plain TCP listener that counts the connections it accepts."""

    def __init__(self, host: str | None = None) -> None:
        # An address of its own: other scans of this machine's loopback must not count here.
        octets = (random.randrange(1, 255), random.randrange(255), random.randrange(1, 255))
        self.host = host or "127.{}.{}.{}".format(*octets)
        self.sock = socket.create_server((self.host, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join()
        self.sock.close()


def test_a_store_on_a_read_only_mount_is_one_line_and_no_connection(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    store_dir = tmp_path / "ro"
    store_dir.mkdir()
    from vncaudit.store import Store

    Store.open(store_dir / "v.db").close()
    listener = _Listener()
    try:
        script = (f"mount --bind {store_dir} {store_dir} && mount -o remount,ro,bind "
                  f"{store_dir} {store_dir} && exec {sys.executable} -m vncaudit ")
        outs = []
        for command in (f"scan {listener.host} -p {listener.port} --db {store_dir}/v.db",
                        f"local --only-port {listener.port} --db {store_dir}/v.db -o json"):
            proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh",
                                   "-c", script + command], capture_output=True, text=True,
                                  timeout=120, check=False)
            outs.append(proc)
        scan, local = outs
        assert scan.returncode == 3, scan.stderr
        lines = [line for line in scan.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("vncaudit: error: "), scan.stderr
        assert "Traceback" not in scan.stderr + local.stderr
        assert local.returncode == 0, local.stderr
        blind = json.loads(local.stdout)["blind_spots"]
        assert any("connection ledger cannot be opened" in b for b in blind), blind
        time.sleep(0.5)
        assert listener.accepted == 0
    finally:
        listener.close()


def test_a_store_whose_ledger_is_damaged_is_one_line_and_no_connection(tmp_path: Path) -> None:
    """The store opens but its ledger cannot be written (a table gone): the listener is
    reported `not-probed`, one line on stderr says why, in the table and in JSON; nothing
    connects."""
    import sqlite3

    from vncaudit.store import Store

    db = tmp_path / "damaged.db"
    Store.open(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TABLE budget_intents")
        conn.commit()
    listener = _Listener()
    try:
        for output in ("table", "json"):
            proc = subprocess.run([sys.executable, "-m", "vncaudit", "scan", listener.host,
                                   "-p", str(listener.port), "--db", str(db), "-o", output],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
            lines = [line for line in proc.stderr.splitlines() if "not probed" in line]
            assert len(lines) == 1, proc.stderr
            assert lines[0].startswith("1 not probed: the connection ledger cannot be written")
            if output == "json":
                (service,) = json.loads(proc.stdout)["services"]
                assert service["state"] == "not-probed", service
            else:
                assert "not-probed" in proc.stdout, proc.stdout
        time.sleep(0.5)
        assert listener.accepted == 0
    finally:
        listener.close()


@pytest.mark.netns
@pytest.mark.realserver
@pytest.mark.parametrize("offset", ["-3600", "+86400"])
def test_a_wall_clock_that_jumps(tmp_path: Path, offset: str) -> None:
    """Four probes with the true clock; then a run whose wall clock is an hour behind or a day
    ahead (libfaketime; the boot clock stays true, as after an NTP step): the budget stays
    spent, the age stays true, one line says the clock jumped, nothing crashes."""
    if not os.path.exists("/usr/bin/faketime"):
        pytest.fail("faketime is not installed (.ci/debian-packages.txt lists it)")
    require_xvnc()
    db = str(tmp_path / "clock.db")
    script = (
        "import json, logging, sys\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from test_budget_series import summary\n"
        "from vncaudit import engine\n"
        "from vncaudit.budget import Ledger, ScanGate\n"
        "from vncaudit.models import Target\n"
        "from vncaudit.store import Store\n"
        f"store = Store.open({db!r})\n"
        "with Ledger(store, alternates=()) as ledger:\n"  # not this host's other addresses
        "    results = engine.run(engine.scan_async([Target('127.0.0.1', 5901)],\n"
        "                         gate=ScanGate(ledger)))\n"
        "store.close()\n"
        "print(json.dumps(summary(results[0].to_dict())))\n"
    )
    env = {**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with loopback_ns() as ns, xvnc(ns, 5901, tmp_path, "127.0.0.1") as log:
        inside = ["ip", "netns", "exec", ns]
        for _ in range(4):
            true_run = subprocess.run([*inside, sys.executable, "-c", script], env=env,
                                      capture_output=True, text=True, timeout=120, check=True)
            assert json.loads(true_run.stdout)["state"] == "vnc"
        jumped = subprocess.run([*inside, "faketime", "-f", offset, sys.executable, "-c",
                                 script], capture_output=True, text=True, timeout=120,
                                check=False, env=env)
        assert jumped.returncode == 0, jumped.stderr
        assert "Traceback" not in jumped.stderr
        assert [line for line in jumped.stderr.splitlines() if "clock jumped" in line], \
            jumped.stderr
        run = json.loads(jumped.stdout)
        assert run["state"] == "vnc" and run["budget"]["probed"] is False
        assert 0 <= run["budget"]["age"] < 300  # the boot clock's age, not the jumped wall's
        assert _in(ns, "plain", "127.0.0.1", "5901") == VNCAUTH  # nothing was sent: the 5th
        assert "blacklisted" not in log.read_text(errors="replace").lower()


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "series":
        db, host, port, mode, runs = args
        print(json.dumps(series(db, host, int(port), mode, int(runs))))
    elif what == "synrange":
        print(json.dumps(syn_range(int(args[0]), int(args[1]))))
    elif what == "plain":
        print(json.dumps(plain_client(args[0], int(args[1]))))
    else:
        raise SystemExit(f"unknown helper {what!r}")
