"""Benchmark: vncaudit (connect and syn discovery) against nmap and zmap, same range, same run.

Builds the namespace test bed of docs/design.md §4 (tests/netns.py; needs root): `--live` fake RFB
servers (mixed security types; None offered on some, so their fingerprint goes to ServerInit) at
random addresses of 198.18.0.0/SIZE, every other address silent. Then runs, in the scanning
namespace, one after the other on the same range and port:

    vncaudit-connect   vncaudit scan RANGE -p 5900 --discovery connect (full fingerprints, store)
    vncaudit-syn       vncaudit scan RANGE -p 5900 --discovery syn --rate R (same)
    zmap               zmap -p 5900 RANGE -r 200000 -c 2            (discovery only)
    nmap               nmap -sT -Pn -n -T4 -p5900 --open --script vnc-info RANGE

and prints wall time, CPU time (user + system of the process and its children), peak RSS,
found/expected, and the ratios; `--json FILE` writes the same as JSON. vncaudit's "found"
counts only services whose stored fingerprint (the security types read from the SQLite store)
equals what that fake server offers.

    sudo python bench/scan_bench.py --size 16 --live 300          # vs zmap (default tools)
    sudo python bench/scan_bench.py --size 18 --live 157          # adds nmap (4-5 minutes)
    sudo python bench/scan_bench.py --throughput 2000             # handshakes per second

`--throughput N`: N live servers, each on `--ports-per-host` ports (default 5), scanned by
address list (`-iL`) so there is no silent address. Rows: `engine-MODE`, the handshake rate of
the engine alone (discovery + RFB probe in one process, no grading, no store); `vncaudit-MODE`,
the whole CLI run (grading, store, JSON report of every service), with its scan phase = the run
minus what `vncaudit results ID -o json` takes on the same store (start-up, read-back, report).

The physical floor printed for the syn row is send time (targets / rate) + one timeout window
+ the live handshakes at the measured handshake rate: what any stateless scanner that waits one
window for late replies needs.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import netns  # noqa: E402  (after the path set-up above)

PORT = 5900
PYCACHE = Path(tempfile.gettempdir()) / "vncaudit-bench-pycache"


def compiled_env() -> dict[str, str]:
    """The environment every tool runs in: vncaudit from compiled modules (a pycache of its
    own, written once here), as an installed package runs; without it a process started with
    PYTHONDONTWRITEBYTECODE compiles every module of the package on each run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONPATH"] = os.pathsep.join(  # this checkout's package, not an installed one
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    str(ROOT / "src" / "vncaudit")], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "vncaudit", "--help"], env=env, check=True,
                   capture_output=True)  # and what it imports from elsewhere
    return env


ENV: dict[str, str] = dict(os.environ)
VENV_ROOT = Path(tempfile.gettempdir()) / "vncaudit-bench-venv"


def installed_venv() -> Path:
    """A virtual environment as the README installs vncaudit (pipx, or `python3 -m venv` and
    `pip install .`): no system site-packages, so none of this interpreter's `.pth` files run
    at start-up, only the venv's own; the dependencies at requirements.lock's versions; this
    checkout installed into it (not editable), compiled by pip as any install is. Made once per
    interpreter and lock (kept beside the compiled modules of `compiled_env`); the project
    is installed again on every call, so the venv runs the code being measured."""
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    key = hashlib.sha256((sys.version + lock).encode()).hexdigest()[:12]
    venv = Path(f"{VENV_ROOT}-{key}")
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        # The lock's versions as constraints (name==version; its hashes are for `make venv`).
        pins = venv / "constraints.txt"
        pins.write_text("".join(line.split(" ")[0] + "\n" for line in lock.splitlines()
                                if "==" in line and not line.startswith((" ", "#"))))
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(pins),
                        "setuptools", "wheel"], env=env, check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(pins),
                        "--no-build-isolation", str(ROOT)], env=env, check=True)
    else:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                        "--force-reinstall", "--no-build-isolation", str(ROOT)], env=env,
                       check=True)
    return venv


def venv_env() -> dict[str, str]:
    """The environment of the venv's rows: nothing pointing at this checkout or at a cache
    of its own (the installed package and its compiled modules are the venv's)."""
    return {k: v for k, v in ENV.items()
            if k not in ("PYTHONPATH", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}


@dataclass
class Row:
    tool: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    found: int
    expected: int
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def measured(cmd: list[str], timeout: float,
             env: dict[str, str] | None = None) -> tuple[float, float, float, int, str]:
    """Run `cmd` (in `env`, default ENV); wall s, CPU s (user+sys, children included), peak
    RSS MB, exit code, stderr. `ip netns exec` execs the command in place, so the rusage is
    the tool's own."""
    with tempfile.TemporaryFile("w+") as errfile:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfile,
                                env=ENV if env is None else env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        errfile.seek(0)
        err = errfile.read()
    # ru_maxrss of wait4 is the largest of the process and its waited-for descendants (KiB).
    return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode,
            err)


def in_ns(bed: netns.Bed, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", bed.scn, *cmd]


def expected_types(host: str) -> list[int]:
    return list(dict.fromkeys(netns.types_for(host)))


def stored_fingerprints(db: Path, hosts: set[str]) -> tuple[int, int]:
    """(services stored with the right fingerprint, pairs recorded) from the SQLite store."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT host, result FROM results WHERE state = 'vnc'").fetchall()
        (done,) = conn.execute("SELECT count(*) FROM done").fetchone()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'done_packed'").fetchone():
            (packed,) = conn.execute("SELECT coalesce(sum(count), 0) FROM done_packed").fetchone()
            done += packed  # a SYN sweep's silent pairs, recorded in bulk
    good = 0
    for host, text in rows:
        result = json.loads(text)
        types = [t["id"] for t in (result.get("rfb") or {}).get("security_types", [])]
        if host in hosts and types == expected_types(host):
            good += 1
    return good, int(done)


def run_vncaudit(bed: netns.Bed, name: str, args: list[str], hosts: list[str], expected: int,
                 tmp: Path, timeout: float, venv: Path | None = None) -> Row:
    """One `vncaudit scan` run: this checkout's, or with `venv` that venv's console script
    (`installed_venv`, the README's install)."""
    run = len(list(tmp.glob("*.db")))  # a fresh store per run: nothing to resume or skip
    db = tmp / f"{name.replace(' ', '-')}-{run}.db"
    program = ([str(venv / "bin" / "vncaudit")] if venv is not None
               else [sys.executable, "-m", "vncaudit"])
    cmd = in_ns(bed, *program, "scan", *args, "--db", str(db),
                "-o", "json", "--output-file", str(db.with_suffix(".json")))
    wall, cpu, rss, code, err = measured(cmd, timeout, venv_env() if venv is not None else None)
    if code != 0:
        raise RuntimeError(f"{name} failed ({code}): {err[-2000:]}")
    good, done = stored_fingerprints(db, set(hosts))
    return Row(name, wall, cpu, rss, good, expected, f"{done} pairs recorded")


def run_zmap(bed: netns.Bed, cidr: str, hosts: list[str], tmp: Path, rate: int,
             cooldown: int) -> Row:
    blocklist = tmp / "empty-blocklist"  # zmap's default blocklist excludes 198.18.0.0/15
    blocklist.write_text("")
    out = tmp / "zmap.txt"
    cmd = in_ns(bed, "zmap", "-p", str(PORT), cidr, "-i", bed.veth_s, "-S", netns.SCN_ADDR,
                "-G", bed.gateway_mac(), "-r", str(rate), "-c", str(cooldown),
                "-b", str(blocklist), "-q", "-o", str(out))
    wall, cpu, rss, code, err = measured(cmd, 300)
    if code != 0:
        raise RuntimeError(f"zmap failed ({code}): {err[-2000:]}")
    found = {line.strip() for line in out.read_text().splitlines() if line.strip()}
    return Row("zmap", wall, cpu, rss, len(found & set(hosts)), len(hosts),
               f"discovery only; -r {rate} -c {cooldown}")


def run_nmap(bed: netns.Bed, cidr: str, hosts: list[str], tmp: Path) -> Row:
    out = tmp / "nmap.xml"
    cmd = in_ns(bed, "nmap", "-sT", "-Pn", "-n", "-T4", f"-p{PORT}", "--open", "--script",
                "vnc-info", cidr, "-oX", str(out))
    wall, cpu, rss, code, err = measured(cmd, 1800)
    if code != 0:
        raise RuntimeError(f"nmap failed ({code}): {err[-2000:]}")
    found = 0
    for host in ET.parse(out).getroot().iter("host"):
        address = host.find("address")
        script = host.find(".//script[@id='vnc-info']")
        if address is not None and script is not None and address.get("addr") in hosts:
            found += 1
    return Row("nmap -T4 vnc-info", wall, cpu, rss, found, len(hosts), "")


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def range_bench(opts: argparse.Namespace) -> dict[str, Any]:
    cidr = f"198.18.0.0/{opts.size}"
    hosts = netns.live_hosts(cidr, opts.live, seed=opts.size)
    size = ipaddress.ip_network(cidr).num_addresses
    tools = opts.tools.split(",") if opts.tools else (
        ["vncaudit-connect", "vncaudit-syn", "zmap"] if opts.size <= 16
        else ["vncaudit-connect", "vncaudit-syn", "nmap"])
    common = [cidr, "-p", str(PORT), "--timeout", str(opts.timeout)]
    rows: list[Row] = []
    venv = installed_venv() if any(t.startswith("venv ") for t in tools) else None
    load_before = loadavg()
    with netns.netns_bed() as bed, netns.fake_servers(PORT, hosts, netns=bed.tgt), \
            tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for tool in tools * opts.repeat:
            print(f"running {tool} on {cidr} ...", file=sys.stderr, flush=True)
            if tool == "vncaudit-connect":
                rows.append(run_vncaudit(
                    bed, tool, [*common, "--discovery", "connect", "--concurrency",
                                str(opts.concurrency)], hosts, len(hosts), tmp, 600))
            elif tool in ("vncaudit-syn", "venv vncaudit-syn"):
                rows.append(run_vncaudit(
                    bed, tool, [*common, "--discovery", "syn", "--rate", str(opts.rate),
                                "--retries", str(opts.retries), "--concurrency",
                                str(opts.concurrency)], hosts, len(hosts), tmp, 600,
                    venv if tool.startswith("venv ") else None))
            elif tool == "zmap":
                rows.append(run_zmap(bed, cidr, hosts, tmp, opts.zmap_rate, opts.zmap_cooldown))
            elif tool == "nmap":
                rows.append(run_nmap(bed, cidr, hosts, tmp))
            else:
                raise SystemExit(f"unknown tool {tool!r}")
            print(f"  {rows[-1].tool}: {rows[-1].wall_s:.2f} s, "
                  f"{rows[-1].found}/{rows[-1].expected}", file=sys.stderr, flush=True)
    ratios = _ratios(rows)
    floor = None
    syn = next((r for r in rows if r.tool == "vncaudit-syn"), None)
    if syn is not None:
        send = size / opts.rate
        floor = {"send_s": send, "timeout_window_s": opts.timeout,
                 "handshakes_s": len(hosts) / opts.handshake_rate,
                 "total_s": send + opts.timeout + len(hosts) / opts.handshake_rate,
                 "syn_wall_s": statistics.median(
                     r.wall_s for r in rows if r.tool == "vncaudit-syn")}
    return {"range": cidr, "targets": size, "live": len(hosts), "port": PORT,
            "timeout": opts.timeout, "rows": [asdict(r) for r in rows], "ratios": ratios,
            "floor": floor, "load_before": load_before, "load_after": loadavg(),
            "cpus": os.cpu_count()}


def _ratios(rows: list[Row]) -> dict[str, float]:
    """Peer wall / our wall, on the median wall time of each tool's runs."""
    walls: dict[str, list[float]] = {}
    for r in rows:
        walls.setdefault(r.tool, []).append(r.wall_s)
    median = {tool: statistics.median(w) for tool, w in walls.items()}
    out: dict[str, float] = {}
    for ours in ("vncaudit-syn", "vncaudit-connect"):
        if ours not in median:
            continue
        for peer in ("zmap", "nmap -T4 vnc-info"):
            if peer in median:
                out[f"{peer} wall / {ours} wall"] = median[peer] / median[ours]
    return out


# ---------------------------------------------------------------------------------------------
# Send rate, counted where the packets arrive

RATE_RANGES = ("198.18.0.0/16", "198.19.0.0/17")  # 196,608 addresses, all local in the target
POLLER = r"""
import json, sys, time
name = sys.argv[1] + ":"
idle = float(sys.argv[2])
def read():  # /proc/net is the namespace's own, whatever /sys shows
    with open("/proc/net/dev") as fh:
        for line in fh:
            if line.strip().startswith(name):
                return int(line.split(":", 1)[1].split()[1])
    raise SystemExit("no interface " + name)
base = prev = read()
print("ready", flush=True)
samples = []
first = last = None
while True:
    now = time.monotonic()
    value = read()
    if value != prev:
        first = now if first is None else first
        last = now
        samples.append((now, value - base))
        prev = value
    elif first is not None and now - last > idle:
        break
    time.sleep(0.0005)
total = prev - base
def at(share):
    return next(t for t, c in samples if c >= share * total)
span = (last - first) if samples else 0.0
mid = at(0.9) - at(0.1) if samples else 0.0
print(json.dumps({"received": total, "span_s": span,
                  "rate": total / span if span > 0 else 0.0,
                  "rate_10_90": 0.8 * total / mid if mid > 0 else 0.0}), flush=True)
"""


def syn_counter(bed: netns.Bed) -> int:
    """SYNs to port 5900 the target namespace has taken in (its raw PREROUTING counter)."""
    out = bed.run(bed.tgt, "iptables", "-t", "raw", "-nvxL", "PREROUTING").stdout
    for line in out.splitlines():
        if "dpt:5900" in line:
            return int(line.split()[0])
    return 0


def rate_bench(opts: argparse.Namespace) -> dict[str, Any]:
    """Each sender, uncapped, on the same range: the rate the target namespace received."""
    tools = opts.tools.split(",") if opts.tools else ["zmap", "vncaudit-syn"]
    total = sum(ipaddress.ip_network(r).num_addresses for r in RATE_RANGES)
    rows: list[dict[str, Any]] = []
    with netns.netns_bed() as bed, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bed.run(bed.tgt, "ip", "route", "add", "local", RATE_RANGES[1], "dev", "lo")
        bed.run(bed.tgt, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport",
                str(PORT), "--syn", "-j", "ACCEPT")
        blocklist = tmp / "empty-blocklist"
        blocklist.write_text("")
        for round_ in range(opts.repeat):
            for tool in tools:
                if tool == "zmap" or tool.startswith("zmap-T"):
                    threads = tool[len("zmap-T"):] if tool.startswith("zmap-T") else ""
                    cmd = in_ns(bed, "zmap", "-p", str(PORT), *RATE_RANGES, "-i", bed.veth_s,
                                "-S", netns.SCN_ADDR, "-G", bed.gateway_mac(), "-r", "0",
                                "-c", "1", "-b", str(blocklist), "-q", "-o", "/dev/null",
                                *(["-T", threads] if threads else []))
                elif tool == "vncaudit-syn":
                    cmd = in_ns(bed, sys.executable, "-m", "vncaudit", "scan", *RATE_RANGES,
                                "-p", str(PORT), "--discovery", "syn", "--rate", "100000000",
                                "--retries", "0", "--timeout", "1", "--db",
                                str(tmp / f"rate-{round_}.db"), "-o", "json", "--output-file",
                                str(tmp / f"rate-{round_}.json"))
                else:
                    raise SystemExit(f"unknown tool {tool!r} for --send-rate")
                load = loadavg()
                before = syn_counter(bed)
                poller = subprocess.Popen(["ip", "netns", "exec", bed.tgt, sys.executable, "-c",
                                           POLLER, bed.veth_t, "2"],
                                          stdout=subprocess.PIPE, text=True)
                assert poller.stdout is not None
                poller.stdout.readline()
                wall, cpu, rss, code, err = measured(cmd, 300)
                seen = json.loads(poller.stdout.readline())
                poller.wait(30)
                if code != 0:
                    raise RuntimeError(f"{tool} failed ({code}): {err[-2000:]}")
                row = {"tool": tool, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss,
                       "syns_received":
                       syn_counter(bed) - before, "expected": total, "load": load,
                       "summary": [line for line in err.splitlines() if "SYN" in line][-1:],
                       **seen}
                rows.append(row)
                print(f"  {tool}: {row['rate']:,.0f} packets/s received "
                      f"(10-90 %: {row['rate_10_90']:,.0f}), {row['syns_received']:,} of "
                      f"{total:,} SYNs, load {load}", file=sys.stderr, flush=True)
    medians = {}
    for tool in tools:
        mine = [r for r in rows if r["tool"] == tool]
        medians[tool] = {key: statistics.median(r[key] for r in mine)
                         for key in ("rate", "rate_10_90", "syns_received", "wall_s", "cpu_s")}
    return {"mode": "send-rate", "ranges": RATE_RANGES, "targets": total, "rows": rows,
            "medians": medians, "cpus": os.cpu_count()}


def print_rate_table(result: dict[str, Any]) -> None:
    print(f"{'tool':<14} {'received/s':>12} {'10-90 %/s':>12} {'SYNs in':>10} {'wall s':>7} "
          f"{'CPU s':>6}  load")
    for r in result["rows"]:
        print(f"{r['tool']:<14} {r['rate']:12,.0f} {r['rate_10_90']:12,.0f} "
              f"{r['syns_received']:>10,} {r['wall_s']:7.2f} {r['cpu_s']:6.2f}  {r['load']}")
    print("medians:")
    for tool, m in result["medians"].items():
        print(f"  {tool:<12} {m['rate']:12,.0f} {m['rate_10_90']:12,.0f} "
              f"{m['syns_received']:>10,.0f} {m['wall_s']:7.2f} {m['cpu_s']:6.2f}")


# ---------------------------------------------------------------------------------------------
# Start-up: from the process start to its first packet, seen where it arrives

PY_ONE_SYN = ("import socket; s = socket.socket(); s.setblocking(False); "
              "s.connect_ex((__import__('sys').argv[1], 5900))")


def startup_bench(opts: argparse.Namespace) -> dict[str, Any]:
    """Each tool aims at one silent address of its own; the target namespace's kernel stamps
    the first packet to it. Time = that stamp - the moment just before the tool is started
    (`ip netns exec` included, the same for every tool). vncaudit runs from compiled modules
    (`compiled_env`), as an installed package does; the `venv …` rows run the console script
    and the interpreter of `installed_venv()` (the README's install: no system
    site-packages, so none of this interpreter's `.pth` files)."""
    tools = opts.tools.split(",") if opts.tools else [
        "python -S (one connect)", "python (one connect)", "vncaudit-connect", "vncaudit-syn",
        "venv python (one connect)", "venv vncaudit-connect", "venv vncaudit-syn",
        "zmap", "nmap"]
    venv = installed_venv() if any(t.startswith("venv ") for t in tools) else None
    runs: list[dict[str, Any]] = []
    with netns.netns_bed() as bed, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        blocklist = tmp / "empty-blocklist"
        blocklist.write_text("")
        env = ENV
        sniffer = netns.Sniffer(bed, tmp / "seen.json")
        address = 0
        try:
            for round_ in range(opts.repeat):
                for tool in tools:
                    address += 1
                    target = f"198.18.{address // 250}.{address % 250 + 1}"
                    db = str(tmp / f"s{address}.db")
                    installed = str(venv / "bin") if venv is not None else ""
                    cmd = {
                        "python -S (one connect)": [sys.executable, "-S", "-c", PY_ONE_SYN,
                                                    target],
                        "python (one connect)": [sys.executable, "-c", PY_ONE_SYN, target],
                        "vncaudit-connect": [sys.executable, "-m", "vncaudit", "scan", target,
                                             "-p", "5900", "--timeout", "0.3", "--db", db],
                        "vncaudit-syn": [sys.executable, "-m", "vncaudit", "scan", target,
                                         "-p", "5900", "--timeout", "0.3", "--retries", "0",
                                         "--discovery", "syn", "--db", db],
                        "venv python (one connect)": [f"{installed}/python", "-c", PY_ONE_SYN,
                                                      target],
                        "venv vncaudit-connect": [f"{installed}/vncaudit", "scan", target, "-p",
                                                  "5900", "--timeout", "0.3", "--db", db],
                        "venv vncaudit-syn": [f"{installed}/vncaudit", "scan", target, "-p",
                                              "5900", "--timeout", "0.3", "--retries", "0",
                                              "--discovery", "syn", "--db", db],
                        "zmap": ["zmap", "-p", "5900", f"{target}/32", "-i", bed.veth_s, "-S",
                                 netns.SCN_ADDR, "-G", bed.gateway_mac(), "-c", "0", "-b",
                                 str(blocklist), "-q", "-o", "/dev/null"],
                        "nmap": ["nmap", "-sT", "-Pn", "-n", "-p5900", "--max-retries", "0",
                                 "--host-timeout", "2s", target],
                    }[tool]
                    load = loadavg()
                    started = time.time()
                    subprocess.run(in_ns(bed, *cmd), capture_output=True, timeout=120,
                                   env=venv_env() if tool.startswith("venv ") else env,
                                   check=False)
                    runs.append({"tool": tool, "round": round_, "target": target,
                                 "started": started, "load": load})
        finally:
            seen = sniffer.stop()
    first: dict[str, float] = {}
    for packet in seen:
        if packet.proto == 6 and packet.dport == 5900:
            first[packet.dst] = min(first.get(packet.dst, packet.at), packet.at)
    for run in runs:
        arrived = first.get(run["target"])
        run["first_packet_ms"] = (arrived - run["started"]) * 1000 if arrived else None
        print(f"  {run['tool']}: {run['first_packet_ms']:.1f} ms (load {run['load']})"
              if arrived else f"  {run['tool']}: no packet seen", file=sys.stderr)
    medians = {tool: statistics.median(r["first_packet_ms"] for r in runs
                                       if r["tool"] == tool and r["first_packet_ms"])
               for tool in tools}
    return {"mode": "startup", "runs": runs, "medians_ms": medians, "cpus": os.cpu_count()}


def print_startup_table(result: dict[str, Any]) -> None:
    print(f"{'tool':<26} {'first packet ms (median)':>24}   runs")
    for tool, median in result["medians_ms"].items():
        runs = [f"{r['first_packet_ms']:.0f}" for r in result["runs"]
                if r["tool"] == tool and r["first_packet_ms"]]
        print(f"{tool:<26} {median:24.1f}   {' / '.join(runs)}")


def throughput_bench(opts: argparse.Namespace) -> dict[str, Any]:
    n = opts.throughput
    hosts = netns.live_hosts("198.18.0.0/16", n, seed=2000)
    ports = list(range(PORT, PORT + opts.ports_per_host))
    expected = n * len(ports)
    rows: list[Row] = []
    load_before = loadavg()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the fakes inherit it
    if n * opts.ports_per_host > hard - 1000:
        raise SystemExit(f"scan_bench: {n} x {opts.ports_per_host} listeners need more than "
                         f"the {hard} file descriptors allowed here; lower --ports-per-host")
    with netns.netns_bed() as bed, netns.fake_servers(ports, hosts, netns=bed.tgt), \
            tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        listing = tmp / "hosts.txt"
        listing.write_text("\n".join(hosts) + "\n")
        for mode in opts.modes.split(",") if opts.engine_rows else []:
            rows.append(handshake_row(bed, listing, ports, mode, expected, opts, tmp))
            print(f"  {rows[-1].tool}: {rows[-1].wall_s:.2f} s, {rows[-1].found}/{expected}",
                  file=sys.stderr)
        for mode in opts.modes.split(",") * opts.repeat:
            args = ["-iL", str(listing), "-p", f"{ports[0]}-{ports[-1]}", "--timeout",
                    str(opts.timeout), "--discovery", mode, "--concurrency",
                    str(opts.concurrency)]
            if mode == "syn":
                args += ["--rate", str(opts.rate)]
            row = run_vncaudit(bed, f"vncaudit-{mode}", args, hosts, expected, tmp, 600)
            # What the run spends besides scanning (start-up, reading the results back, the
            # JSON report of every service) is what `vncaudit results ID -o json` spends.
            after, report_rss = report_cost(bed, tmp, f"vncaudit-{mode}")
            scan_phase = max(row.wall_s - after, 1e-3)
            row.note += (f"; the report alone: {after:.2f} s, {report_rss:.0f} MB; "
                         f"load {loadavg()}")
            row.extra = {"fingerprints_per_s": row.found / row.wall_s,
                         "scan_phase_s": scan_phase,
                         "scan_phase_fingerprints_per_s": row.found / scan_phase}
            rows.append(row)
            print(f"  {row.tool}: {row.wall_s:.2f} s, {row.found}/{expected}", file=sys.stderr)
    return {"servers": n, "ports_per_host": len(ports), "expected": expected,
            "rows": [asdict(r) for r in rows],
            "load_before": load_before, "load_after": loadavg(), "cpus": os.cpu_count()}


def report_cost(bed: netns.Bed, tmp: Path, name: str) -> tuple[float, float]:
    """Wall time and peak RSS of `vncaudit results ID -o json` on the store a run of `name`
    just wrote."""
    run = len(list(tmp.glob("*.db"))) - 1
    db, report = tmp / f"{name}-{run}.db", tmp / f"{name}-{run}.json"
    scan_id = json.loads(report.read_text())["scan"]["id"]
    cmd = in_ns(bed, sys.executable, "-m", "vncaudit", "results", scan_id, "--db", str(db),
                "-o", "json", "--output-file", str(tmp / "again.json"))
    wall, _, rss, code, err = measured(cmd, 300)
    if code != 0:
        raise RuntimeError(f"vncaudit results failed ({code}): {err[-2000:]}")
    return wall, rss


def handshake_row(bed: netns.Bed, listing: Path, ports: list[int], mode: str, expected: int,
                  opts: argparse.Namespace, tmp: Path) -> Row:
    """The handshake rate alone: the engine (discovery + RFB probe) in one process, timed from
    the first target to the last result; no grading, no store, no report."""
    out = tmp / f"handshakes-{mode}.json"
    cmd = in_ns(bed, sys.executable, str(Path(__file__).resolve()), "--handshake-driver",
                str(listing), "--driver-ports", f"{ports[0]}-{ports[-1]}", "--driver-mode", mode,
                "--timeout", str(opts.timeout), "--concurrency", str(opts.concurrency),
                "--rate", str(opts.rate), "--json", str(out))
    wall, cpu, rss, code, err = measured(cmd, 300)
    if code != 0:
        raise RuntimeError(f"handshake driver failed ({code}): {err[-2000:]}")
    doc = json.loads(out.read_text())
    return Row(f"engine-{mode}", wall, cpu, rss, doc["fingerprints"], expected,
               "engine + probe only (no assess, no store)",
               {"fingerprints_per_s": doc["fingerprints"] / doc["seconds"],
                "scan_phase_s": doc["seconds"],
                "scan_phase_fingerprints_per_s": doc["fingerprints"] / doc["seconds"]})


def handshake_driver(opts: argparse.Namespace) -> None:
    import asyncio

    from vncaudit.engine import ScanOptions, iter_results
    from vncaudit.engine import run as run_loop
    from vncaudit.models import State, Target
    from vncaudit.probe import ProbeOptions

    hosts = Path(opts.handshake_driver).read_text().split()
    low, high = (int(x) for x in opts.driver_ports.split("-"))
    targets = [Target(h, p) for p in range(low, high + 1) for h in hosts]
    options = ScanOptions(concurrency=opts.concurrency, discovery=opts.driver_mode,
                          rate=float(opts.rate) if opts.driver_mode == "syn" else None,
                          probe=ProbeOptions(timeout=opts.timeout))

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = 0
        async for result in iter_results(targets, options):
            if result.state is State.VNC and result.rfb and result.rfb.security_types:
                count += 1
        return count, loop.time() - started

    count, seconds = run_loop(main())
    opts.json.write_text(json.dumps({"fingerprints": count, "seconds": seconds}))


def print_table(result: dict[str, Any]) -> None:
    print(f"{'tool':<20} {'wall s':>8} {'CPU s':>7} {'peak RSS MB':>12} {'found/expected':>15}"
          "  note")
    for r in result["rows"]:
        note = r["note"]
        if r["extra"].get("fingerprints_per_s"):
            note = (f"{r['extra']['fingerprints_per_s']:.0f} fingerprints/s whole run, "
                    f"{r['extra']['scan_phase_fingerprints_per_s']:.0f}/s scan phase; {note}")
        print(f"{r['tool']:<20} {r['wall_s']:8.2f} {r['cpu_s']:7.2f} {r['peak_rss_mb']:12.1f} "
              f"{r['found']:>7}/{r['expected']:<7}  {note}")
    for name, value in result.get("ratios", {}).items():
        print(f"ratio {name}: {value:.2f}")
    floor = result.get("floor")
    if floor:
        print(f"physical floor (syn): send {floor['send_s']:.2f} s + window "
              f"{floor['timeout_window_s']:.2f} s + handshakes {floor['handshakes_s']:.2f} s "
              f"= {floor['total_s']:.2f} s; measured {floor['syn_wall_s']:.2f} s "
              f"({floor['syn_wall_s'] - floor['total_s']:+.2f} s)")
    print(f"load average before {result['load_before']}, after {result['load_after']} "
          f"({result['cpus']} CPUs)")


# ---------------------------------------------------------------------------------------------
# The five line-rate goals of bench/README.md in one run


def all_bench(opts: argparse.Namespace) -> dict[str, Any]:
    """Every goal, one after the other in one run, each tool `--repeat` times (interleaved)."""
    def with_(**changes: Any) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(opts), **changes})

    out: dict[str, Any] = {"mode": "all", "cpus": os.cpu_count(), "repeat": opts.repeat,
                           "load_before": loadavg()}
    steps: list[tuple[str, Any]] = [
        ("send_rate", lambda: rate_bench(with_(tools="zmap,vncaudit-syn"))),
        ("startup", lambda: startup_bench(with_(tools=None))),
        ("range16", lambda: range_bench(with_(size=16, live=300, timeout=2.0,
                                              tools="vncaudit-syn,venv vncaudit-syn,zmap"))),
        ("range18", lambda: range_bench(with_(size=18, live=157, timeout=1.25,
                                              tools="vncaudit-syn,nmap"))),
        # The CLI's default deadline (5 s): on a loaded machine the fake servers answer 10,000
        # handshakes late, and a 1 s deadline measures lost handshakes, not throughput.
        ("throughput", lambda: throughput_bench(with_(throughput=2000, modes="syn,connect",
                                                      engine_rows=False, timeout=5.0))),
    ]
    only = set(opts.goals.split(",")) if opts.goals else None
    for name, step in steps:
        if only and name not in only:
            continue
        print(f"== {name} (load {loadavg()})", file=sys.stderr, flush=True)
        out[name] = step()
        if opts.json:  # what is done so far survives a later failure
            opts.json.write_text(json.dumps(out, indent=2))
    out["load_after"] = loadavg()
    return out


def _runs(values: list[float], fmt: str) -> str:
    each = " / ".join(format(v, fmt) for v in values)
    return f"{format(statistics.median(values), fmt)} ({each})"


def print_all_table(result: dict[str, Any]) -> None:
    """The goals table of bench/README.md, in Markdown: medians, every run in brackets."""
    print("| goal | vncaudit | peer | result | load |")
    print("| --- | --- | --- | --- | --- |")
    rate = result.get("send_rate")
    if rate:
        rows = rate["rows"]
        ours = [r["rate_10_90"] for r in rows if r["tool"] == "vncaudit-syn"]
        zmap = [r["rate_10_90"] for r in rows if r["tool"] == "zmap"]
        loads = sorted({r["load"].split()[0] for r in rows})
        cpu = statistics.median(r["cpu_s"] for r in rows if r["tool"] == "vncaudit-syn")
        cpu_zmap = statistics.median(r["cpu_s"] for r in rows if r["tool"] == "zmap")
        print(f"| 1. SYNs/s received (10-90 %), {rate['targets']:,} addresses, uncapped | "
              f"{_runs(ours, ',.0f')}; whole run CPU {cpu:.2f} s | zmap {_runs(zmap, ',.0f')}; "
              f"CPU {cpu_zmap:.2f} s | "
              f"{statistics.median(ours) / statistics.median(zmap):.2f}x zmap (goal ≥ 1) | "
              f"{loads[0]}-{loads[-1]} |")
    for key, peer, goal in (("range16", "zmap", "≤ 1.0x zmap"),
                            ("range18", "nmap -T4 vnc-info", "≥ 100x faster")):
        part = result.get(key)
        if not part:
            continue
        rows = part["rows"]
        ours = [r["wall_s"] for r in rows if r["tool"] == "vncaudit-syn"]
        theirs = [r["wall_s"] for r in rows if r["tool"] == peer]
        cpu = statistics.median(r["cpu_s"] for r in rows if r["tool"] == "vncaudit-syn")
        cpu_peer = statistics.median(r["cpu_s"] for r in rows if r["tool"] == peer)
        found = f"{min(r['found'] for r in rows if r['tool'] == 'vncaudit-syn')}/{part['live']}"
        found_peer = f"{min(r['found'] for r in rows if r['tool'] == peer)}/{part['live']}"
        ratio = statistics.median(theirs) / statistics.median(ours)
        verdict = (f"vncaudit/zmap = {1 / ratio:.2f} ({goal})" if key == "range16"
                   else f"{ratio:.0f}x faster ({goal})")
        print(f"| {'2' if key == 'range16' else '3'}. {part['range']}, {part['live']} live, "
              f"--timeout {part['timeout']:g}: wall s | {_runs(ours, '.2f')}, {found} stored, "
              f"CPU {cpu:.2f} s | {peer} {_runs(theirs, '.2f')}, {found_peer}, CPU "
              f"{cpu_peer:.2f} s | {verdict} | "
              f"{part['load_before'].split()[0]}-{part['load_after'].split()[0]} |")
        venv_rows = [r for r in rows if r["tool"] == "venv vncaudit-syn"]
        if venv_rows:
            walls = [r["wall_s"] for r in venv_rows]
            print(f"| {'2' if key == 'range16' else '3'}. the same, from a venv install "
                  f"(`installed_venv`) | {_runs(walls, '.2f')}, "
                  f"{min(r['found'] for r in venv_rows)}/{part['live']} stored, CPU "
                  f"{statistics.median(r['cpu_s'] for r in venv_rows):.2f} s | {peer} "
                  f"{_runs(theirs, '.2f')} | vncaudit/zmap = "
                  f"{statistics.median(walls) / statistics.median(theirs):.2f} ({goal}) | - |")
    start = result.get("startup")
    if start:
        runs = start["runs"]

        def ms(tool: str) -> list[float]:
            return [r["first_packet_ms"] for r in runs
                    if r["tool"] == tool and r["first_packet_ms"]]

        loads = sorted({r["load"].split()[0] for r in runs})
        print(f"| 4. start to first packet, ms (python -S alone: "
              f"{_runs(ms('python -S (one connect)'), '.0f')}) | "
              f"connect {_runs(ms('vncaudit-connect'), '.0f')}; "
              f"syn {_runs(ms('vncaudit-syn'), '.0f')} | zmap {_runs(ms('zmap'), '.0f')}; "
              f"nmap {_runs(ms('nmap'), '.0f')}; "
              f"python -c {_runs(ms('python (one connect)'), '.0f')}"
              f" | goal ≤ 100 | {loads[0]}-{loads[-1]} |")
    tput = result.get("throughput")
    if tput:
        for mode in ("syn", "connect"):
            rows = [r for r in tput["rows"] if r["tool"] == f"vncaudit-{mode}"]
            if not rows:
                continue
            whole = [r["extra"]["fingerprints_per_s"] for r in rows]
            phase = [r["extra"]["scan_phase_fingerprints_per_s"] for r in rows]
            rss = [r["peak_rss_mb"] for r in rows]
            per_cpu = [r["found"] / r["cpu_s"] for r in rows]
            found = min(r["found"] for r in rows)
            print(f"| 5. fingerprints/s, whole CLI ({mode}), {tput['expected']:,} live | "
                  f"{_runs(whole, ',.0f')}; scan phase {_runs(phase, ',.0f')}; per CPU s "
                  f"{_runs(per_cpu, ',.0f')}; {found:,}+ found; peak RSS {_runs(rss, '.0f')} MB"
                  f" | - | goal ≥ 5,000 | "
                  f"{tput['load_before'].split()[0]}-{tput['load_after'].split()[0]} |")
    sizes = []
    for key in ("range18", "range16"):
        part = result.get(key)
        if part:
            rss = [r["peak_rss_mb"] for r in part["rows"] if r["tool"] == "vncaudit-syn"]
            sizes.append(f"{part['targets']:,} targets {statistics.median(rss):.0f} MB")
    if rate:
        rss = [r["peak_rss_mb"] for r in rate["rows"] if r["tool"] == "vncaudit-syn"]
        sizes.append(f"{rate['targets']:,} targets {statistics.median(rss):.0f} MB")
    if sizes:
        print(f"| 5. peak RSS of vncaudit-syn by range size | {'; '.join(sizes)} | - | - | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="prefix length of 198.18.0.0/N")
    parser.add_argument("--live", type=int, default=300)
    parser.add_argument("--tools", help="comma list: vncaudit-connect,vncaudit-syn,"
                        "'venv vncaudit-syn' (the README's install),zmap,nmap")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=200_000, help="vncaudit syn packets/s")
    parser.add_argument("--retries", type=int, default=0,
                        help="vncaudit syn retries (0: one probe per target, as zmap -P 1)")
    parser.add_argument("--concurrency", type=int, default=16384)
    parser.add_argument("--zmap-rate", type=int, default=200_000)
    parser.add_argument("--zmap-cooldown", type=int, default=2)
    parser.add_argument("--handshake-rate", type=float, default=5000.0,
                        help="handshakes/s assumed for the floor (measure with --throughput)")
    parser.add_argument("--throughput", type=int, metavar="N",
                        help="instead: N live servers, every address live; fingerprints/s")
    parser.add_argument("--ports-per-host", type=int, default=5)
    parser.add_argument("--modes", default="connect,syn", help="--throughput modes")
    parser.add_argument("--send-rate", action="store_true",
                        help="instead: each sender uncapped on 196,608 addresses, the rate "
                        "the target namespace received (tools: zmap, zmap-T2, vncaudit-syn)")
    parser.add_argument("--startup", action="store_true",
                        help="instead: from the start of each tool to its first packet")
    parser.add_argument("--all", action="store_true",
                        help="instead: every goal in one run (send rate, start-up, /16 vs zmap, "
                        "/18 vs nmap, throughput), each tool --repeat times; a Markdown table")
    parser.add_argument("--goals", help="with --all: only these (send_rate,startup,range16,"
                        "range18,throughput)")
    parser.add_argument("--repeat", type=int, default=1, help="run the tool list N times")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--handshake-driver", help=argparse.SUPPRESS)  # hosts file; internal
    parser.add_argument("--driver-ports", help=argparse.SUPPRESS)
    parser.add_argument("--driver-mode", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.handshake_driver:
        handshake_driver(opts)
        return
    problem = netns.netns_problem()
    if problem:
        raise SystemExit(f"scan_bench: {problem}")
    global ENV
    ENV = compiled_env()
    opts.engine_rows = True
    if opts.all:
        result = all_bench(opts)
        print_all_table(result)
    elif opts.send_rate:
        result = rate_bench(opts)
        print_rate_table(result)
    elif opts.startup:
        result = startup_bench(opts)
        print_startup_table(result)
    else:
        result = throughput_bench(opts) if opts.throughput else range_bench(opts)
        print_table(result)
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
